"""client/released_updates.py: a resumed run (a later Flower run) that asks a released round
again, with the same request and the same global model, gets the same bytes; anything else is
refused as a replay, and nothing is ever trained or released twice."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from client.released_updates import FOLDER
from client.site import SiteService
from common.config import RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import REPLAYED, TRAINED, from_array_record, to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
RUN = {**DEFAULTS, "model": "logreg", "num-server-rounds": 5}


def _service(tmp_path: Path) -> tuple[SiteService, dict]:
    values = {"name": "Cleveland", "epsilon-budget": 8.0, "ledger": str(tmp_path / "l.sqlite")}
    policy = SiteSettings.from_mapping(values, "policy")
    return SiteService(policy, 0, 4), {**RUN, "results-dir": str(tmp_path)}


def _weights(run: dict, shift: float = 0.0) -> dict[str, np.ndarray]:
    settings = RunSettings.from_run_config(run)
    model = build_model(settings, load_dataset("heart-disease")[1], "cpu")[0]
    return {k: v + np.float32(shift) for k, v in trainable_state(model).items()}


def _ask(service, run, weights, flower_run: int, server_round: int = 2, **asked) -> RecordDict:
    settings = RunSettings.from_run_config(run)
    config = {"server-round": server_round, **TrainRequest.of_run(settings, "run-k"), **asked}
    content = RecordDict({"arrays": to_array_record(weights), "config": ConfigRecord(config)})
    return service.handle("train", content, run, flower_run)


def _rows(service, run, tmp_path) -> int:
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        return len(ledger.rows(service.site_for(run, 11).data.train_key))


def test_a_resumed_run_gets_the_same_update_and_nothing_new_is_released(tmp_path):
    service, run = _service(tmp_path)
    weights = _weights(run)
    first = _ask(service, run, weights, flower_run=11)
    assert dict(first["metrics"])["status"] == TRAINED
    again = _ask(service, run, weights, flower_run=12)  # the coordinator resumed after a crash
    assert dict(again["metrics"]) == dict(first["metrics"])
    assert "sent again" in dict(again["decision"])["reason"]
    sent, resent = from_array_record(first["arrays"]), from_array_record(again["arrays"])
    assert sent.keys() == resent.keys()
    for name, array in sent.items():
        assert np.array_equal(array, resent[name]) and array.dtype == resent[name].dtype
    assert _rows(service, run, tmp_path) == 1  # one release, counted once
    # asked once more by the resumed run: the same bytes again (it was trained for run 11)
    same_run = _ask(service, run, weights, flower_run=12)
    assert dict(same_run["metrics"])["status"] == TRAINED
    # the Flower run that got the release is refused: it has it already
    original = _ask(service, run, weights, flower_run=11)
    assert dict(original["metrics"])["status"] == REPLAYED and "arrays" not in original


def test_a_replay_that_differs_in_anything_is_refused(tmp_path):
    service, run = _service(tmp_path)
    weights = _weights(run)
    assert dict(_ask(service, run, weights, 11)["metrics"])["status"] == TRAINED
    attempts = {
        "another global model": _ask(service, run, _weights(run, 0.5), 12),
        "another request": _ask(service, run, weights, 13, **{"learning-rate": 0.2}),
        "another round": _ask(service, run, weights, 14, server_round=1),
    }
    statuses = {what: dict(reply["metrics"]).get("status") for what, reply in attempts.items()}
    assert statuses["another global model"] == REPLAYED, statuses
    assert statuses["another request"] == REPLAYED, statuses
    # round 1 was never released: it is a new round, trained and released as usual
    assert statuses["another round"] == TRAINED, statuses
    assert all("arrays" not in attempts[w] for w in ("another global model", "another request"))
    assert _rows(service, run, tmp_path) == 2


def test_the_kept_update_is_private_to_the_site_and_a_damaged_one_is_never_sent(tmp_path):
    service, run = _service(tmp_path)
    weights = _weights(run)
    _ask(service, run, weights, 11)
    folder = tmp_path / FOLDER
    (kept,) = folder.iterdir()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    kept.write_bytes(b"not an npz")
    reply = _ask(service, run, weights, 12)
    assert dict(reply["metrics"])["status"] == REPLAYED and "arrays" not in reply
    assert _rows(service, run, tmp_path) == 1
