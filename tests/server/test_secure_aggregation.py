"""server/secure_aggregation.py + client/secure_aggregation.py: SecAgg+ rounds of real sites.

An in-process Grid delivers the server's messages to fedpriv's real ClientApp (with its mods:
Flower's secaggplus_mod) for each heart-disease hospital, on a Context that persists between
messages as a SuperNode's does, and keeps every reply the server receives. The sites' plain
models are captured at the sites (test instrumentation) only to compute the expected aggregate.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

import client.secure_aggregation as site_side
from client import app as client_app
from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.protocol.records import to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model
from server.build import build_strategy
from server.secure_aggregation import SecureAggregation
from tests.reference_accountants import reference_pld

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
HOSPITALS = 4


@pytest.fixture(autouse=True)
def in_a_run(monkeypatch):
    """Messages a ServerApp builds take their run id from the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


class SitesGrid:
    """Node 100 + i is hospital i running fedpriv's ClientApp. ``drop``: node -> the SecAgg+
    stage from which on it no longer answers (it died mid-round)."""

    def __init__(
        self,
        run_config: dict,
        drop: dict[int, str] | None = None,
        garble: dict[int, str] | None = None,
    ) -> None:
        self.contexts = {
            100 + i: Context(
                run_id=7,
                node_id=100 + i,
                node_config={"partition-id": i, "num-partitions": HOSPITALS},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(HOSPITALS)
        }
        self.drop = drop or {}
        self.garble = garble or {}
        self.dead: set[int] = set()
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            configs = msg.content.config_records
            stage = configs[RECORD_KEY_CONFIGS][Key.STAGE] if RECORD_KEY_CONFIGS in configs else ""
            if node in self.dead or self.drop.get(node) == stage:
                self.dead.add(node)
                continue
            msg.metadata.__dict__["_message_id"] = f"m-{len(self.received)}"
            delivered = copy.deepcopy(msg)  # what travels is a copy (Flower shares one content)
            reply = client_app.app(delivered, self.contexts[node])
            if self.garble.get(node) == stage:  # a broken site: its masked vector is cut short
                vector = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                vector.pop()
            self.received.append(reply)
            replies.append(reply)
        return replies


def run_round(tmp_path: Path, monkeypatch, drop=None, garble=None, **over) -> tuple:
    run_config = {
        **DEFAULTS,
        "results-dir": str(tmp_path),
        "num-server-rounds": 1,
        "noise-multiplier": 1.0,
        "secure-aggregation": True,
        "secagg-reconstruction-threshold": 2,
        "fraction-evaluate": 0.0,
        **over,
    }
    settings = RunSettings.from_run_config(run_config)
    plain: dict[int, tuple[dict, int]] = {}  # what each site would have sent without SecAgg+

    def capture(request: Message, reply: Message, uniform: int = 0) -> Message:
        if "arrays" in reply.content:
            arrays = {k: v.numpy().copy() for k, v in reply.content["arrays"].items()}
            plain[reply.metadata.src_node_id] = (arrays, reply.content["metrics"]["num-examples"])
        return as_fit_reply(request, reply, uniform)

    as_fit_reply = site_side.as_fit_reply
    monkeypatch.setattr(site_side, "as_fit_reply", capture)
    inner, strategy = build_strategy(settings)
    handed: list[Message] = []  # what the aggregation code receives
    aggregate_train = inner.aggregate_train

    def instrumented(server_round, replies):
        handed.extend(replies)
        return aggregate_train(server_round, replies)

    inner.aggregate_train = instrumented  # what SecureAggregation calls
    assert isinstance(strategy, SecureAggregation) and strategy.strategy is inner
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    grid = SitesGrid(run_config, drop, garble)
    result = strategy.start(
        grid=grid,
        initial_arrays=to_array_record(trainable_state(model)),
        num_rounds=1,
        train_config=ConfigRecord(TrainRequest.of_run(settings, "run-7")),
    )
    aggregate = {k: v.numpy() for k, v in result.arrays.items()}
    run_round.initial = trainable_state(model)  # type: ignore[attr-defined]
    return settings, inner, grid, plain, handed, aggregate


def expected_and_bound(settings: RunSettings, plain: dict) -> tuple[dict, float]:
    """The plain weighted mean, and the quantization error bound of SecAgg+: each site's
    weighted parameters p * n_i / W are rounded to steps of 2c / t, so the mean is off by at
    most (sites x 2c / t) / (sum n_i / W) per coordinate."""
    weights = {node: n for node, (_, n) in plain.items()}
    total = sum(weights.values())
    keys = next(iter(plain.values()))[0]
    mean = {
        k: sum(plain[node][0][k].astype(np.float64) * n for node, n in weights.items()) / total
        for k in keys
    }
    step = 2 * settings.secagg_clipping_range / settings.secagg_quantization_range
    bound = len(plain) * step / (total / settings.secagg_max_weight)
    return mean, bound


def test_the_server_gets_only_the_sum_which_equals_the_plain_weighted_mean(tmp_path, monkeypatch):
    settings, inner, grid, plain, handed, aggregate = run_round(tmp_path, monkeypatch)
    assert len(plain) == HOSPITALS
    # No reply the server received holds an array: only masked integer vectors.
    assert len(grid.received) == 4 * HOSPITALS  # four SecAgg+ stages
    for reply in grid.received:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    # The aggregation code was handed the aggregate for every site, never a site's own model.
    trained = [m for m in handed if "arrays" in m.content]
    assert len(trained) == HOSPITALS
    first = {k: v.numpy() for k, v in trained[0].content["arrays"].items()}
    for msg in trained:
        for key, value in msg.content["arrays"].items():
            assert np.array_equal(value.numpy(), first[key])
            np.testing.assert_allclose(value.numpy(), aggregate[key], rtol=1e-5, atol=1e-7)
    mean, bound = expected_and_bound(settings, plain)
    assert bound < 1e-4
    for key, value in aggregate.items():
        assert np.abs(value - mean[key]).max() <= bound, key
        assert not any(np.allclose(value, site[0][key]) for site in plain.values())
    rec = inner.rounds[1]
    assert rec.trained_sites == HOSPITALS and not rec.dropped
    # the sites still recorded their DP-SGD spend before anything left
    assert all(m["epsilon-spent"] > 0 for m in rec.sites.values())
    assert len(list((tmp_path / "ledgers").glob("run-7/*.sqlite"))) == HOSPITALS


def test_a_site_dropping_after_the_key_exchange_is_tolerated(tmp_path, monkeypatch):
    dead = 102
    settings, inner, grid, plain, _, aggregate = run_round(
        tmp_path, monkeypatch, drop={dead: "collect_masked_vectors"}
    )
    assert set(plain) == {100, 101, 103}  # the others' sum, its masks removed from shares
    mean, bound = expected_and_bound(settings, plain)
    for key, value in aggregate.items():
        assert np.abs(value - mean[key]).max() <= bound, key
    rec = inner.rounds[1]
    assert rec.trained_sites == 3 and len(rec.dropped) == 1


def test_a_malformed_masked_vector_counts_as_a_dropped_site(tmp_path, monkeypatch):
    broken = 101
    settings, inner, _, plain, _, aggregate = run_round(
        tmp_path, monkeypatch, garble={broken: "collect_masked_vectors"}
    )
    del plain[broken]  # it trained, but what it sent cannot be summed
    mean, bound = expected_and_bound(settings, plain)
    for key, value in aggregate.items():
        assert np.abs(value - mean[key]).max() <= bound, key
    rec = inner.rounds[1]
    assert rec.trained_sites == 3
    assert any("no well-formed SecAgg+ masked vector" in f for f in rec.failures), rec.failures


def test_client_level_dp_without_trusting_the_server_sites_clip_and_share_the_noise(
    tmp_path, monkeypatch
):
    sigma, clip = 2.0, 0.01  # C so small that the noise dominates what the sites send
    settings, inner, grid, plain, _, aggregate = run_round(
        tmp_path,
        monkeypatch,
        **{"client-dp": "client-fixed", "client-noise-multiplier": sigma},
        **{"client-clipping-norm": clip},
    )
    start = run_round.initial  # type: ignore[attr-defined]
    # every site weighs the same: the aggregate is the plain mean of what the sites sent
    step = 2 * settings.secagg_clipping_range / settings.secagg_quantization_range
    for key, value in aggregate.items():
        mean = np.mean([site[0][key].astype(np.float64) for site in plain.values()], axis=0)
        assert np.abs(value - mean).max() <= step + 1e-7, key
    # the summed noise shares: std sigma * C / m on the mean of the m = 4 clipped updates
    moved = np.concatenate([(aggregate[k] - start[k]).ravel() for k in aggregate])
    assert moved.std() == pytest.approx(sigma * clip / HOSPITALS, rel=0.1)
    rec = inner.rounds[1].client_dp
    assert rec["noise-multiplier"] == sigma and rec["sample-rate"] == 1.0
    expected = reference_pld([(sigma, 1.0, 1)], settings.client_dp_delta)
    assert rec["epsilon"] == pytest.approx(expected, rel=0.01)
