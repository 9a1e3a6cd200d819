"""What leaves a site: the ClientApp's replies hold only model arrays and scalar metrics."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client import app as client_app
from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.protocol import TRAIN_METRIC_KEYS, to_array_record
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


def _message(context: Context, message_type: str, server_round: int = 1) -> Message:
    settings = RunSettings.from_run_config(context.run_config)
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    content = RecordDict(
        {
            "arrays": to_array_record(trainable_state(model)),
            "config": ConfigRecord({"server-round": server_round}),
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
    assert set(content.keys()) == {"arrays", "metrics"}
    assert list(content.array_records) == ["arrays"] and list(content.metric_records) == ["metrics"]
    assert not content.config_records
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
        assert metrics["noise-multiplier"] > 0
    else:
        assert metrics["epsilon-spent"] == 0 and metrics["noise-multiplier"] == 0


def test_evaluate_reply_holds_only_scalar_metrics(tmp_path: Path) -> None:
    context = _context(tmp_path)
    reply = client_app.evaluate_global(_message(context, "evaluate"), context)
    assert set(reply.content.keys()) == {"metrics"}
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == {"eval-loss", "eval-accuracy", "num-examples", "partition-id"}
    assert 0 <= metrics["eval-accuracy"] <= 1 and np.isfinite(metrics["eval-loss"])


def test_budget_exhausted_site_sends_no_arrays(tmp_path: Path) -> None:
    # The run plan spends target-epsilon over 2 rounds; a budget of a tenth of it refuses round 1.
    sites = tmp_path / "sites.toml"
    sites.write_text(f'[site.1]\nepsilon-budget = 0.3\nledger = "{tmp_path / "l.sqlite"}"\n')
    context = _context(tmp_path, **{"sites-file": str(sites), "target-epsilon": 3.0})
    reply = client_app.train(_message(context, "train"), context)
    assert set(reply.content.keys()) == {"metrics"}
    metrics = reply.content["metrics"]
    assert metrics["status"] == 1 and metrics["num-examples"] == 0
    assert metrics["epsilon-spent"] == 0 and metrics["epsilon-budget"] == 0.3
