"""What leaves a site: the ClientApp's replies hold only model arrays and scalar metrics."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from opacus import PrivacyEngine

from client import app as client_app
from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import (
    BUDGET_EXHAUSTED,
    INVALID_REQUEST,
    TRAIN_METRIC_KEYS,
    to_array_record,
)
from common.protocol.request import TrainRequest
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _context(tmp_path: Path, **overrides: object) -> Context:
    run_config = {**DEFAULTS, "results-dir": str(tmp_path), "num-server-rounds": 2, **overrides}
    return Context(
        run_id=7,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 4},
        state=RecordDict(),
        run_config=run_config,
    )


def _message(
    context: Context, message_type: str, server_round: int = 1, **request: object
) -> Message:
    """The message an honest server sends for the context's run config, with ``request``
    overriding what it asks (keys as on the wire)."""
    settings = RunSettings.from_run_config(context.run_config)
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    config = {"server-round": server_round, **TrainRequest.of_run(settings, "run-7"), **request}
    content = RecordDict(
        {
            "arrays": to_array_record(trainable_state(model)),
            "config": ConfigRecord(config),
        }
    )
    metadata = Metadata(
        run_id=7,
        message_id="m1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


@pytest.mark.parametrize("dp", [True, False])
def test_train_reply_holds_only_arrays_and_scalar_metrics(tmp_path: Path, dp: bool) -> None:
    context = _context(tmp_path, dp=dp)
    request = _message(context, "train")
    reply = client_app.train(request, context)
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics", "decision"}
    assert list(content.array_records) == ["arrays"] and list(content.metric_records) == ["metrics"]
    assert dict(content["decision"]) == {
        "site": "Hungary",
        "status": "trained",
        "reason": "",
        "clamped": [],
    }
    # exactly the model's trainable parameters, same shapes as sent
    sent = request.content["arrays"]
    assert set(content["arrays"].keys()) == set(sent.keys())
    for key, array in content["arrays"].items():
        assert array.shape == sent[key].shape
    # scalar metrics only, the documented keys, nothing per-example
    metrics = dict(content["metrics"])
    assert set(metrics) == set(TRAIN_METRIC_KEYS)
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values())
    assert metrics["dp"] == int(dp)
    if dp:
        assert 0 < metrics["epsilon-spent"] <= metrics["epsilon-budget"]
        assert metrics["epsilon-left"] == metrics["epsilon-budget"] - metrics["epsilon-spent"]
        assert metrics["noise-multiplier"] > 0 and metrics["rounds-trained"] == 1
    else:  # a simulated site allows the baseline; its data has no epsilon bound any more
        assert metrics["epsilon-spent"] == float("inf") and metrics["noise-multiplier"] == 0


def test_evaluate_reply_holds_only_noisy_scalar_answers(tmp_path: Path) -> None:
    context = _context(tmp_path)
    reply = client_app.evaluate_global(_message(context, "evaluate"), context)
    assert set(reply.content.keys()) == {"metrics", "decision"}
    assert dict(reply.content["decision"]) == {"site": "Hungary", "notes": []}
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == {
        "status",
        "num-examples",
        "eval-examples",
        "eval-accuracy",
        "eval-loss",
        "eval-dp",
        "eval-noise-std",
        "eval-epsilon-spent",
        "eval-epsilon-budget",
        "eval-delta",
        "partition-id",
    }
    assert 0 <= metrics["eval-accuracy"] <= 1 and np.isfinite(metrics["eval-loss"])
    # one Gaussian answer (z = 3, Delta = sqrt 3) on the validation records, in the ledger
    assert metrics["eval-dp"] == 1 and metrics["eval-noise-std"] == pytest.approx(3 * 3**0.5)
    assert 0 < metrics["eval-epsilon-spent"] <= metrics["eval-epsilon-budget"]


def _sites_file(tmp_path: Path, **policy: object) -> Path:
    lines = [f"{key} = {value!r}" for key, value in policy.items()]
    lines.append(f'ledger = "{tmp_path / "ledger.sqlite"}"')
    path = tmp_path / "sites.toml"
    path.write_text("[site.1]\n" + "\n".join(lines).replace("'", '"') + "\n")
    return path


def _site_context(tmp_path: Path, **policy: object) -> Context:
    """Partition 1 with its own [site.1] policy and ledger file."""
    return _context(tmp_path, **{"sites-file": str(_sites_file(tmp_path, **policy))})


def _ledger_rows(tmp_path: Path) -> list:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        return ledger.rows()


def _assert_refused(reply: Message, status: str, says: str) -> dict:
    assert set(reply.content.keys()) == {"metrics", "decision"}  # no arrays
    decision = dict(reply.content["decision"])
    assert decision["status"] == status and says in decision["reason"], decision
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == set(TRAIN_METRIC_KEYS)
    assert metrics["num-examples"] == 0 and metrics["steps"] == 0
    return metrics


def test_budget_exhausted_site_sends_no_arrays_and_says_what_is_left(tmp_path: Path) -> None:
    # sigma 0.5 for a full pass costs far more than the site's whole budget of 0.3
    context = _context(
        tmp_path, **{"sites-file": str(_sites_file(tmp_path, **{"epsilon-budget": 0.3}))}
    )
    reply = client_app.train(_message(context, "train", **{"noise-multiplier": 0.5}), context)
    metrics = _assert_refused(reply, "budget exhausted", "over the budget 0.3000")
    assert metrics["status"] == BUDGET_EXHAUSTED
    assert (metrics["epsilon-spent"], metrics["epsilon-budget"], metrics["epsilon-left"]) == (
        0.0,
        0.3,
        0.3,
    )
    assert _ledger_rows(tmp_path) == []


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"noise-multiplier": float("nan")}, "noise-multiplier must be finite"),
        ({"max-grad-norm": -1.0}, "max-grad-norm must be > 0"),
        ({"batch-size": 10**9}, "batch-size must be >= 1 and <= 1e+07"),
        ({"local-epochs": 0}, "local-epochs must be >= 1"),
    ],
)
def test_a_malformed_request_is_refused_and_records_nothing(
    tmp_path: Path, request_: dict, says: str
) -> None:
    context = _context(
        tmp_path, **{"sites-file": str(_sites_file(tmp_path, **{"epsilon-budget": 5.0}))}
    )
    reply = client_app.train(_message(context, "train", **request_), context)
    metrics = _assert_refused(reply, "invalid request", says)
    assert metrics["status"] == INVALID_REQUEST and metrics["epsilon-budget"] == 5.0
    assert _ledger_rows(tmp_path) == []


def test_a_deployed_style_site_refuses_non_private_training(tmp_path: Path) -> None:
    context = _context(
        tmp_path, **{"sites-file": str(_sites_file(tmp_path, **{"epsilon-budget": 5.0}))}
    )
    reply = client_app.train(_message(context, "train", dp=False), context)
    _assert_refused(reply, "non-private refused", "allow-non-private")
    assert _ledger_rows(tmp_path) == []


def test_a_request_for_less_noise_than_the_site_allows_cannot_lower_the_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    told: list[tuple[float, float]] = []
    make_private = PrivacyEngine.make_private

    def spy(self, **kwargs):  # what Opacus was actually told, and what its optimizer holds
        out = make_private(self, **kwargs)
        told.append((out[1].noise_multiplier, out[1].max_grad_norm))
        return out

    monkeypatch.setattr(PrivacyEngine, "make_private", spy)
    policy = {"epsilon-budget": 50.0, "min-noise-multiplier": 2.0, "max-grad-norm": 0.5}
    context = _site_context(tmp_path, **policy)
    # both an explicit low sigma and a huge target epsilon (which calibrates a tiny sigma)
    for server_round, request_ in enumerate(
        [{"noise-multiplier": 0.3, "max-grad-norm": 4.0}, {"target-epsilon": 900.0}], start=1
    ):
        reply = client_app.train(_message(context, "train", server_round, **request_), context)
        assert reply.content["metrics"]["noise-multiplier"] == 2.0
        assert reply.content["metrics"]["max-grad-norm"] == 0.5
        clamped = list(reply.content["decision"]["clamped"])
        assert any(c.startswith("noise-multiplier") and "-> 2 (" in c for c in clamped), clamped
    assert told == [(2.0, 0.5), (2.0, 0.5)]
    assert [r.noise_multiplier for r in _ledger_rows(tmp_path)] == [2.0, 2.0]


def test_a_site_asked_to_evaluate_the_received_model_reports_it_in_the_train_reply(
    tmp_path: Path,
) -> None:
    context = _context(tmp_path)
    reply = client_app.train(_message(context, "train", **{"evaluate-received": True}), context)
    metrics = reply.content["metrics"]
    assert metrics["status"] == 0 and metrics["eval-examples"] > 0
    assert 0 <= metrics["eval-accuracy"] <= 1 and metrics["eval-loss"] >= 0  # noisy, clipped
    plain = client_app.train(_message(context, "train", server_round=2), context)
    assert plain.content["metrics"]["eval-examples"] == 0
