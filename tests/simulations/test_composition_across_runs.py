"""A site that keeps its ledger composes its spend over every round of every run on its data.

Marked long (skipped unless --run-long): tests/client/test_site_restart.py composes over two
runs through killed processes, tests/simulations/test_phases.py over two phases through the real
site gate, and the record-budget property over 1,000 requests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from simulations.run import run_simulation
from tests.reference_accountants import reference_pld

CONFIG = Path(__file__).resolve().parents[2] / "simulations" / "configs" / "heart-disease.toml"


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.long
def test_second_run_reports_composition_of_both_runs(tmp_path: Path) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_text(
        "".join(
            f'[site.{i}]\nepsilon-budget = 10.0\nledger = "{tmp_path}/ledger-{i}.sqlite"\n'
            for i in range(4)
        )
    )
    common = {
        "sites-file": str(sites),
        "num-server-rounds": 2,
        "target-epsilon": 2.0,
        "server-eval-max-records": 40,
    }
    results = tmp_path / "results"
    first = run_simulation(CONFIG, {**common, "run-name": "a"}, results, stream=io.StringIO())
    second = run_simulation(CONFIG, {**common, "run-name": "b"}, results, stream=io.StringIO())

    releases: dict[str, list[tuple[float, float, int]]] = {}
    for folder in (first, second):
        for record in _rounds(folder)[1:]:
            for site, m in record["sites"].items():
                releases.setdefault(site, []).append(
                    (m["noise-multiplier"], m["sample-rate"], m["steps"])
                )
    final = _rounds(second)[-1]["sites"]
    assert len(final) == 4
    for site, m in final.items():
        assert len(releases[site]) == 4  # 2 rounds x 2 runs
        assert m["epsilon-spent"] == pytest.approx(
            reference_pld(releases[site], m["delta"]), rel=0.01
        )
        # each run alone costs ~2.0; together clearly more, but less than the sum (composition)
        assert 2.2 < m["epsilon-spent"] < 4.0
    # the server evaluated on a fixed sample of 40 held-out records
    for record in _rounds(first) + _rounds(second):
        correct = record["server-eval"]["accuracy"] * 40
        assert abs(correct - round(correct)) < 1e-9
    first_final = _rounds(first)[-1]["sites"]
    assert all(first_final[s]["epsilon-spent"] <= 2.0 + 1e-6 for s in first_final)
