"""server/report.py: the report of a results folder written the way a run writes it."""

from __future__ import annotations

import base64
import re
from dataclasses import asdict
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image

from common.config import RunSettings
from server.fairness import group_metrics
from server.records import RoundRecord
from server.report import FIGURES_DIR, REPORT_FILE, main, write_report
from server.results import RunResults
from server.summary import site_summaries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _site(status: str, spent: float | None, budget: float = 8.0, reason: str = "") -> dict:
    return {
        "status": status,
        "reason": reason,
        "clamped": [],
        "epsilon-spent": spent,
        "epsilon-budget": budget,
        "epsilon-left": budget - (spent or 0.0),
        "delta": 5e-4,
        "noise-multiplier": 1.3 if status == "trained" else 0.0,
        "sample-rate": 0.15,
        "eval-loss": 0.6,
        "eval-accuracy": 0.7,
    }


def _audit(auc: float, bound: float) -> dict:
    figures = {
        "auc": auc,
        "tpr-at-1%-fpr": 0.05,
        "tpr-at-0.1%-fpr": 0.0,
        "epsilon-lower-bound": bound,
    }
    return {"members": 190, "non-members": 48, "delta": 5e-4, "confidence": 0.95} | {
        "loss": figures,
        "calibrated": figures,
    }


def _results_folder(root: Path, name: str, dp: bool) -> Path:
    """A results folder written by the run's own writers (RunResults, RoundRecord.to_json,
    site_summaries): Cleveland trains twice; Hungary runs out of budget in round 2; VA Long
    Beach drops out in round 2."""
    spent = (lambda e: e) if dp else (lambda e: float("inf"))
    rounds = {
        0: RoundRecord(0, server_eval={"loss": 0.75, "accuracy": 0.4}),
        1: RoundRecord(
            1,
            sites={
                "Cleveland": _site("trained", spent(3.1)),
                "Hungary": _site("trained", spent(2.9), budget=3.0),
                "VA Long Beach": _site("trained", spent(3.3)),
            },
            train={"train-loss": 0.66},
            federated_eval={"eval-loss": 0.65, "eval-accuracy": 0.6},
            server_eval={"loss": 0.66, "accuracy": 0.6},
            trained_sites=3,
        ),
        2: RoundRecord(
            2,
            sites={
                "Cleveland": _site("trained", spent(7.912)),
                "Hungary": _site(
                    "budget exhausted", spent(2.9), budget=3.0, reason="would spend 5.1 > 3.0"
                ),
            },
            dropped=["VA Long Beach"],
            failures=["VA Long Beach: no reply within the round timeout (dropped out)"],
            train={"train-loss": 0.6},
            federated_eval={"eval-loss": 0.6, "eval-accuracy": 0.7},
            server_eval={"loss": 0.61, "accuracy": 0.72},
            trained_sites=1,
        ),
    }
    results = RunResults(root, name)
    results.write_rounds([rounds[r].to_json(dp) for r in sorted(rounds)])
    counts = {"Female": {"tp": 6, "fp": 0, "tn": 21, "fn": 4}}
    counts["Male"] = {"tp": 34, "fp": 6, "tn": 39, "fn": 38} if dp else dict.fromkeys(counts, 0)
    if not dp:
        counts["Male"] = {"tp": 50, "fp": 9, "tn": 36, "fn": 22}
    summary = {
        "run-name": name,
        "rounds-completed": 2,
        "rounds-planned": 2,
        "privacy": "sample-level DP-SGD (Opacus) at each site" if dp else "NON-PRIVATE",
        "config": asdict(RunSettings(dp=dp, num_server_rounds=2)),
        "sites": site_summaries(rounds),
        "versions": {"flwr": "1.42.0", "opacus": "1.6.0"},
        "audit": {"Cleveland": _audit(0.52, 0.0), "Hungary": _audit(0.55, 0.1)}
        if dp
        else {"Cleveland": _audit(0.71, 1.2), "Hungary": _audit(0.69, 0.9)},
        "fairness": group_metrics(counts, "sex", "disease") | {"sites-counted": 3},
        "final-evaluation": {"sites": {}, "failures": []},
    }
    return results.finish(summary)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    with Image.open(path) as image:
        image.verify()
    assert matplotlib.image.imread(path).shape[0] > 100


def test_report_has_every_figure_and_names_every_site_with_its_epsilon_and_budget(tmp_path):
    dp = _results_folder(tmp_path, "dp", dp=True)
    baseline = _results_folder(tmp_path, "non-dp", dp=False)
    report = write_report(dp, baseline=baseline)
    assert report == dp / REPORT_FILE

    names = ("accuracy-loss", "epsilon", "participation", "audit", "fairness")
    for name in names:
        _check_png(dp / FIGURES_DIR / f"{name}.png")
    text = report.read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(embedded) == len(names)
    for data, name in zip(embedded, names, strict=True):  # the same images as the files
        assert base64.b64decode(data) == (dp / FIGURES_DIR / f"{name}.png").read_bytes()

    rows = re.findall(r"<tr>(.*?)</tr>", text)
    for site, epsilon, budget in (
        ("Cleveland", "7.912", "8.000"),
        ("Hungary", "2.900", "3.000"),
        ("VA Long Beach", "3.300", "8.000"),
    ):
        row = next(r for r in rows if r.startswith(f"<td>{site}</td>"))
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[1:4] == [epsilon, budget, "0.0005"], cells  # epsilon, budget, delta
    assert "would spend 5.1 &gt; 3.0" in text  # the refusal's reason, escaped
    assert "no reply in time" in text and "pld" in text
    assert "non-DP baseline" in text and "Female" in text
    assert "1.6.0" in text  # versions


def test_report_of_a_non_private_run_says_so_and_skips_absent_sections(tmp_path):
    folder = _results_folder(tmp_path, "plain", dp=False)
    for key in ("audit", "fairness"):
        (folder / "summary.json").write_text(
            (folder / "summary.json").read_text().replace(f'"{key}":', f'"x-{key}":')
        )
    report = write_report(folder)
    assert sorted(p.name for p in (folder / FIGURES_DIR).iterdir()) == [
        "accuracy-loss.png",
        "participation.png",
    ]  # no finite epsilon to plot, no audit, no fairness
    assert "inf (non-private)" in report.read_text()


def test_cli_writes_the_report_and_refuses_an_unfinished_folder(tmp_path, capsys):
    folder = _results_folder(tmp_path, "dp", dp=True)
    assert main([str(folder)]) == 0
    assert (folder / REPORT_FILE).is_file()
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a finished results folder" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
