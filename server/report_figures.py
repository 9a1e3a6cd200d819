"""The report's figures, drawn only from what a run recorded (metrics.jsonl rounds, summary.json).

Each function takes the recorded rounds and/or summary and returns a matplotlib Figure (Agg
backend: no display needed), or None when the run recorded nothing for it.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Rounds = list[dict[str, Any]]
Summary = dict[str, Any]

# participation states, in legend order, with their colours
STATES = {
    "trained": "#2ca02c",
    "budget exhausted": "#d62728",
    "round limit": "#ff7f0e",
    "dropped": "#7f7f7f",
    "rejected": "#9467bd",
    "invalid request": "#8c564b",
    "non-private refused": "#e377c2",
    "failed": "#000000",
    "not asked": "#f0f0f0",
}


def site_names(rounds: Rounds, summary: Summary) -> list[str]:
    """Every site the run heard of: in the summary, in any round's records or drop list."""
    names = set(summary.get("sites", {}))
    for rec in rounds:
        names |= set(rec.get("sites", {})) | set(rec.get("dropped", []))
    return sorted(names)


def accuracy_loss(rounds: Rounds) -> Figure | None:
    """Accuracy and loss per round: federated (sites' validation records) and server-side."""
    series = {
        "accuracy": {
            "federated": ("federated-eval", "eval-accuracy"),
            "server-side": ("server-eval", "accuracy"),
        },
        "loss": {
            "federated": ("federated-eval", "eval-loss"),
            "server-side": ("server-eval", "loss"),
            "training (sites' mean)": ("train", "train-loss"),
        },
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn = False
    for ax, (quantity, lines) in zip(axes, series.items(), strict=True):
        for label, (section, key) in lines.items():
            points = [
                (r["round"], r[section][key])
                for r in rounds
                if r.get(section) and r[section].get(key) is not None
            ]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker="o", label=label)
                drawn = True
        ax.set(xlabel="round", ylabel=quantity, title=f"{quantity} per round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig if drawn else _close(fig)


def epsilon_per_round(rounds: Rounds, summary: Summary) -> Figure | None:
    """Each site's cumulative (lifetime) epsilon after each round, its budget dashed."""
    config = summary.get("config", {})
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plotted = False
    for i, site in enumerate(site_names(rounds, summary)):
        points = [
            (r["round"], r["sites"][site]["epsilon-spent"])
            for r in rounds
            if site in r.get("sites", {})
            and "status" in r["sites"][site]
            and r["sites"][site].get("epsilon-spent") is not None
        ]
        entry = summary.get("sites", {}).get(site, {})
        colour = colours[i % len(colours)]
        if points:
            x, y = zip(*points, strict=True)
            delta = entry.get("delta")
            label = f"{site} (delta={delta:.2g})" if delta else site
            ax.plot(x, y, marker="o", color=colour, label=label)
            plotted = True
        if entry.get("epsilon-budget"):
            ax.axhline(entry["epsilon-budget"], color=colour, linestyle="--", linewidth=1)
    if not plotted:  # a non-private run: no finite epsilon
        return _close(fig)
    ax.set(
        xlabel="round",
        ylabel="epsilon spent (lifetime, this dataset)",
        title=(
            f"Cumulative epsilon per site (dashed: budget)\naccountant: {config.get('accountant')}"
            f"; mechanism: {mechanism(summary)}"
        ),
    )
    ax.title.set_fontsize(9)
    # spend against budget: an axis from 0 shows how much is left; headroom shows the budget
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mechanism(summary: Summary) -> str:
    """The DP mechanism in words, from the run's recorded configuration."""
    config = summary.get("config", {})
    if not config.get("dp", True):
        return "none (non-private baseline)"
    clip = config.get("max_grad_norm")
    return f"sample-level DP-SGD (Opacus): Poisson-subsampled Gaussian, clip C={clip}"


def participation_state(rec: dict[str, Any], site: str) -> str:
    """What a site did in one recorded round (a key of STATES)."""
    entry = rec.get("sites", {}).get(site, {})
    if "status" in entry:
        return entry["status"] if entry["status"] in STATES else "failed"
    if site in rec.get("dropped", []):
        return "dropped"
    if any(f.startswith(f"{site}:") for f in rec.get("failures", [])):
        return "failed"
    return "not asked"


def participation(rounds: Rounds, summary: Summary) -> Figure | None:
    """Grid site x round: trained, or why not (budget, round limit, dropped, rejected, ...)."""
    trained_rounds = [r for r in rounds if r["round"] > 0]
    sites = site_names(rounds, summary)
    if not trained_rounds or not sites:
        return None
    names = list(STATES)
    grid = np.array(
        [[names.index(participation_state(r, s)) for r in trained_rounds] for s in sites]
    )
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(trained_rounds) + 3), 0.5 * len(sites) + 2))
    ax.imshow(grid, cmap=ListedColormap(list(STATES.values())), vmin=0, vmax=len(names) - 1)
    ax.set_xticks(range(len(trained_rounds)), [str(r["round"]) for r in trained_rounds])
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xticks(np.arange(-0.5, len(trained_rounds)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(sites)), minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="round", title="Participation per round")
    used = sorted(set(grid.ravel()))
    ax.legend(
        handles=[Patch(color=STATES[names[i]], label=names[i]) for i in used],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def audit(runs: dict[str, Summary]) -> Figure | None:
    """Per site: empirical epsilon lower bounds of both attacks next to the theoretical epsilon,
    and the attacks' AUC, for each run (e.g. DP and the non-DP baseline)."""
    runs = {label: s for label, s in runs.items() if s.get("audit")}
    if not runs:
        return None
    sites = sorted({site for s in runs.values() for site in s["audit"]})
    bars: list[tuple[str, list[float], list[float]]] = []  # label, eps values, auc values
    for label, s in runs.items():
        for attack in ("loss", "calibrated"):
            eps = [_get(s["audit"], site, attack, "epsilon-lower-bound") for site in sites]
            auc = [_get(s["audit"], site, attack, "auc") for site in sites]
            bars.append((f"{label}: {attack} attack", eps, auc))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / (len(bars) + 1)
    x = np.arange(len(sites))
    for i, (label, eps, auc) in enumerate(bars):
        left.bar(x + i * width, eps, width, label=f"{label}: empirical lower bound")
        right.bar(x + i * width, auc, width, label=label)
    for label, s in runs.items():
        theory = [s.get("sites", {}).get(site, {}).get("epsilon-spent") for site in sites]
        if any(t is not None for t in theory):
            left.bar(
                x + len(bars) * width,
                [np.nan if t is None else t for t in theory],
                width,
                color="black",
                alpha=0.7,
                label=f"{label}: theoretical epsilon (accountant)",
            )
    for ax in (left, right):
        ax.set_xticks(x + width * len(bars) / 2, sites, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    tallest = max((b.get_height() for b in left.patches if np.isfinite(b.get_height())), default=0)
    left.set_ylim(0, max(tallest, 0.5) * 1.8)  # room for the legend above the bars
    confidence = next(iter(next(iter(runs.values()))["audit"].values()), {}).get("confidence")
    left.set(ylabel="epsilon", title=f"Membership-inference audit: epsilon ({confidence:.0%} CP)")
    right.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    right.set(ylabel="AUC", ylim=(0, 1), title="Attack AUC (0.5 = guessing)")
    fig.tight_layout()
    return fig


def fairness(runs: dict[str, Summary]) -> Figure | None:
    """Per-group accuracy, TPR and selection rate of the final model, one bar per run."""
    runs = {label: s for label, s in runs.items() if s.get("fairness")}
    if not runs:
        return None
    metrics = ("accuracy", "true-positive-rate", "selection-rate")
    groups = sorted({g for s in runs.values() for g in s["fairness"]["groups"]})
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 3.8), sharey=True)
    width = 0.8 / len(runs)
    x = np.arange(len(groups))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, (label, s) in enumerate(runs.items()):
            values = [s["fairness"]["groups"].get(g, {}).get(metric) for g in groups]
            gap = s["fairness"]["gaps"].get(metric)
            ax.bar(
                x + i * width,
                [np.nan if v is None else v for v in values],
                width,
                label=f"{label} (gap {gap:.3f})" if gap is not None else label,
            )
        sizes = [
            next(
                s["fairness"]["groups"][g]["records"]
                for s in runs.values()
                if g in s["fairness"]["groups"]
            )
            for g in groups
        ]
        ax.set_xticks(
            x + width * (len(runs) - 1) / 2,
            [f"{g}\n(n={n})" for g, n in zip(groups, sizes, strict=True)],
        )
        ax.set(title=metric, ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    column = next(iter(runs.values()))["fairness"]["column"]
    fig.suptitle(f"Final model per group of '{column}' (summed site counts)", fontsize=10)
    fig.tight_layout()
    return fig


def _get(audits: dict[str, Any], site: str, attack: str, figure: str) -> float:
    value = audits.get(site, {}).get(attack, {}).get(figure)
    return np.nan if value is None else float(value)


def _close(fig: Figure) -> None:
    plt.close(fig)
    return None
