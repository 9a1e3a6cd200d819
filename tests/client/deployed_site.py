"""A deployed site's files as its operator holds them (data file, policy, ledger path) and the
messages an honest server sends it; shared by the site service's tests."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import ConfigRecord, RecordDict

from client.site_data import load_site_data
from common.config import RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.protocol.records import to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
RUN_CONFIG = {**DEFAULTS, "model": "logreg", "target-epsilon": 2.0, "num-server-rounds": 2}


def write_site(folder: Path, name: str = "site-a", partition: int = 0, budget: float = 50.0):
    """The site's data file (its heart-disease records) and policy; returns the policy path."""
    folder.mkdir(parents=True, exist_ok=True)
    records = load_site_data(RunSettings(), SiteSettings(), partition, 4).train
    frame = pd.DataFrame(records.features, columns=records.feature_names)
    frame["label"] = [records.class_names[i] for i in records.labels]
    data = folder / f"{name}.csv"
    frame.to_csv(data, index=False)
    policy = folder / f"{name}-policy.toml"
    policy.write_text(
        f'name = "{name}"\ndata-file = "{data}"\nlabel-column = "label"\n'
        f'epsilon-budget = {budget}\nledger = "{folder / (name + ".sqlite")}"\n'
    )
    return policy


def train_content(run_config: dict[str, Any], server_round: int = 1, **request: Any) -> RecordDict:
    """A train (or evaluate) message's content for the run: the model and the request."""
    settings = RunSettings.from_run_config(run_config)
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    config = {"server-round": server_round, **TrainRequest.of_run(settings, "run-7"), **request}
    return RecordDict(
        {"arrays": to_array_record(trainable_state(model)), "config": ConfigRecord(config)}
    )
