"""Sites with different policies in one simulation: a small budget stops its site at the right
round, a rounds cap stops another, the run goes on with the rest, and the summary says why each
site stopped. The stopping round is predicted here with dp-accounting, independently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from client.site_data import load_site_data
from common.config import RunSettings, SiteSettings
from common.privacy.sampling import sample_rate, steps_per_epoch
from simulations.run import load_simulation_config, run_simulation
from tests.reference_accountants import reference_pld

CONFIG = Path(__file__).resolve().parents[2] / "simulations" / "configs" / "heart-disease.toml"
ROUNDS, SIGMA = 5, 1.0


@pytest.mark.slow
def test_a_small_budget_stops_its_site_at_the_predicted_round(tmp_path: Path) -> None:
    overrides = {
        "num-server-rounds": ROUNDS,
        "noise-multiplier": SIGMA,  # the server asks for sigma; each round costs the same
        "server-eval-max-records": 40,
        "run-name": "budgets",
    }
    settings = RunSettings.from_run_config(load_simulation_config(CONFIG)[1] | overrides)
    cleveland = load_site_data(settings, SiteSettings(), 0, 4).train
    n = len(cleveland)
    q = sample_rate(n, settings.batch_size)
    steps = steps_per_epoch(n, settings.batch_size) * settings.local_epochs
    delta = 0.1 / n
    two, three = (reference_pld([(SIGMA, q, steps)] * k, delta) for k in (2, 3))
    budget = (two + three) / 2  # room for exactly 2 rounds
    sites = tmp_path / "sites.toml"
    sites.write_text(
        f"[site.0]\nepsilon-budget = {budget}\n"
        "[site.1]\nepsilon-budget = 100.0\nmax-rounds-per-run = 3\n"
        "[site.2]\nepsilon-budget = 100.0\n"
        "[site.3]\nepsilon-budget = 100.0\n"
    )
    folder = run_simulation(
        CONFIG, overrides | {"sites-file": str(sites)}, tmp_path / "results", stream=io.StringIO()
    )

    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    status = {r["round"]: {s: m["status"] for s, m in r["sites"].items()} for r in rounds[1:]}
    names = sorted(status[1])
    first, capped = "Cleveland", "Hungary"
    assert names == ["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]
    assert [status[r][first] for r in range(1, 6)] == ["trained"] * 2 + ["budget exhausted"] * 3
    assert [status[r][capped] for r in range(1, 6)] == ["trained"] * 3 + ["round limit"] * 2
    assert all(status[r][s] == "trained" for r in status for s in ("Switzerland", "VA Long Beach"))
    assert [r["trained-sites"] for r in rounds[1:]] == [4, 4, 3, 2, 2]
    round_3 = rounds[3]["sites"][first]
    assert round_3["epsilon-spent"] == pytest.approx(two, rel=0.01)
    assert round_3["epsilon-left"] == pytest.approx(budget - two, rel=0.05)
    assert "budget exhausted" in round_3["reason"] and round_3["num-examples"] == 0

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds-completed"] == ROUNDS and summary["stopped-early"] is None
    site = summary["sites"]
    assert (site[first]["rounds-trained"], site[first]["stopped-round"]) == (2, 3)
    assert site[first]["stop-reason"].startswith("budget exhausted: this round would bring")
    assert site[first]["epsilon-spent"] == pytest.approx(two, rel=0.01)
    assert site[first]["epsilon-spent"] <= budget
    assert (site[first]["noise-multiplier"], site[first]["sample-rate"]) == (SIGMA, q)
    assert (site[capped]["rounds-trained"], site[capped]["stopped-round"]) == (3, 4)
    assert "at most 3 round(s) per run" in site[capped]["stop-reason"]
    assert site[capped]["clamped"] == ["num-server-rounds 5 -> 3 (site max-rounds-per-run)"]
    for other in ("Switzerland", "VA Long Beach"):
        assert site[other]["rounds-trained"] == ROUNDS and site[other]["stopped-round"] is None
