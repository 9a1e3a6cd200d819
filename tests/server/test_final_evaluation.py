"""server/final_evaluation.py: what the server keeps of the sites' final-evaluation replies."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, Metadata, MetricRecord, RecordDict

from common.config import RunSettings
from common.group_counts import to_metrics
from server.build import build_strategy
from server.final_evaluation import check_final_evaluation, collect


def _reply(metrics: dict, node: int) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"r{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"m{node}",
        group_id="2",
        created_at=time.time(),
        ttl=600.0,
        message_type="evaluate",
    )
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), metadata=metadata)


def _site(pid: int, counts: dict, auc: float) -> dict:
    audit = {f"audit-{a}-{f}": v for a in ("loss", "calibrated") for f, v in (("auc", auc),)}
    return {
        "partition-id": pid,
        "eval-examples": 10,
        "eval-loss": 0.5,
        "eval-accuracy": 0.8,
        "audit-members": 40,
        "audit-non-members": 10,
        "audit-delta": 1e-3,
        "audit-confidence": 0.95,
        **audit,
        **to_metrics(counts),
    }


def test_counts_are_summed_audits_kept_per_site_and_bad_counts_refused():
    strategy, _ = build_strategy(RunSettings(), site_names={0: "Cleveland", 1: "Hungary", 2: "Bad"})
    a = {"F": {"tp": 1, "fp": 2, "tn": 3, "fn": 4}}
    b = {"F": {"tp": 1, "fp": 0, "tn": 0, "fn": 0}, "M": {"tp": 5, "fp": 1, "tn": 3, "fn": 1}}
    bad = _site(2, a, 0.5)
    del bad["group/F/fn"]
    replies = [_reply(_site(0, a, 0.6), 1), _reply(_site(1, b, 0.7), 2), _reply(bad, 3)]
    out = collect(replies, strategy, audit=True, column="sex", positive="disease")

    assert out["final-evaluation"]["failures"] == [
        "Bad: group counts refused: group 'F' lacks counts ['fn']"
    ]
    assert set(out["final-evaluation"]["sites"]) == {"Cleveland", "Hungary", "Bad"}
    assert out["fairness"]["sites-counted"] == 2
    female = out["fairness"]["groups"]["F"]
    assert (female["tp"], female["fp"], female["tn"], female["fn"]) == (2, 2, 3, 4)
    assert female["accuracy"] == pytest.approx(5 / 11)
    assert out["audit"]["Hungary"]["calibrated"] == {"auc": 0.7}
    assert out["audit"]["Cleveland"]["members"] == 40


def test_without_audit_and_column_only_evaluation_is_kept():
    strategy, _ = build_strategy(RunSettings(), site_names={0: "Cleveland"})
    counts = {"F": {"tp": 1, "fp": 2, "tn": 3, "fn": 4}}
    out = collect([_reply(_site(0, counts, 0.6), 1)], strategy, audit=False, column="", positive="")
    assert out["audit"] is None and out["fairness"] is None
    assert out["final-evaluation"]["sites"]["Cleveland"] == {
        "eval-examples": 10,
        "eval-loss": 0.5,
        "eval-accuracy": 0.8,
    }


def test_a_sensitive_column_the_dataset_lacks_is_refused_before_training():
    from common.config import ConfigError
    from common.data.registry import load_dataset

    _, test = load_dataset("heart-disease", 0)
    check_final_evaluation(RunSettings(sensitive_column="sex"), test)
    check_final_evaluation(RunSettings(audit=True), test)
    with pytest.raises(ConfigError, match="dataset heart-disease: .*no-such-column"):
        check_final_evaluation(RunSettings(sensitive_column="no-such-column"), test)
