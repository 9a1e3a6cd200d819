"""server/strategy.py: the privacy-aware strategy records every site's reply and leaves refusals
out; its inner Flower strategy (FedAvg here) aggregates the rest.

Replies are real Flower Messages, built as a ServerApp would receive them.
"""

import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from common.config import RunSettings
from common.protocol.records import (
    ARRAYS,
    BUDGET_EXHAUSTED,
    DECISION,
    METRICS,
    TRAIN_METRIC_KEYS,
    TRAINED,
)
from server.build import build_strategy
from server.strategy import PrivacyAware, RoundFailed, RunStopped

_ids = itertools.count()


def metadata(node_id: int, message_type: str = "train") -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"m{next(_ids)}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )


def train_metrics(n: int, pid: int, status: int = TRAINED, **over: float) -> dict:
    metrics = dict.fromkeys(TRAIN_METRIC_KEYS, 0.0)
    metrics.update(
        {
            "num-examples": n,
            "status": status,
            "partition-id": pid,
            "train-loss": 0.0,
            "dp": 1,
            "epsilon-spent": 1.0,
            "epsilon-budget": 8.0,
            "delta": 1e-5,
        }
    )
    metrics.update(over)
    return metrics


def trained(node_id: int, n: int, pid: int, weights: dict[str, np.ndarray], **over) -> Message:
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(v) for k, v in weights.items()}),
            METRICS: MetricRecord(train_metrics(n, pid, **over)),
        }
    )
    return Message(content=content, metadata=metadata(node_id))


def exhausted(node_id: int, pid: int, **over) -> Message:
    metrics = train_metrics(0, pid, status=BUDGET_EXHAUSTED, **over)
    decision = {"status": "budget exhausted", "reason": "budget exhausted: 0.1 left", "clamped": []}
    content = RecordDict({METRICS: MetricRecord(metrics), DECISION: ConfigRecord(decision)})
    return Message(content=content, metadata=metadata(node_id))


def failed(node_id: int, reason: str) -> Message:
    return Message(error=Error(code=0, reason=reason), metadata=metadata(node_id))


def evaluated(node_id: int, n: int, pid: int, loss: float, acc: float) -> Message:
    metrics = {"eval-loss": loss, "eval-accuracy": acc, "num-examples": n, "partition-id": pid}
    return Message(
        content=RecordDict({METRICS: MetricRecord(metrics)}),
        metadata=metadata(node_id, "evaluate"),
    )


def w(a: list[float], b: list[list[float]]) -> dict[str, np.ndarray]:
    return {"layer.weight": np.array(b, dtype=np.float32), "layer.bias": np.array(a, np.float32)}


NAMES = {0: "Cleveland", 1: "Hungary", 2: "Switzerland"}


def privacy_aware(site_names=None, round_offset: int = 0, **settings) -> PrivacyAware:
    """The privacy-aware strategy around FedAvg, as a run with these settings builds it."""
    built, _ = build_strategy(
        replace(RunSettings(), **settings), site_names=site_names, round_offset=round_offset
    )
    return built


def strategy(min_train_nodes: int = 2) -> PrivacyAware:
    return privacy_aware(NAMES, min_train_nodes=min_train_nodes)


def test_trained_replies_are_averaged_weighted_by_num_examples():
    s = strategy()
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]]), **{"train-loss": 0.5}),
        trained(12, 30, 1, w([5.0, 6.0], [[3.0, 4.0]]), **{"train-loss": 0.1}),
    ]
    arrays, metrics = s.aggregate_train(1, replies)
    got = {k: v.numpy() for k, v in arrays.items()}
    # (10 * x_A + 30 * x_B) / 40
    np.testing.assert_allclose(got["layer.bias"], [4.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(got["layer.weight"], [[2.5, 3.0]], rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.2)
    rec = s.rounds[1]
    assert rec.train == {"train-loss": pytest.approx(0.2)}
    assert rec.trained_sites == 2
    assert rec.failures == []
    assert set(rec.sites) == {"Cleveland", "Hungary"}
    assert rec.sites["Hungary"]["status"] == "trained"
    assert rec.sites["Hungary"]["num-examples"] == 30
    assert rec.sites["Cleveland"]["epsilon-spent"] == 1.0


def test_budget_exhausted_site_is_recorded_but_left_out_of_the_average():
    s = strategy()
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        exhausted(12, 1, **{"epsilon-spent": 7.9}),
        trained(13, 30, 2, w([5.0, 6.0], [[3.0, 4.0]])),
    ]
    arrays, _ = s.aggregate_train(4, replies)
    np.testing.assert_allclose(arrays["layer.bias"].numpy(), [4.0, 5.0], rtol=1e-6)
    rec = s.rounds[4]
    assert rec.trained_sites == 2
    assert rec.sites["Hungary"]["status"] == "budget exhausted"
    assert rec.sites["Hungary"]["epsilon-spent"] == 7.9
    assert rec.sites["Switzerland"]["status"] == "trained"
    assert rec.failures == []


def test_each_sites_decision_is_recorded_reason_and_clamps():
    s = strategy(min_train_nodes=1)
    clamps = ["noise-multiplier 0.3 -> 2 (site min-noise-multiplier)"]
    replies = [trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])), exhausted(12, 1)]
    replies[0].content[DECISION] = ConfigRecord(
        {"status": "trained", "reason": "", "clamped": clamps}
    )
    s.aggregate_train(1, replies)
    sites = s.rounds[1].sites
    assert (sites["Cleveland"]["reason"], sites["Cleveland"]["clamped"]) == ("", clamps)
    assert sites["Hungary"]["reason"] == "budget exhausted: 0.1 left"
    assert sites["Hungary"]["clamped"] == []


def test_arrays_of_a_site_that_reports_an_exhausted_budget_are_never_used():
    s = strategy()
    refusal = trained(12, 1000, 1, w([100.0, 100.0], [[100.0, 100.0]]), status=BUDGET_EXHAUSTED)
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        refusal,
        trained(13, 30, 2, w([5.0, 6.0], [[3.0, 4.0]])),
    ]
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["layer.weight"].numpy(), [[2.5, 3.0]], rtol=1e-6)
    assert s.rounds[1].sites["Hungary"]["status"] == "budget exhausted"


def test_too_few_sites_because_of_budgets_stops_the_run_naming_them():
    s = strategy(min_train_nodes=2)
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        exhausted(12, 1),
        exhausted(13, 2),
    ]
    with pytest.raises(RunStopped, match="only 1 site") as stop:
        s.aggregate_train(3, replies)
    assert "Hungary: budget exhausted; Switzerland: budget exhausted" in str(stop.value)
    assert "Cleveland" not in str(stop.value)
    assert "min-train-nodes=2" in str(stop.value)
    rec = s.rounds[3]
    assert rec.trained_sites == 1
    assert {k: v["status"] for k, v in rec.sites.items()} == {
        "Cleveland": "trained",
        "Hungary": "budget exhausted",
        "Switzerland": "budget exhausted",
    }


def test_every_site_out_of_budget_stops_the_run_even_with_min_train_nodes_zero():
    s = strategy(min_train_nodes=0)
    with pytest.raises(RunStopped, match="Cleveland"):
        s.aggregate_train(1, [exhausted(11, 0)])


def test_too_few_sites_because_of_errors_fails_the_round():
    s = strategy(min_train_nodes=2)
    replies = [trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])), failed(42, "CUDA out of memory")]
    with pytest.raises(RoundFailed, match="CUDA out of memory") as err:
        s.aggregate_train(2, replies)
    assert "node-42" in str(err.value)
    assert "1 site(s) trained" in str(err.value)
    assert s.rounds[2].failures == ["node-42: CUDA out of memory"]


def test_errors_and_refusals_together_fail_the_round_rather_than_stop_it():
    s = strategy(min_train_nodes=2)
    replies = [trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])), exhausted(12, 1), failed(13, "x")]
    with pytest.raises(RoundFailed):
        s.aggregate_train(1, replies)


def test_an_error_is_tolerated_while_enough_sites_trained():
    s = strategy(min_train_nodes=2)
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        failed(99, "timeout"),
        trained(12, 30, 1, w([5.0, 6.0], [[3.0, 4.0]])),
    ]
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["layer.bias"].numpy(), [4.0, 5.0], rtol=1e-6)
    assert s.rounds[1].failures == ["node-99: timeout"]
    assert s.rounds[1].trained_sites == 2


def test_site_labels_use_site_names_then_partition_id_then_node_id():
    s = privacy_aware({0: "Cleveland"}, min_train_nodes=1)
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
        trained(12, 10, 7, w([1.0, 2.0], [[1.0, 0.0]])),
        trained(13, 10, -1, w([1.0, 2.0], [[1.0, 0.0]])),
    ]
    s.aggregate_train(1, replies)
    assert set(s.rounds[1].sites) == {"Cleveland", "site-7", "node-13"}


def test_without_site_names_simulated_sites_are_named_by_partition():
    s = privacy_aware(min_train_nodes=1)
    s.aggregate_train(1, [trained(11, 10, 2, w([1.0, 2.0], [[1.0, 0.0]]))])
    assert list(s.rounds[1].sites) == ["site-2"]


def test_aggregate_evaluate_records_eval_metrics_per_site_and_eval_keys_only():
    s = strategy()
    s.aggregate_train(
        1,
        [
            trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]])),
            trained(12, 30, 1, w([5.0, 6.0], [[3.0, 4.0]])),
        ],
    )
    metrics = s.aggregate_evaluate(
        1, [evaluated(11, 20, 0, 0.6, 0.7), evaluated(12, 60, 1, 0.2, 0.9)]
    )
    rec = s.rounds[1]
    # weighted by num-examples: (20 * 0.7 + 60 * 0.9) / 80 = 0.85; (20 * 0.6 + 60 * 0.2) / 80 = 0.3
    assert rec.federated_eval == {
        "eval-accuracy": pytest.approx(0.85),
        "eval-loss": pytest.approx(0.3),
    }
    assert metrics["eval-accuracy"] == pytest.approx(0.85)
    assert rec.sites["Cleveland"]["eval-accuracy"] == pytest.approx(0.7)
    assert rec.sites["Hungary"]["eval-loss"] == pytest.approx(0.2)
    # merged into the train record of the same site, which keeps its status
    assert rec.sites["Hungary"]["status"] == "trained"
    assert rec.sites["Hungary"]["num-examples"] == 30  # the training count, not eval's 60


def test_aggregate_evaluate_alone_creates_site_records_without_status():
    s = strategy()
    s.aggregate_evaluate(2, [evaluated(5, 10, -1, 0.4, 0.5), failed(6, "down")])
    rec = s.rounds[2]
    assert rec.sites == {"node-5": {"eval-loss": 0.4, "eval-accuracy": 0.5}}
    assert rec.federated_eval == {"eval-loss": 0.4, "eval-accuracy": 0.5}


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages a ServerApp builds take their run id from the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def global_model() -> ArrayRecord:
    """The arrays a round sends: what every reply is checked against (same keys and shapes)."""
    return ArrayRecord({k: Array(v) for k, v in w([0.0, 0.0], [[0.0, 0.0]]).items()})


class FakeGrid:
    """What FedAvg's node sampling asks of a Grid: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def test_a_site_that_does_not_reply_is_recorded_as_dropped_out_by_name(in_a_run):
    s = strategy(min_train_nodes=2)
    grid = FakeGrid([11, 12, 13])
    arrays = global_model()
    s.configure_train(1, arrays, ConfigRecord(), grid)
    first = [
        trained(n, 10, pid, w([1.0, 2.0], [[1.0, 0.0]])) for n, pid in ((11, 0), (12, 1), (13, 2))
    ]
    s.aggregate_train(1, first)
    s.configure_train(2, arrays, ConfigRecord(), grid)
    s.aggregate_train(2, [first[0], first[2]])  # Hungary (node 12) was killed mid-round
    rec = s.rounds[2]
    assert rec.dropped == ["Hungary"] and rec.trained_sites == 2
    assert rec.failures == ["Hungary: no reply within the round timeout (dropped out)"]
    assert s.rounds[1].dropped == []


def test_too_few_replies_after_dropouts_fail_the_round_with_the_reason(in_a_run):
    s = strategy(min_train_nodes=2)
    s.configure_train(1, global_model(), ConfigRecord(), FakeGrid([11, 12]))
    with pytest.raises(RoundFailed, match="node-12: no reply within the round timeout"):
        s.aggregate_train(1, [trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]]))])


def test_a_resumed_run_numbers_its_rounds_after_the_checkpoint(in_a_run):
    s = privacy_aware(NAMES, round_offset=3, min_train_nodes=1, min_evaluate_nodes=1)
    (message,) = s.configure_train(1, global_model(), ConfigRecord(), FakeGrid([11]))
    assert message.content["config"]["server-round"] == 4  # Flower's round 1 is our round 4
    (evaluate,) = s.configure_evaluate(1, global_model(), ConfigRecord(), FakeGrid([11]))
    assert evaluate.content["config"]["server-round"] == 4
    s.aggregate_train(1, [trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]]))])
    s.aggregate_evaluate(1, [evaluated(11, 5, 0, 0.5, 0.8)])
    assert list(s.rounds) == [4] and s.rounds[4].trained_sites == 1


def test_a_superlink_error_reply_is_charged_to_the_node_it_is_about(in_a_run):
    s = strategy(min_train_nodes=2)
    grid = FakeGrid([11, 12, 13])
    sites = ((11, 0), (12, 1), (13, 2))
    s.configure_train(1, global_model(), ConfigRecord(), grid)
    s.aggregate_train(1, [trained(n, 10, pid, w([1.0, 2.0], [[1.0, 0.0]])) for n, pid in sites])
    sent = list(s.configure_train(2, global_model(), ConfigRecord(), grid))
    for i, message in enumerate(sent):  # what the Grid does when it pushes them
        message.metadata.__dict__["_message_id"] = f"m-{i}"
    to_hungary = next(m for m in sent if m.metadata.dst_node_id == 12)
    unavailable = Message(  # from the SuperLink (node 1), not node 12
        error=Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"),
        metadata=metadata(1),
    )
    unavailable.metadata.__dict__["_reply_to_message_id"] = to_hungary.metadata.message_id
    replies = [trained(n, 10, pid, w([1.0, 2.0], [[1.0, 0.0]])) for n, pid in (sites[0], sites[2])]
    s.aggregate_train(2, [*replies, unavailable])
    assert s.rounds[2].failures == ["Hungary: Node Unavailable"]  # once, and by its name
    assert s.rounds[2].dropped == ["Hungary"]


def test_evaluations_inside_train_replies_are_filed_under_the_model_they_evaluated():
    s = strategy(min_train_nodes=1)
    first = trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]]))
    second = trained(
        12, 10, 1, w([1.0, 2.0], [[1.0, 0.0]]), **{"eval-examples": 30, "eval-accuracy": 0.5}
    )
    third = trained(
        13, 10, 2, w([1.0, 2.0], [[1.0, 0.0]]), **{"eval-examples": 10, "eval-accuracy": 0.9}
    )
    for msg, loss in ((second, 0.7), (third, 0.3)):
        msg.content["metrics"]["eval-loss"] = loss
    s.aggregate_train(3, [first, second, third])
    # round 3's replies evaluated round 2's global model
    assert s.rounds[2].federated_eval == pytest.approx({"eval-loss": 0.6, "eval-accuracy": 0.6})
    assert s.rounds[2].sites["Hungary"] == {
        "eval-loss": 0.7,
        "eval-accuracy": 0.5,
        "eval-examples": 30,
    }
    assert "Cleveland" not in s.rounds[2].sites  # it did not evaluate
    assert not any(k.startswith("eval-") for k in s.rounds[3].sites["Hungary"])


def test_entity_counts_are_summed_and_federated_f1_computed_from_the_sums():
    # Site A: person TP 3, FP 1, FN 0; site B: person TP 1, FP 0, FN 3, geo-loc FN 2.
    counts = [
        {"person": (3, 1, 0), "geo-loc": (0, 0, 0)},
        {"person": (1, 0, 3), "geo-loc": (0, 0, 2)},
    ]
    replies = []
    for node, pid, n, c in ((11, 0, 10, counts[0]), (12, 1, 30, counts[1])):
        msg = evaluated(node, n, pid, 0.5, 0.9)
        for kind, (tp, fp, fn) in c.items():
            for name, value in (("tp", tp), ("fp", fp), ("fn", fn)):
                msg.content[METRICS][f"eval-entity-{name}/{kind}"] = value
        replies.append(msg)
    s = strategy()
    s.aggregate_evaluate(1, replies)
    fed = s.rounds[1].federated_eval
    # summed: person (4, 1, 3) -> P 0.8, R 4/7, F1 2/3; geo-loc (0, 0, 2) -> F1 0
    # micro: TP 4, FP 1, FN 5 -> P 0.8, R 4/9, F1 2PR/(P+R) = 8/14
    assert fed["eval-entity-precision"] == pytest.approx(0.8)
    assert fed["eval-entity-recall"] == pytest.approx(4 / 9)
    assert fed["eval-entity-f1"] == pytest.approx(8 / 14)
    assert fed["eval-entity-f1/person"] == pytest.approx(2 / 3)
    assert fed["eval-entity-macro-f1"] == pytest.approx(1 / 3)
    assert not any(k.startswith(("eval-entity-tp", "eval-entity-fn")) for k in fed)
    assert s.rounds[1].sites["Hungary"]["eval-entity-fn/geo-loc"] == 2  # per site: its counts

    # the same counts inside train replies (evaluate-with-train) give the same scores
    t = strategy(min_train_nodes=1)
    inside = []
    for node, pid, c in ((11, 0, counts[0]), (12, 1, counts[1])):
        extra = {"eval-examples": 10, "eval-loss": 0.5, "eval-accuracy": 0.9}
        for kind, (tp, fp, fn) in c.items():
            extra |= {f"eval-entity-tp/{kind}": tp, f"eval-entity-fp/{kind}": fp}
            extra |= {f"eval-entity-fn/{kind}": fn}
        inside.append(trained(node, 10, pid, w([1.0, 2.0], [[1.0, 0.0]]), **extra))
    t.aggregate_train(2, inside)
    assert t.rounds[1].federated_eval["eval-entity-f1"] == pytest.approx(8 / 14)
    assert not any(k.startswith("eval-entity") for k in t.rounds[2].sites["Hungary"])


def test_flowers_round_log_gets_fedprivs_figures_and_the_records_keep_every_site_value():
    s = strategy()
    replies = [
        trained(11, 10, 0, w([1.0, 2.0], [[1.0, 0.0]]), **{"epsilon-spent": 1.0}),
        trained(12, 30, 1, w([5.0, 6.0], [[3.0, 4.0]]), **{"epsilon-spent": 2.5}),
    ]
    _, logged = s.aggregate_train(1, replies)
    assert dict(logged) == {"sites": 2, "train-loss": 0.0, "epsilon-spent-max": 2.5}
    assert s.rounds[1].sites["Hungary"]["partition-id"] == 1  # per site: as it sent it
    assert s.rounds[1].sites["Cleveland"]["epsilon-spent"] == 1.0
    logged = s.aggregate_evaluate(
        1, [evaluated(11, 20, 0, 0.6, 0.7), evaluated(12, 60, 1, 0.2, 0.9)]
    )
    assert set(logged) == {"sites", "eval-loss", "eval-accuracy"}
    assert logged["sites"] == 2 and logged["eval-accuracy"] == pytest.approx(0.85)
