"""simulations/phases.py and the launcher's [[phase]] tables: every phase is checked before the
first starts; each phase plans its share of the epsilon; the sites' ledgers and budgets are shared
so the phases compose (per record, <= the total target epsilon)."""

from __future__ import annotations

import io
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from client.gate import authorize_round
from common.config import SIMULATED_SITE, ConfigError, RunSettings, SiteSettings, load_sites_file
from common.privacy.ledger import PrivacyLedger
from common.protocol.request import TrainRequest
from simulations.phases import check_phase_tables, plan_phases, shared_site_policies
from simulations.run import load_simulation_config, run_simulation
from tests.reference_accountants import ledger_rdp

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
HEAD = {"name": "head", "finetune": "head", "num-server-rounds": 3, "epsilon-share": 0.5}
LORA = {"name": "lora", "finetune": "lora", "num-server-rounds": 2, "epsilon-share": 0.5}
BASE = {"model": "text", "dataset": "rotten-tomatoes", "target-epsilon": 6.0, "run-name": "lp"}


def _base(tmp_path: Path) -> dict:
    return BASE | {"results-dir": str(tmp_path / "results")}


def test_each_phase_plans_its_share_and_takes_the_previous_phases_model(tmp_path):
    tables = check_phase_tables([HEAD, LORA | {"epsilon-share": 0.25}], "sim.toml")
    phases = plan_phases(tables, _base(tmp_path), DEFAULTS, tmp_path / "sites.toml")
    assert [p.name for p in phases] == ["head", "lora"]
    head, lora = (p.run_config for p in phases)
    assert (head["target-epsilon"], lora["target-epsilon"]) == (3.0, 1.5)
    assert (head["run-name"], lora["run-name"]) == ("lp-head", "lp-lora")
    assert "init-head-from" not in head
    assert lora["init-head-from"] == str(tmp_path / "results" / "lp-head" / "model")
    assert head["sites-file"] == lora["sites-file"] == str(tmp_path / "sites.toml")
    assert (head["num-server-rounds"], lora["num-server-rounds"]) == (3, 2)
    assert "name" not in head and "epsilon-share" not in lora
    settings = RunSettings.from_run_config(DEFAULTS | lora)
    assert (settings.finetune_mode, settings.target_epsilon) == ("lora", 1.5)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([HEAD | {"epsilon-share": 0.0}], "epsilon-share must be in (0, 1], got 0.0"),
        ([HEAD | {"epsilon-share": -0.5}], "epsilon-share must be in (0, 1]"),
        ([HEAD | {"epsilon-share": True}], "epsilon-share must be a number"),
        ([{k: v for k, v in HEAD.items() if k != "epsilon-share"}], "epsilon-share must be"),
        ([HEAD | {"epsilon-share": 0.6}, LORA], "epsilon-shares sum to 1.1 > 1"),
        ([HEAD, LORA | {"learning-rat": 0.1}], "(lora): unknown keys ['learning-rat']"),
        ([HEAD, LORA | {"target-epsilon": 4.0}], "a phase may not set ['target-epsilon']"),
        ([HEAD, LORA | {"init-head-from": "/x"}], "a phase may not set ['init-head-from']"),
        ([HEAD, LORA | {"dataset": "adult"}], "a phase may not set ['dataset']"),
        ([HEAD, LORA | {"seed": 3}], "a phase may not set ['seed']"),
        ([HEAD, LORA | {"name": "head"}], "a second phase named 'head'"),
        ([HEAD | {"name": "a b"}], "name must be 1-40 letters"),
        ({"name": "x"}, "'phase' must be [[phase]] tables"),
    ],
)
def test_bad_phase_tables_are_refused_naming_the_phase_and_key(tables, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_phase_tables(tables, "sim.toml")


def test_a_phase_that_is_no_valid_run_or_init_head_from_by_hand_is_refused(tmp_path):
    # phase 2 with finetune=head would get init-head-from: a head run trains its own head
    tables = check_phase_tables([HEAD, LORA | {"finetune": "head"}], "sim.toml")
    with pytest.raises(ConfigError, match=r"phase 'lora': init-head-from starts a text model"):
        plan_phases(tables, _base(tmp_path), DEFAULTS, tmp_path / "s.toml")
    tables = check_phase_tables([HEAD, LORA | {"batch-size": 0}], "sim.toml")
    with pytest.raises(ConfigError, match=r"phase 'lora': batch-size must be"):
        plan_phases(tables, _base(tmp_path), DEFAULTS, tmp_path / "s.toml")
    tables = check_phase_tables([HEAD, LORA], "sim.toml")
    with pytest.raises(ConfigError, match="init-head-from is set by the launcher"):
        plan_phases(tables, _base(tmp_path) | {"init-head-from": "/x"}, DEFAULTS, tmp_path / "s")
    with pytest.raises(ConfigError, match="resume applies to one run"):
        plan_phases(tables, _base(tmp_path) | {"resume": True}, DEFAULTS, tmp_path / "s")


def _config(tmp_path: Path, phases: str, extra: str = "") -> Path:
    file = tmp_path / "lpft.toml"
    file.write_text(
        '[simulation]\nnum-supernodes = 2\n[run]\nmodel = "text"\ndataset = "rotten-tomatoes"\n'
        'partitioner = "iid"\ntarget-epsilon = 4.0\n' + extra + phases
    )
    return file


PHASES = (
    '[[phase]]\nname = "head"\nfinetune = "head"\nepsilon-share = 0.5\n'
    '[[phase]]\nname = "lora"\nfinetune = "lora"\nepsilon-share = 0.5\n'
)


def test_the_simulation_config_holds_phase_tables_and_is_a_valid_sites_file(tmp_path):
    config = _config(tmp_path, PHASES, "[site.1]\nepsilon-budget = 3.0\n")
    sim, run, phases = load_simulation_config(config)
    assert [p["name"] for p in phases] == ["head", "lora"]
    assert run["sites-file"] == str(config.resolve())
    assert load_sites_file(config)[1].epsilon_budget == 3.0  # [[phase]] is a known table there
    config.write_text(config.read_text() + "[phases]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown tables \['phases'\]"):
        load_simulation_config(config)


@pytest.mark.parametrize(
    ("phases", "overrides", "message"),
    [
        (PHASES.replace("0.5", "0.7"), {}, "epsilon-shares sum to 1.4 > 1"),
        (PHASES, {"init-head-from": "/x"}, "init-head-from is set by the launcher"),
        (PHASES + "target-epsilon = 1.0\n", {}, "may not set ['target-epsilon']"),
        (PHASES + "max-lenght = 9\n", {}, "unknown keys ['max-lenght']"),
    ],
)
def test_bad_phases_fail_before_anything_starts(tmp_path, phases, overrides, message):
    config = _config(tmp_path, phases)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_simulation(config, overrides, tmp_path / "results", stream=io.StringIO())
    assert not (tmp_path / "results").exists()


def test_an_existing_later_phase_folder_fails_before_the_first_phase(tmp_path):
    (tmp_path / "results" / "lp-lora").mkdir(parents=True)
    with pytest.raises(ConfigError, match="lp-lora already exists"):
        run_simulation(
            _config(tmp_path, PHASES),
            {"run-name": "lp"},
            tmp_path / "results",
            stream=io.StringIO(),
        )
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["lp-lora"]


def _policies(text: str, tmp_path: Path) -> dict[int, SiteSettings]:
    file = tmp_path / "generated.toml"
    file.write_text(text)
    return load_sites_file(file)


def test_sites_without_their_own_table_get_a_shared_ledger_and_the_total_budget(tmp_path):
    sites = _policies(shared_site_policies("", 3, tmp_path / "ledgers", 6.0), tmp_path)
    assert sorted(sites) == [0, 1, 2]
    for n, policy in sites.items():
        ledger = str(tmp_path / "ledgers" / f"site-{n}.sqlite")
        assert policy == replace(SIMULATED_SITE, ledger=ledger, epsilon_budget=6.0)


def test_a_sites_own_table_is_kept_and_only_missing_ledger_and_budget_are_added(tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(f'epsilon-budget = 2.5\nledger = "{tmp_path}/own-2.sqlite"\n')
    user = tmp_path / "sites.toml"
    user.write_text(
        f'[site.0]\nepsilon-budget = 3.0\nledger = "{tmp_path}/own-0.sqlite"\n'
        "min-noise-multiplier = 0.8\n"
        '[site.1]\nname = "clinic"\nmax-rounds-per-run = 7\n'
        f'[site.2]\npolicy-file = "{policy_file}"\n'
    )
    sites = _policies(shared_site_policies(str(user), 4, tmp_path / "shared", 6.0), tmp_path)
    assert sorted(sites) == [0, 1, 2, 3]
    assert (sites[0].epsilon_budget, sites[0].ledger) == (3.0, f"{tmp_path}/own-0.sqlite")
    assert sites[0].min_noise_multiplier == 0.8
    assert (sites[1].name, sites[1].max_rounds_per_run) == ("clinic", 7)
    assert (sites[1].epsilon_budget, sites[1].ledger) == (6.0, f"{tmp_path}/shared/site-1.sqlite")
    assert not sites[1].allow_non_private  # its own table: the simulated defaults are not added
    assert (sites[2].epsilon_budget, sites[2].ledger) == (2.5, f"{tmp_path}/own-2.sqlite")
    assert sites[3] == replace(
        SIMULATED_SITE, ledger=f"{tmp_path}/shared/site-3.sqlite", epsilon_budget=6.0
    )


def test_both_phases_compose_in_the_shared_ledger_within_the_total_budget(tmp_path):
    """The site's gate, fed each phase's honest requests in turn on one ledger with the total
    budget: every round of both phases is admitted, and a record's composed epsilon (dp-accounting
    RDP over the rows) exceeds phase 1's alone and stays <= the total."""
    total, n = 4.0, 800
    tables = check_phase_tables(
        [
            HEAD | {"local-steps": 10, "batch-size": 400},
            LORA | {"local-steps": 4, "batch-size": 100},
        ],
        "sim.toml",
    )
    base = _base(tmp_path) | {"target-epsilon": total, "accountant": "rdp"}
    phases = plan_phases(tables, base, DEFAULTS, tmp_path / "sites.toml")
    policy = replace(SIMULATED_SITE, epsilon_budget=total, ledger=str(tmp_path / "l.sqlite"))
    epsilons = []
    with PrivacyLedger(policy.ledger) as ledger:
        for phase in phases:
            settings = RunSettings.from_run_config(DEFAULTS | phase.run_config)
            run_key = f"{phase.run_name}@1"
            q = 1 / -(-n // settings.batch_size)
            for r in range(1, settings.num_server_rounds + 1):
                wire = TrainRequest.of_run(settings, run_key) | {"server-round": r}
                grant = authorize_round(
                    ledger,
                    "records",
                    run_key,
                    r,
                    TrainRequest.from_config(wire),
                    policy,
                    requested_delta=0.0,
                    accountant="rdp",
                    num_records=n,
                    sample_rate=q,
                    steps=settings.local_steps,
                )
                ledger.mark_released(grant.row_id, settings.local_steps)
            epsilons.append(ledger_rdp(ledger.rows("records")))
        rows = ledger.rows("records")
    assert len(rows) == 3 + 2 and len({r.run_id for r in rows}) == 2
    first_alone, both = epsilons
    assert first_alone == pytest.approx(2.0, rel=0.01)  # phase 1 spent its share, 0.5 x 4
    assert first_alone < both <= total


def test_the_lpft_recipe_plans_a_head_phase_then_lora_from_its_head(tmp_path):
    recipe = ROOT / "simulations" / "configs" / "demo-lpft.toml"
    _, run, tables = load_simulation_config(recipe)
    base = run | {"run-name": "demo", "results-dir": str(tmp_path)}
    head, lora = plan_phases(tables, base, DEFAULTS, tmp_path / "sites.toml")
    first = RunSettings.from_run_config(DEFAULTS | head.run_config)
    second = RunSettings.from_run_config(DEFAULTS | lora.run_config)
    assert (first.finetune_mode, first.target_epsilon, first.num_server_rounds) == ("head", 4, 20)
    assert (second.finetune_mode, second.target_epsilon, second.pooling) == ("lora", 4, "auto")
    assert second.init_head_from == str(tmp_path / "demo-head" / "model")
    assert (second.num_server_rounds, second.local_steps, second.max_length) == (4, 8, 64)
