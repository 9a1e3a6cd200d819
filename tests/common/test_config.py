"""common/config/: run settings (Flower run config, in sections) and site settings."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, RunSettings, SiteSettings, load_sites_file

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pyproject_run_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def kebab(name: str) -> str:
    return name.replace("_", "-")


# --- run settings ------------------------------------------------------------------------


def test_pyproject_defaults_parse_to_the_dataclass_defaults():
    assert RunSettings.from_run_config(pyproject_run_config()) == RunSettings()


def test_pyproject_names_every_setting_and_no_other():
    assert set(pyproject_run_config()) == {kebab(f.name) for f in dataclasses.fields(RunSettings)}


def test_empty_run_config_gives_the_defaults():
    assert RunSettings.from_run_config({}) == RunSettings()


def test_overrides_are_applied_and_ints_become_floats_for_float_settings():
    settings = RunSettings.from_run_config(
        {"num-server-rounds": 7, "target-epsilon": 2, "dp": False, "model": "logreg"}
    )
    assert settings.num_server_rounds == 7
    assert settings.target_epsilon == 2.0 and isinstance(settings.target_epsilon, float)
    assert settings.dp is False
    assert settings.model == "logreg"


def test_lora_targets_split_on_commas_and_drop_blanks():
    settings = RunSettings.from_run_config({"lora-target-modules": " query, ,value ,"})
    assert settings.lora_targets == ("query", "value")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="num-server-round") as err:
        RunSettings.from_run_config({"num-server-round": 5})
    assert "unknown keys ['num-server-round']" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", "5"),
        ("num-server-rounds", True),
        ("num-server-rounds", 2.0),
        ("batch-size", False),
        ("target-epsilon", "8"),
        ("target-epsilon", True),
        ("dp", 1),
        ("dp", "true"),
        ("model", 3),
    ],
)
def test_wrong_type_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        RunSettings.from_run_config({key: value})


@pytest.mark.parametrize(
    "key", ["target-epsilon", "learning-rate", "max-grad-norm", "target-delta"]
)
def test_nan_is_rejected_naming_the_key(key):
    with pytest.raises(ConfigError, match=f"{key} must not be NaN"):
        RunSettings.from_run_config({key: math.nan})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"target-epsilon": 0.0}, "target-epsilon"),
        ({"target-epsilon": -1.0}, "target-epsilon"),
        ({"target-epsilon": math.inf}, "target-epsilon"),
        ({"target-delta": 1.0}, "target-delta"),
        ({"target-delta": 1.5}, "target-delta"),
        ({"target-delta": -1e-9}, "target-delta"),
        ({"max-grad-norm": 0.0}, "max-grad-norm"),
        ({"max-grad-norm": -0.5}, "max-grad-norm"),
        ({"max-grad-norm": math.inf}, "max-grad-norm"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"learning-rate": 0.0}, "learning-rate"),
        ({"validation-fraction": 1.0}, "validation-fraction"),
        ({"fraction-train": 1.01}, "fraction-train"),
        ({"min-train-nodes": 0}, "min-train-nodes"),
        ({"lora-target-modules": " , "}, "lora-target-modules"),
        ({"outside-tag-weight": 0.0}, "outside-tag-weight"),
        ({"finetune": "head", "model": "mlp"}, "finetune"),
        ({"pooling": "pooler", "normalize": True}, "normalize"),
        ({"server-optimizer": "fedadam", "aggregation": "median"}, "server-optimizer"),
        ({"server-optimizer": "fedavgm", "server-momentum": 1.0}, "server-momentum"),
        ({"server-optimizer": "fedyogi", "server-tau": 0.0}, "server-tau"),
    ],
)
def test_impossible_settings_are_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        RunSettings.from_run_config(overrides)


def test_dp_limits_at_the_edges_are_accepted():
    settings = RunSettings.from_run_config(
        {"target-epsilon": 1e-3, "target-delta": 0.999, "max-grad-norm": 1e-6}
    )
    assert (settings.target_epsilon, settings.target_delta, settings.max_grad_norm) == (
        1e-3,
        0.999,
        1e-6,
    )


@pytest.mark.parametrize(
    ("key", "value", "choice"),
    [
        ("partitioner", "shards", "dirichlet"),
        ("model", "resnet", "logreg"),
        ("accountant", "gdp", "rdp"),
        ("finetune", "adapters", "head"),
        ("pooling", "max", "mean"),
        ("server-optimizer", "sgd", "fedyogi"),
    ],
)
def test_unknown_choice_is_rejected_listing_the_choices(key, value, choice):
    with pytest.raises(ConfigError, match=f"{key} must be one of") as err:
        RunSettings.from_run_config({key: value})
    assert choice in str(err.value)


def test_infinite_dirichlet_alpha_is_rejected():
    with pytest.raises(ConfigError, match="dirichlet-alpha"):
        RunSettings.from_run_config({"dirichlet-alpha": math.inf})


# --- sites file --------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sites.toml"
    path.write_text(text)
    return path


def test_sites_file_reads_site_tables_by_partition_id(tmp_path):
    path = write(
        tmp_path,
        """
[run]
num-server-rounds = 5

[site.0]
name = "Cleveland"
epsilon-budget = 4
delta = 1e-6
ledger = "/tmp/cleveland.sqlite"

[site.3]
name = "Zurich"
data-file = "zurich.csv"
feature-columns = "age, sex,,chol"
""",
    )
    sites = load_sites_file(path)
    assert set(sites) == {0, 3}
    assert sites[0] == SiteSettings(
        name="Cleveland", epsilon_budget=4.0, delta=1e-6, ledger="/tmp/cleveland.sqlite"
    )
    assert sites[3].data_file == "zurich.csv"
    assert sites[3].feature_list == ["age", "sex", "chol"]
    assert sites[3].epsilon_budget == 0.0  # 0 = the run's target-epsilon


def test_sites_file_without_sites_is_empty(tmp_path):
    assert load_sites_file(write(tmp_path, "[simulation]\n")) == {}


def test_missing_sites_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="nowhere.toml"):
        load_sites_file(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[site.0\nname = 'x'\n", "not valid TOML"),
        ("[site.a]\nname = 'x'\n", "'a'"),
        ("[site.-1]\nname = 'x'\n", "'-1'"),
        ("[site.0]\nepsilon-budjet = 1.0\n", "epsilon-budjet"),
        ("[site.0]\nepsilon-budget = -1.0\n", "epsilon-budget"),
        ("[site.0]\nepsilon-budget = inf\n", "epsilon-budget"),
        ("[site.0]\nepsilon-budget = nan\n", "epsilon-budget"),
        ("[site.0]\nepsilon-budget = '3'\n", "epsilon-budget"),
        ("[site.0]\ndelta = 1.0\n", "delta"),
        ("[site.0]\ndelta = -0.1\n", "delta"),
        ("[sites.0]\nname = 'x'\n", "sites"),
        ("[site.0]\nmin-noise-multiplier = -1.0\n", "min-noise-multiplier"),
        ("[site.0]\nmin-noise-multiplier = inf\n", "min-noise-multiplier"),
        ("[site.0]\nmin-noise-multiplier = 1e9\n", "min-noise-multiplier"),
        ("[site.0]\nmax-grad-norm = -0.5\n", "max-grad-norm"),
        ("[site.0]\nmax-grad-norm = nan\n", "max-grad-norm"),
        ("[site.0]\nmax-rounds-per-run = -2\n", "max-rounds-per-run"),
        ("[site.0]\nmax-rounds-per-run = 2.5\n", "max-rounds-per-run"),
        ("[site.0]\nallow-non-private = 'yes'\n", "allow-non-private"),
    ],
)
def test_bad_sites_file_is_a_config_error_naming_the_file(tmp_path, text, says):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sites_file(path)
    assert str(path) in str(err.value)
    assert says in str(err.value)


def test_bad_site_value_names_the_site_table(tmp_path):
    path = write(tmp_path, "[site.0]\nname = 'a'\n[site.2]\ndelta = 2.0\n")
    with pytest.raises(ConfigError, match=r"\[site\.2\]"):
        load_sites_file(path)


@pytest.mark.parametrize("text", ["site = 3\n", "[[site]]\nname = 'x'\n"])
def test_site_that_is_not_a_table_is_a_config_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="sites.toml"):
        load_sites_file(path)


def test_superscript_site_key_is_a_config_error(tmp_path):
    path = write(tmp_path, '[site."²"]\nname = "x"\n')
    with pytest.raises(ConfigError, match="sites.toml"):
        load_sites_file(path)


def test_binary_sites_file_is_a_config_error(tmp_path):
    path = tmp_path / "sites.toml"
    path.write_bytes(b"\xff\xfe[site.0]\n")
    with pytest.raises(ConfigError, match="sites.toml"):
        load_sites_file(path)


# --- site policy files (deployment: --node-config "policy-file='...'") -------------------


def test_a_policy_file_fills_in_the_sites_keys(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "epsilon-budget = 6.0\nmin-noise-multiplier = 0.8\nmax-grad-norm = 2.0\n"
        "max-rounds-per-run = 20\nallow-non-private = false\n"
    )
    site = SiteSettings.from_mapping(
        {"data-file": "/data/x.csv", "policy-file": str(policy)}, "node config"
    )
    assert site == SiteSettings(
        data_file="/data/x.csv",
        epsilon_budget=6.0,
        min_noise_multiplier=0.8,
        max_grad_norm=2.0,
        max_rounds_per_run=20,
        policy_file=str(policy),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("epsilon-budgett = 6.0\n", "epsilon-budgett"),
        ("epsilon-budget = -6.0\n", "epsilon-budget must be a finite number >= 0"),
        ("min-noise-multiplier = nan\n", "min-noise-multiplier must not be NaN"),
        ("[site]\nepsilon-budget = 6.0\n", "expected flat keys"),
        ("policy-file = 'other.toml'\n", "must not name another policy-file"),
        ("epsilon-budget = \n", "not valid TOML"),
        ("data-file = '/data/y.csv'\n", "set both here and in policy file"),
    ],
)
def test_a_bad_policy_file_is_named_with_the_reason(tmp_path, text, says):
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    with pytest.raises(ConfigError, match=says):
        SiteSettings.from_mapping(
            {"data-file": "/d.csv", "policy-file": str(policy)}, "node config"
        )


def test_a_missing_policy_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.toml"):
        SiteSettings.from_mapping({"policy-file": str(tmp_path / "nowhere.toml")}, "node config")


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        ({}, "lora"),
        ({"finetune": "full", "model": "text"}, "full"),
        ({"finetune": "head", "model": "text"}, "head"),
        ({"finetune": "lora", "model": "text"}, "lora"),
    ],
)
def test_finetune_says_what_trains_and_unset_is_lora(overrides, mode):
    assert RunSettings.from_run_config(overrides).finetune_mode == mode


@pytest.mark.parametrize("value", [True, False])
def test_the_replaced_lora_key_says_what_to_write_instead(value):
    with pytest.raises(ConfigError, match="lora was replaced by finetune"):
        RunSettings.from_run_config({"lora": value})


def test_every_key_belongs_to_exactly_one_section_and_each_section_checks_its_own():
    from common.config import SECTIONS, section_keys

    keys = [key for section in section_keys().values() for key in section]
    assert len(keys) == len(set(keys))
    assert set(keys) == {kebab(f.name) for f in dataclasses.fields(RunSettings)}
    assert set(keys) == set(pyproject_run_config())
    for cls in SECTIONS.values():
        cls().check_section()  # each section stands alone with its defaults
    with pytest.raises(ConfigError, match="batch-size"):
        SECTIONS["local training"](batch_size=0).check_section()


def test_run_and_request_share_one_limit():
    from common.config.limits import MAX_TARGET_EPSILON
    from common.protocol.request import REQUEST_KEYS

    assert REQUEST_KEYS["target-epsilon"][2] == MAX_TARGET_EPSILON
    RunSettings.from_run_config({"target-epsilon": MAX_TARGET_EPSILON})
    with pytest.raises(ConfigError, match="target-epsilon"):
        RunSettings.from_run_config({"target-epsilon": MAX_TARGET_EPSILON * 2})


def test_readme_lists_every_run_config_key_under_its_section():
    from common.config import section_keys

    readme = (PYPROJECT.parent / "README.md").read_text()
    table = readme.split("### Run-config keys")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][1:]
    listed = {key: row[0].removeprefix("| ") for row in rows for key in row[1].split("`")[1::2]}
    for section, keys in section_keys().items():
        for key in keys:
            assert listed.get(key) == section, f"README: {key} should be listed under {section}"
