"""End to end: a 2-round heart-disease simulation with audit and a sensitive column ends with
the trust report; the audit never claims more than the accountant's epsilon."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from server.report import FIGURES_DIR, REPORT_FILE
from simulations.run import run_simulation

CONFIG = Path(__file__).resolve().parents[2] / "simulations" / "configs" / "heart-disease.toml"
HOSPITALS = {"Cleveland", "Hungary", "Switzerland", "VA Long Beach"}
FIGURES = ("accuracy-loss", "epsilon", "participation", "audit", "fairness")


@pytest.mark.slow
def test_simulation_ends_with_report_audit_and_fairness(tmp_path: Path) -> None:
    overrides = {
        "num-server-rounds": 2,
        "local-epochs": 1,
        "audit": True,
        "sensitive-column": "sex",
        "run-name": "trust",
    }
    folder = run_simulation(CONFIG, overrides, tmp_path / "results", stream=io.StringIO())
    summary = json.loads((folder / "summary.json").read_text())

    assert set(summary["audit"]) == HOSPITALS
    for site, audit in summary["audit"].items():
        theoretical = summary["sites"][site]["epsilon-spent"]
        assert 0 < theoretical <= summary["sites"][site]["epsilon-budget"] + 1e-9
        assert audit["delta"] == summary["sites"][site]["delta"]
        for attack in ("loss", "calibrated"):
            figures = audit[attack]
            assert 0 <= figures["auc"] <= 1
            assert 0 <= figures["epsilon-lower-bound"] <= theoretical, (site, attack, figures)

    fairness = summary["fairness"]
    assert fairness["column"] == "sex" and fairness["sites-counted"] == 4
    assert set(fairness["groups"]) == {"Female", "Male"}
    # both are noisy answers (z = 3: std 3 per group cell, 3 sqrt(3) per evaluated count)
    evaluated = sum(s["eval-examples"] for s in summary["final-evaluation"]["sites"].values())
    grouped = sum(g["records"] for g in fairness["groups"].values())
    assert abs(grouped - evaluated) <= 6 * (3 * 8**0.5 + 3 * 3**0.5 * 2)
    assert summary["final-evaluation"]["failures"] == []

    for name in FIGURES:
        assert (folder / FIGURES_DIR / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    report = (folder / REPORT_FILE).read_text()
    for site in HOSPITALS:
        assert site in report
        assert f"{summary['sites'][site]['epsilon-spent']:.3f}" in report
