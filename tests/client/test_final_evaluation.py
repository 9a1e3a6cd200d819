"""client/final_evaluation.py through the ClientApp: the final-evaluation reply of a site holds
only scalars: validation loss/accuracy, per-group counts, the audit's aggregate figures."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client import app as client_app
from client.audit import ATTACKS, FIGURES
from client.site_context import site_from_context
from common.config import RunSettings
from common.data.registry import load_dataset
from common.group_counts import from_metrics
from common.models.weights import trainable_state
from common.protocol import to_array_record
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _context(tmp_path: Path, **overrides: object) -> Context:
    run_config = {**DEFAULTS, "results-dir": str(tmp_path), **overrides}
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


def test_final_evaluation_reply_holds_group_counts_and_audit_figures(tmp_path: Path) -> None:
    context = _context(tmp_path, **{"sensitive-column": "sex"})
    reply = client_app.evaluate_global(_final_message(context, audit=True), context)
    assert set(reply.content.keys()) == {"metrics"}
    metrics = dict(reply.content["metrics"])
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())

    site = site_from_context(context)
    validation = site.data.validation
    counts = from_metrics(metrics)
    assert set(counts) == set(np.unique(validation.columns["sex"]))
    for group, cells in counts.items():  # every record counted once, in its group and class
        in_group = validation.columns["sex"] == group
        assert sum(cells.values()) == in_group.sum()
        assert cells["tp"] + cells["fn"] == (validation.labels[in_group] == 1).sum()
    assert metrics["eval-examples"] == len(validation)

    assert metrics["audit-members"] == len(site.data.train)
    assert metrics["audit-non-members"] == len(validation)
    assert metrics["audit-delta"] == pytest.approx(0.1 / len(site.data.train))
    for attack in ATTACKS:
        for figure in FIGURES:
            assert f"audit-{attack}-{figure}" in metrics
    # the model is the untrained initial one: the calibrated attack has nothing to see
    assert metrics["audit-calibrated-auc"] == pytest.approx(0.5)
    assert metrics["audit-calibrated-epsilon-lower-bound"] == 0.0


def test_without_audit_or_column_only_loss_and_accuracy_leave(tmp_path: Path) -> None:
    context = _context(tmp_path)
    reply = client_app.evaluate_global(_final_message(context, audit=False), context)
    assert set(dict(reply.content["metrics"])) == {
        "partition-id",
        "num-examples",
        "eval-examples",
        "eval-loss",
        "eval-accuracy",
    }


def test_a_column_the_site_lacks_is_a_clear_error(tmp_path: Path) -> None:
    context = _context(tmp_path, **{"sensitive-column": "SEX"})
    with pytest.raises(ValueError, match="'SEX' is not a column"):
        client_app.evaluate_global(_final_message(context, audit=False), context)
