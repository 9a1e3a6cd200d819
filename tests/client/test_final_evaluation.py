"""client/final_evaluation.py through the ClientApp: the final-evaluation reply holds only what
the site's policy lets leave: a (DP) evaluation answer, noisy group counts of an allowed column
with small cells suppressed, and audit figures only when the policy releases them."""

from __future__ import annotations

import dataclasses
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client import app as client_app
from client.audit import ATTACKS, FIGURES
from client.final_evaluation import PartRefused, check_group_column
from client.site_context import site_from_context
from common.config import RunSettings
from common.data.registry import load_dataset
from common.group_counts import from_metrics
from common.models.weights import trainable_state
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import to_array_record
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _context(tmp_path: Path, policy: str = "", **overrides: object) -> Context:
    run_config = {**DEFAULTS, "results-dir": str(tmp_path), **overrides}
    if policy:
        sites = tmp_path / "sites.toml"
        sites.write_text(f'[site.0]\nledger = "{tmp_path / "site0.sqlite"}"\n{policy}\n')
        run_config["sites-file"] = str(sites)
    return Context(
        run_id=7,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 4},
        state=RecordDict(),
        run_config=run_config,
    )


def _final_message(context: Context, audit: bool) -> Message:
    settings = RunSettings.from_run_config(context.run_config)
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    config = {"final-evaluation": True, "audit": audit, "server-round": 3}
    content = RecordDict(
        {"arrays": to_array_record(trainable_state(model)), "config": ConfigRecord(config)}
    )
    metadata = Metadata(
        run_id=7,
        message_id="m1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="3",
        created_at=time.time(),
        ttl=600.0,
        message_type="evaluate",
    )
    return Message(content=content, metadata=metadata)


# Answers with little noise (z = 0.5, the least a policy may set): the counts are within
# 6 sigma of the exact ones, so the test can check what is counted.
OPEN_POLICY = (
    'evaluation-noise-multiplier = 0.5\ngroup-columns = "sex"\nallow-audit = true\n'
    "release-audit-figures = true\nepsilon-budget = 1000.0\nmin-cell-size = 1"
)


def test_final_evaluation_reply_holds_group_counts_and_audit_figures(tmp_path: Path) -> None:
    context = _context(tmp_path, OPEN_POLICY, **{"sensitive-column": "sex"})
    reply = client_app.evaluate_global(_final_message(context, audit=True), context)
    assert dict(reply.content["decision"])["notes"] == []
    metrics = dict(reply.content["metrics"])
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())

    site = site_from_context(context)
    validation = site.data.validation
    counts = from_metrics(metrics)
    assert set(counts) == set(np.unique(validation.columns["sex"]))
    for group, cells in counts.items():  # every record counted once, in its group and class
        in_group = validation.columns["sex"] == group
        assert abs(sum(cells.values()) - in_group.sum()) <= 4 * 6 * 0.5
        positives = (validation.labels[in_group] == 1).sum()
        assert abs(cells["tp"] + cells["fn"] - positives) <= 2 * 6 * 0.5
    assert abs(metrics["eval-examples"] - len(validation)) <= 6 * 0.5 * 3**0.5
    assert metrics["groups-noise-std"] == pytest.approx(0.5)

    assert metrics["audit-members"] == len(site.data.train)
    assert metrics["audit-non-members"] == len(validation)
    assert metrics["audit-delta"] == pytest.approx(0.1 / len(site.data.train))
    for attack in ATTACKS:
        for figure in FIGURES:
            assert f"audit-{attack}-{figure}" in metrics
    # the model is the untrained initial one: the calibrated attack has nothing to see
    assert metrics["audit-calibrated-auc"] == pytest.approx(0.5)
    assert metrics["audit-calibrated-epsilon-lower-bound"] == 0.0
    with PrivacyLedger(site.ledger_path) as ledger:  # both Gaussian answers are in the ledger
        purposes = [r.purpose for r in ledger.rows(site.data.validation_key)]
        assert purposes == ["evaluation", "group-counts"]
        assert ledger.policy_release_counts(site.data.name) == {"audit-figures": 1}


def test_without_audit_or_column_only_the_dp_answer_leaves(tmp_path: Path) -> None:
    context = _context(tmp_path)
    reply = client_app.evaluate_global(_final_message(context, audit=False), context)
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == {
        "partition-id",
        "status",
        "num-examples",
        "eval-examples",
        "eval-loss",
        "eval-accuracy",
        "eval-dp",
        "eval-noise-std",
        "eval-epsilon-spent",
        "eval-epsilon-budget",
        "eval-delta",
    }
    assert metrics["eval-dp"] == 1


def test_a_column_the_site_lacks_is_refused_with_the_reason(tmp_path: Path) -> None:
    context = _context(tmp_path, **{"sensitive-column": "SEX"})
    reply = client_app.evaluate_global(_final_message(context, audit=False), context)
    (note,) = dict(reply.content["decision"])["notes"]
    assert "group counts refused" in note and "'SEX' is not a column" in note
    assert not any(k.startswith("group/") for k in dict(reply.content["metrics"]))


def test_a_column_outside_the_policy_and_an_audit_it_does_not_run_are_refused(tmp_path):
    context = _context(tmp_path, 'group-columns = "dataset"', **{"sensitive-column": "sex"})
    reply = client_app.evaluate_global(_final_message(context, audit=True), context)
    notes = dict(reply.content["decision"])["notes"]
    assert any("'sex' is not in this site's group-columns ['dataset']" in n for n in notes)
    assert any("does not run membership audits" in n for n in notes)
    metrics = dict(reply.content["metrics"])
    assert not any(k.startswith(("group/", "audit-")) for k in metrics)


def test_audit_figures_stay_at_the_site_unless_released(tmp_path):
    context = _context(tmp_path, "allow-audit = true")
    reply = client_app.evaluate_global(_final_message(context, audit=True), context)
    (note,) = dict(reply.content["decision"])["notes"]
    assert "release-audit-figures = false" in note
    assert not any(k.startswith("audit-") for k in dict(reply.content["metrics"]))


def test_small_cells_are_suppressed(tmp_path):
    policy = OPEN_POLICY.replace("min-cell-size = 1", "min-cell-size = 100000")
    context = _context(tmp_path, policy, **{"sensitive-column": "sex"})
    metrics = dict(
        client_app.evaluate_global(_final_message(context, False), context).content["metrics"]
    )
    assert not any(k.startswith("group/") for k in metrics)
    assert metrics["groups-suppressed"] == 2


def test_an_identifier_like_column_is_never_a_group_column(tmp_path):
    context = _context(tmp_path, 'group-columns = "*"')
    site = site_from_context(context)
    validation = site.data.validation
    with_id = dataclasses.replace(
        validation,
        columns={**validation.columns, "patient-id": np.arange(len(validation)).astype(str)},
    )
    site = dataclasses.replace(site, data=dataclasses.replace(site.data, validation=with_id))
    with pytest.raises(PartRefused, match="identifier-like"):
        check_group_column(site, "patient-id")
    assert check_group_column(site, "sex") == ["Female", "Male"]
