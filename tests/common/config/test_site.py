"""common/config/site.py and toml_files.py: a site's settings, its policy file, a sites file."""

import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, SiteSettings, load_sites_file

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def pyproject_run_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def kebab(name: str) -> str:
    return name.replace("_", "-")


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
