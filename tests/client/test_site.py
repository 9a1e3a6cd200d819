"""client/site.py: what SiteService.handle refuses outright (nothing changes at the site)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from client.site import SiteRequestError, SiteService
from common.config import RunSettings, SiteSettings
from common.protocol.records import to_array_record
from common.protocol.request import TrainRequest

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _service(tmp_path: Path) -> tuple[SiteService, dict]:
    policy = SiteSettings.from_mapping(
        {"epsilon-budget": 4.0, "ledger": str(tmp_path / "l.sqlite")}, "policy"
    )
    return SiteService(policy, 0, 4), {**DEFAULTS, "model": "logreg"}


def test_unknown_kinds_and_missing_models_are_refused(tmp_path):
    service, run = _service(tmp_path)
    with pytest.raises(SiteRequestError, match="unknown message type 'records'"):
        service.handle("records", RecordDict(), run, 1)
    with pytest.raises(SiteRequestError, match="carries no model"):
        service.handle("evaluate", RecordDict({"config": ConfigRecord({})}), run, 1)


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_weights_that_do_not_fit_are_refused_naming_shapes_and_record_nothing(tmp_path, kind):
    service, run = _service(tmp_path)
    bad = {"net.0.weight": np.zeros((2, 3), np.float32), "net.0.bias": np.zeros(2, np.float32)}
    config = {"server-round": 1, **TrainRequest.of_run(RunSettings.from_run_config(run), "k")}
    content = RecordDict({"arrays": to_array_record(bad), "config": ConfigRecord(config)})
    with pytest.raises(SiteRequestError, match="does not fit this run: weight shapes"):
        service.handle(kind, content, run, 1)
    from common.privacy.ledger import PrivacyLedger

    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        assert ledger.rows() == []
