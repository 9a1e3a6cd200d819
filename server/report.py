"""The run's trust report: report.html (figures embedded as base64 PNG) + figures/*.png.

Made from what the run recorded: metrics.jsonl (per round) and summary.json (configuration,
per-site privacy state, final evaluation, audit, fairness); its explanation section from the
saved model and the coordinator's own held-out records (server/explanations.py). Every run writes it
when it finishes; for a finished results folder, and to compare with a non-DP baseline run:

    fedpriv-report results/<run> [--baseline results/<baseline-run>]

Over 300 lines because it writes one document, section by section, in reading order.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import fairlearn
import matplotlib
import matplotlib.pyplot as plt

from common.explain.figures import explanation_figures
from server import explanations
from server import report_figures as figures
from server.results import METRICS_FILE, SUMMARY_FILE

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"


def load_run(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rounds of metrics.jsonl, summary.json) of a finished results folder."""
    folder = Path(folder)
    missing = [f for f in (METRICS_FILE, SUMMARY_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a finished results folder: it lacks {', '.join(missing)}"
        )
    lines = (folder / METRICS_FILE).read_text().splitlines()
    rounds = [json.loads(line) for line in lines if line.strip()]
    return rounds, json.loads((folder / SUMMARY_FILE).read_text())


def run_label(summary: dict[str, Any]) -> str:
    dp = summary.get("config", {}).get("dp", True)
    return "DP" if dp else "non-DP baseline"


def write_report(folder: Path, baseline: Path | None = None) -> Path:
    """Write ``folder``/report.html and ``folder``/figures/*.png; return the HTML's path.
    ``baseline``: another finished results folder (e.g. the dp=false run) whose audit and
    fairness figures are shown next to this run's."""
    folder = Path(folder)
    rounds, summary = load_run(folder)
    runs = {run_label(summary): summary}
    if baseline is not None:
        other = load_run(Path(baseline))[1]
        label = run_label(other)
        runs[label if label not in runs else f"{label} ({other.get('run-name')})"] = other
    explained = explanations.for_report(folder, baseline, list(runs))
    drawn = {
        **explanation_figures({k: d for k, d in explained.items() if "skipped" not in d}),
        "accuracy-loss": figures.accuracy_loss(rounds),
        "epsilon": figures.epsilon_per_round(rounds, summary),
        "participation": figures.participation(rounds, summary),
        "audit": figures.audit(runs),
        "fairness": figures.fairness(runs),
    }
    drawn.setdefault("explanations", None)
    (folder / FIGURES_DIR).mkdir(exist_ok=True)
    images: dict[str, bytes] = {}
    for name, fig in drawn.items():
        if fig is None:  # nothing recorded for it: no stale figure of an earlier report either
            (folder / FIGURES_DIR / f"{name}.png").unlink(missing_ok=True)
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        images[name] = buffer.getvalue()
        (folder / FIGURES_DIR / f"{name}.png").write_bytes(images[name])
    path = folder / REPORT_FILE
    figure = _img("explanations", images["explanations"]) if "explanations" in images else ""
    section = explanations.html_section(explained, figure)
    path.write_text(_html(rounds, summary, runs, images, section), encoding="utf-8")
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        small = value != 0 and abs(value) < 0.01  # e.g. delta: keep 2 significant digits
        return f"{value:.2g}" if small else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _privacy_rows(summary: dict[str, Any], rounds: list[dict[str, Any]]) -> list[list[Any]]:
    dp = summary.get("config", {}).get("dp", True)
    rows = []
    for site in figures.site_names(rounds, summary):
        s = summary.get("sites", {}).get(site, {})
        epsilon = s.get("epsilon-spent")
        rows.append(
            [
                site,
                epsilon if dp else "inf (non-private)",
                s.get("epsilon-budget"),
                s.get("delta"),
                s.get("rounds-trained"),
                s.get("noise-multiplier"),
                s.get("sample-rate"),
                s.get("stop-reason") or "",
            ]
        )
    return rows


def _evaluation_rows(rounds: list[dict[str, Any]]) -> list[list[Any]]:
    """Per round: the federated accuracy, its DP noise, and what the sites' answers cost
    (epsilon of their validation records after it, each site's own budget)."""
    rows = []
    for r in rounds:
        fed = r.get("federated-eval") or {}
        if "eval-accuracy" not in fed:
            continue
        costs = []
        for site, m in sorted((r.get("sites") or {}).items()):
            if "eval-epsilon-spent" in m:
                costs.append(
                    f"{site} {_fmt(m['eval-epsilon-spent'])}/{_fmt(m.get('eval-epsilon-budget'))}"
                )
            elif m.get("eval-dp") == 0:
                costs.append(f"{site} exact (non-private, allowed by its policy)")
        std = fed.get("eval-accuracy-std")
        rows.append(
            [
                r.get("round"),
                fed["eval-accuracy"],
                f"+-{_fmt(std)}" if std else "exact",
                "; ".join(costs) or "-",
            ]
        )
    return rows


def _participation_rows(rounds: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for rec in rounds:
        for site, m in sorted(rec.get("sites", {}).items()):
            if "status" in m and m["status"] != "trained":
                rows.append([rec["round"], site, m["status"], m.get("reason", "")])
        rows += [[rec["round"], site, "dropped", "no reply in time"] for site in rec["dropped"]]
        rows += [[rec["round"], "", "failed", f] for f in rec.get("failures", [])]
    return rows


def _audit_rows(runs: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for label, s in runs.items():
        for site, a in sorted((s.get("audit") or {}).items()):
            theory = s.get("sites", {}).get(site, {}).get("epsilon-spent")
            for attack in ("loss", "calibrated"):
                f = a.get(attack, {})
                rows.append(
                    [
                        label,
                        site,
                        attack,
                        f.get("auc"),
                        f.get("tpr-at-1%-fpr"),
                        f.get("tpr-at-0.1%-fpr"),
                        f.get("epsilon-lower-bound"),
                        theory if s.get("config", {}).get("dp", True) else "inf (non-private)",
                        f"{a.get('members')} / {a.get('non-members')}",
                    ]
                )
    return rows


def _fairness_rows(runs: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for label, s in runs.items():
        fair = s.get("fairness")
        if not fair:
            continue
        for group, g in fair["groups"].items():
            rows.append(
                [label, group, g["records"], g["tp"], g["fp"], g["tn"], g["fn"]]
                + [g.get(m) for m in ("accuracy", "true-positive-rate", "selection-rate")]
            )
        gaps = fair["gaps"]
        rows.append([label, "gap (max - min)", "", "", "", "", ""] + list(gaps.values()))
    return rows


def _html(
    rounds: list[dict[str, Any]],
    summary: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    images: dict[str, bytes],
    explanation_section: str = "",
) -> str:
    config = summary.get("config", {})
    title = f"fedpriv report: {summary.get('run-name', '')}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p><b>Privacy:</b> {html.escape(str(summary.get('privacy', '')))}<br>"
        f"<b>Mechanism:</b> {html.escape(figures.mechanism(summary))}; "
        f"<b>accountant:</b> {html.escape(str(config.get('accountant')))}<br>"
        f"<b>Rounds:</b> {summary.get('rounds-completed')} of {summary.get('rounds-planned')}"
        + (
            f" (stopped early: {html.escape(str(summary['stopped-early']))})"
            if summary.get("stopped-early")
            else ""
        )
        + f"<br><b>Compared runs:</b> {html.escape(', '.join(runs))}</p>",
    ]
    for name, caption in (
        ("accuracy-loss", "Accuracy and loss per round"),
        ("epsilon", "Privacy spent per site"),
        ("participation", "Participation"),
    ):
        if name in images:
            parts += [f"<h2>{caption}</h2>", _img(name, images[name])]
    parts += [
        "<h2>Per-site privacy</h2>",
        _table(
            [
                "site",
                "final epsilon",
                "budget",
                "delta",
                "rounds trained",
                "sigma (last)",
                "q",
                "stopped because",
            ],
            _privacy_rows(summary, rounds),
        ),
        "<p>epsilon: the site's lifetime spend on this dataset (all runs and rounds on its "
        "ledger), composed by the accountant named above, at the site's delta.</p>",
    ]
    evaluations = _evaluation_rows(rounds)
    if evaluations:
        parts += [
            "<h2>Federated evaluation and what it cost</h2>",
            _table(
                [
                    "round",
                    "federated accuracy",
                    "DP noise (std)",
                    "epsilon of each site's validation records after it / budget",
                ],
                evaluations,
            ),
            "<p>Each site answers about its validation records with Gaussian noise (its policy's "
            "z x sensitivity on the counts), recorded in its ledger and composed over every "
            "answer; the std shown is that of the federated accuracy from the summed noise.</p>",
        ]
    reasons = _participation_rows(rounds)
    if reasons:
        parts += ["<h3>Rounds a site did not train</h3>"]
        parts += [_table(["round", "site", "status", "reason"], reasons)]
    if any(s.get("audit") for s in runs.values()):
        parts += ["<h2>Membership-inference audit</h2>"]
        if "audit" in images:
            parts.append(_img("audit", images["audit"]))
        parts += [
            _table(
                [
                    "run",
                    "site",
                    "attack",
                    "AUC",
                    "TPR @1% FPR",
                    "TPR @0.1% FPR",
                    "empirical epsilon (lower bound)",
                    "theoretical epsilon",
                    "members / non-members",
                ],
                _audit_rows(runs),
            ),
            "<p>Members: a site's training records; non-members: its held-out validation "
            "records; attacked: the final model. <i>loss</i>: loss threshold (Yeom et al. "
            "2018); <i>calibrated</i>: loss minus the run's initial model's loss (difficulty "
            "calibration, Watson et al. 2022). Empirical epsilon: max over thresholds of "
            "log((TPR-delta)/FPR) and log((1-FPR-delta)/(1-TPR)) with one-sided Clopper-Pearson "
            "bounds (95% jointly per threshold; Jagielski et al. 2020, Nasr et al. 2021). With "
            "few non-members a TPR at 0.1% FPR means at zero false positives, and the bound "
            "cannot exceed about log(n_non-members). The audit's aggregate figures are computed on "
            "the sites' records after training and are not part of the DP accounting.</p>",
        ]
    if any(s.get("fairness") for s in runs.values()):
        fair = next(s["fairness"] for s in runs.values() if s.get("fairness"))
        parts += [f"<h2>Fairness by {html.escape(fair['column'])}</h2>"]
        if "fairness" in images:
            parts.append(_img("fairness", images["fairness"]))
        parts += [
            _table(
                ["run", "group", "n", "TP", "FP", "TN", "FN"]
                + ["accuracy", "TPR", "selection rate"],
                _fairness_rows(runs),
            ),
            f"<p>Final model on the sites' validation records; positive class "
            f"'{html.escape(str(fair['positive-class']))}'. The sites sent only per-group "
            "TP/FP/TN/FN counts; the server summed them and computed the metrics with "
            "fairlearn's MetricFrame.</p>",
        ]
    parts.append(explanation_section)
    failures = (summary.get("final-evaluation") or {}).get("failures") or []
    if failures:
        parts += [
            "<h3>Final evaluation failures</h3>",
            _table(["failure"], [[f] for f in failures]),
        ]
    parts += [
        "<h2>Configuration</h2>",
        _table(["key", "value"], [[k.replace("_", "-"), v] for k, v in sorted(config.items())]),
        "<h2>Versions</h2>",
        _table(
            ["package", "version"],
            [*sorted(summary.get("versions", {}).items())]
            + [
                ["matplotlib (report)", matplotlib.__version__],
                ["fairlearn (report)", fairlearn.__version__],
            ],
        ),
        "<h2>Run</h2>",
        _table(
            ["field", "value"],
            [
                [k, v]
                for k, v in summary.items()
                if k in ("run-name", "run-id", "run-key", "model-sha256", "wall-seconds")
            ],
        ),
    ]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _img(name: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{name}' src='data:image/png;base64,{encoded}'>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a run's trust report (report.html).")
    parser.add_argument("results_dir", type=Path, help="a finished run's results folder")
    parser.add_argument(
        "--baseline", type=Path, help="results folder of a baseline run (e.g. dp=false) to compare"
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.results_dir, args.baseline)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        print(f"fedpriv-report: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
