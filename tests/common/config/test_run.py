"""common/config/run.py and its sections: the run settings (Flower run config)."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, RunSettings

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


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


@pytest.mark.parametrize(
    "extra",
    [{"model": "text", "finetune": "head"}, {"model": "mlp"}, {"model": "logreg"}],
)
def test_init_head_from_is_refused_where_no_head_is_fine_tuned(extra):
    with pytest.raises(ConfigError, match="init-head-from starts a text model's lora or full"):
        RunSettings.from_run_config({"init-head-from": "/somewhere/model", **extra})
    RunSettings.from_run_config({"model": "text", "init-head-from": "/somewhere/model"})
