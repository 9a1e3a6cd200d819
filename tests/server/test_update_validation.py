"""server/update_validation.py: a reply is aggregated only if it is exactly what was asked for.

The last test injects 50 malformed replies of 10 kinds into a round of the real strategy: none
reaches the aggregate, each is rejected with its reason, and the round goes on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.protocol.records import ARRAYS, METRICS
from server.update_validation import check_train_reply
from tests.server.test_strategy import FakeGrid, strategy, train_metrics, trained, w

SENT = w([0.0, 0.0], [[0.0, 0.0]])


def reply(arrays=None, metrics=None, **records) -> RecordDict:
    arrays = w([1.0, 2.0], [[1.0, 0.0]]) if arrays is None else arrays
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS: MetricRecord(train_metrics(10, 0) if metrics is None else metrics),
        }
    )
    for name, record in records.items():
        content[name] = record
    return content


def _bad(kind: str, i: int) -> RecordDict:
    good = w([1.0, 2.0], [[1.0, 0.0]])
    metrics = train_metrics(10, 0)
    if kind == "wrong shape":
        return reply({**good, "layer.bias": np.zeros(3 + i, np.float32)})
    if kind == "missing key":
        return reply({"layer.weight": good["layer.weight"]})
    if kind == "extra key":
        return reply({**good, f"backdoor.{i}": np.zeros(2, np.float32)})
    if kind == "NaN":
        return reply({**good, "layer.bias": np.array([np.nan, i], np.float32)})
    if kind == "Inf":
        return reply({**good, "layer.weight": np.array([[np.inf, -np.inf]], np.float32)})
    if kind == "huge norm":
        return reply({**good, "layer.bias": np.full(2, 1e6 * (i + 1), np.float32)})
    if kind == "wrong dtype":
        return reply({**good, "layer.bias": good["layer.bias"].astype(np.float64)})
    if kind == "negative example count":
        return reply(metrics=metrics | {"num-examples": -(i + 1)})
    if kind == "missing metric":
        return reply(metrics={k: v for k, v in metrics.items() if k != "epsilon-spent"})
    if kind == "NaN metric":
        return reply(metrics=metrics | {"steps": math.nan})
    raise AssertionError(kind)


KINDS = {
    "wrong shape": "has shape",
    "missing key": "missing ['layer.bias']",
    "extra key": "unexpected ['backdoor.",
    "NaN": "NaN or infinite",
    "Inf": "NaN or infinite",
    "huge norm": "exceeds the bound 100",
    "wrong dtype": "dtype float64, expected float32",
    "negative example count": "num-examples must be a whole number",
    "missing metric": "metrics lack ['epsilon-spent']",
    "NaN metric": "metric steps is not finite",
}


def test_a_well_formed_reply_passes_and_infinite_epsilon_is_allowed():
    assert check_train_reply(reply(), SENT, max_update_norm=100.0) is None
    non_private = train_metrics(10, 0) | {"epsilon-spent": math.inf}
    assert check_train_reply(reply(metrics=non_private), SENT) is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_of_malformed_reply_is_named(kind):
    reason = check_train_reply(_bad(kind, 0), SENT, max_update_norm=100.0)
    assert reason is not None and KINDS[kind] in reason, reason


def test_records_beyond_arrays_metrics_and_decision_are_rejected():
    extra = reply(smuggled=ConfigRecord({"rows": "patient data"}))
    assert "unexpected records ['smuggled']" in check_train_reply(extra, SENT)
    assert check_train_reply(RecordDict({METRICS: MetricRecord({})}), SENT) == (
        "no arrays or no metrics record"
    )


def test_the_norm_bound_is_off_by_default():
    huge = w([1e6, 1e6], [[0.0, 0.0]])
    assert check_train_reply(reply(huge), SENT) is None
    assert "exceeds" in check_train_reply(reply(huge), SENT, max_update_norm=1e5)


def test_fifty_malformed_replies_never_reach_the_aggregate(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)
    s = strategy(min_train_nodes=2)
    s.max_update_norm = 100.0
    s.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in SENT.items()}), ConfigRecord(), FakeGrid([1, 2])
    )
    honest = [
        trained(1, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        trained(2, 30, 2, w([5.0, 6.0], [[3.0, 4.0]])),
    ]
    bad = []
    for i, kind in enumerate(k for k in sorted(KINDS) for _ in range(5)):
        msg = trained(100 + i, 10, 10 + i, w([0.0, 0.0], [[0.0, 0.0]]))
        content = _bad(kind, i)
        content[METRICS]["partition-id"] = 10 + i
        msg.content = content
        bad.append(msg)
    arrays, _ = s.aggregate_train(1, [honest[0], *bad, honest[1]])
    # exactly the weighted mean of the two honest replies (10 and 30 examples)
    np.testing.assert_allclose(arrays["layer.bias"].numpy(), [4.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(arrays["layer.weight"].numpy(), [[2.5, 3.0]], rtol=1e-6)
    rec = s.rounds[1]
    assert rec.trained_sites == 2 and len(rec.rejected) == 50
    for kind, says in KINDS.items():
        assert sum(says in r for r in rec.rejected) >= 5, kind
    statuses = [m["status"] for m in rec.sites.values()]
    assert statuses.count("rejected") == 50 and statuses.count("trained") == 2
