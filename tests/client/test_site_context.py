"""client/site_context.py: whose policy a site runs under, in simulation and in deployment."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from client.site_context import build_site, site_from_context
from common.config import SIMULATED_SITE, ConfigError, SiteSettings
from common.data.registry import load_dataset

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def context(node_config: dict, **run: object) -> Context:
    return Context(
        run_id=5,
        node_id=9,
        node_config=node_config,
        state=RecordDict(),
        run_config={**DEFAULTS, **run},
    )


@pytest.fixture
def site_csv(tmp_path: Path) -> Path:
    """A hospital's own file with the heart-disease columns."""
    test = load_dataset("heart-disease")[1]
    frame = pd.DataFrame(test.features, columns=test.feature_names)
    frame["label"] = [test.class_names[i] for i in test.labels]
    path = tmp_path / "hospital.csv"
    frame.to_csv(path, index=False)
    return path


def deployed(node_config: dict, **run: object):
    """A deployed site: its service's own settings (what the operator's policy file says)."""
    policy = SiteSettings.from_mapping(node_config, "node config")
    return build_site({**DEFAULTS, **run}, policy, -1, 1, 5)


def test_a_simulated_site_without_a_table_is_the_researchers(tmp_path):
    site = site_from_context(context({"partition-id": 2, "num-partitions": 4}))
    assert site.policy == SIMULATED_SITE and site.policy.allow_non_private
    assert site.ledger_path.parts[-3:] == ("ledgers", "run-5", f"{site.data.name}.sqlite")


def test_a_deployed_site_reads_its_policy_file(tmp_path, site_csv, monkeypatch):
    monkeypatch.setenv("FEDPRIV_HOME", str(tmp_path / "home"))
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "St Elsewhere"\nepsilon-budget = 6.0\nmin-noise-multiplier = 0.9\n')
    site = deployed({"data-file": str(site_csv), "policy-file": str(policy)}, **{"run-name": "d"})
    assert (site.policy.epsilon_budget, site.policy.min_noise_multiplier) == (6.0, 0.9)
    assert not site.policy.allow_non_private
    assert site.data.name == "St Elsewhere" and site.partition_id == -1
    assert site.ledger_path == tmp_path / "home" / "ledger.sqlite"


def test_a_deployed_site_must_set_its_own_budget(site_csv):
    with pytest.raises(ConfigError, match="no privacy budget: set epsilon-budget"):
        deployed({"data-file": str(site_csv)})


def test_a_deployed_site_must_name_its_data():
    with pytest.raises(ConfigError, match="has no data"):
        deployed({"epsilon-budget": 3.0})


def test_a_bad_node_config_is_named(site_csv):
    with pytest.raises(ConfigError, match="node config: unknown keys"):
        deployed({"data-file": str(site_csv), "budget": 3.0})


def test_a_deployed_site_loads_only_the_base_models_its_policy_lists(tmp_path, site_csv):
    from common.models.tiny import save_tiny_bert

    mine, theirs = save_tiny_bert(tmp_path / "mine"), save_tiny_bert(tmp_path / "theirs")
    site = {"data-file": str(site_csv), "epsilon-budget": 4.0, "ledger": str(tmp_path / "l.db")}
    text_run = {"dataset": "rotten-tomatoes", "model": "text"}
    # no list: only the packaged MiniLM; a path the coordinator names is refused
    with pytest.raises(ConfigError, match="does not load the model"):
        deployed(site, **text_run, **{"model-name-or-path": str(theirs)})
    with pytest.raises(ConfigError, match="does not load the model"):
        deployed(site, **text_run, **{"model-name-or-path": "some-org/some-hub-model"})
    listed = {**site, "base-models": f"{mine}, other-org/model"}
    with pytest.raises(ConfigError, match="base-models lists"):
        deployed(listed, **text_run, **{"model-name-or-path": str(theirs)})
    with pytest.raises(ConfigError, match="does not load the model 'the packaged MiniLM'"):
        deployed(listed, **text_run)  # a list replaces the default
    # tabular runs load no pretrained model: nothing to check
    assert deployed(site, **{"model-name-or-path": str(theirs)}).settings.model == "mlp"


def test_a_listed_base_model_is_matched_by_its_resolved_path(tmp_path, site_csv):
    from client.site_context import check_base_model
    from common.config import RunSettings

    policy = SiteSettings(base_models=str(tmp_path / "models" / ".." / "mine"))
    run = RunSettings(model="text", model_name_or_path=str(tmp_path / "mine"))
    check_base_model(run, policy)  # no error
    check_base_model(run, SiteSettings(base_models="*"))
    assert SIMULATED_SITE.base_models == "*"
