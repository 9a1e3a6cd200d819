"""Benchmark: what federation and DP cost in accuracy, against centralized non-DP training.

    python -m simulations.bench_utility [--tasks heart-disease rotten-tomatoes]

For each task, one run each of:
- centralized non-DP: the whole training pool in one place (``train_locally`` with dp=None),
  as many passes over it as the federation makes;
- federated non-DP (dp=false), and federated DP-SGD at target epsilon 3 and 8, through the
  Flower simulation (``simulations.run.run_simulation``), sigma calibrated per site for the run,
  delta = 0.1/n per site (< 1/n).
Accuracy is on the same held-out test set (20% of the dataset, never seen by any site).
The Markdown table is printed and written to ``<results-dir>/bench-utility.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.run import APP_DIR, run_simulation

EPSILONS = (3.0, 8.0)
TARGET_SHARE = 0.97  # federated DP at epsilon 8 / centralized non-DP accuracy


@dataclass(frozen=True)
class Task:
    """A dataset, its federated run config, and the centralized run matching it."""

    name: str
    label: str
    run: dict[str, Any]
    central_epochs: int
    num_sites: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


TASKS = {
    "heart-disease": Task(
        name="heart-disease",
        label="heart-disease, MLP, 4 hospitals (natural split)",
        run={
            "dataset": "heart-disease",
            "partitioner": "natural",
            "partition-by": "dataset",
            "model": "mlp",
            "num-server-rounds": 5,
            "local-epochs": 2,
            "batch-size": 32,
            "learning-rate": 0.1,
            "max-grad-norm": 1.0,
            "min-train-nodes": 4,
            "min-evaluate-nodes": 4,
        },
        central_epochs=10,  # 5 rounds x 2 local epochs
    ),
    "rotten-tomatoes": Task(
        name="rotten-tomatoes",
        label="rotten-tomatoes, MiniLM-LoRA (r=8), 4 sites (iid)",
        run={
            "dataset": "rotten-tomatoes",
            "partitioner": "iid",
            "validation-fraction": 0.1,
            "model": "text",
            "pooler-init": "identity",
            "lora": True,
            "max-length": 32,
            "num-server-rounds": 4,
            "local-steps": 8,
            "batch-size": 128,
            "optimizer": "adam",
            "learning-rate": 0.0002,
            "head-learning-rate": 0.03,
            "max-grad-norm": 1.0,
            "min-train-nodes": 4,
            "min-evaluate-nodes": 4,
        },
        central_epochs=2,
    ),
}


def _settings(run: dict[str, Any]):  # noqa: ANN202 - RunSettings, imported lazily
    from common.config import RunSettings

    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    return RunSettings.from_run_config({**defaults["config"], **run})


def centralized_accuracy(task: Task) -> tuple[float, float]:
    """(test accuracy, seconds) of non-DP training on the whole pool, same model and optimizer."""
    from client.evaluation import evaluate
    from client.training import train_locally
    from common.data.registry import load_dataset
    from common.task import build_model, pick_device, to_tensors

    settings = _settings(task.run)
    pool, test = load_dataset(settings.dataset, settings.seed)
    device = pick_device()
    model, tokenizer = build_model(settings, pool, device)
    train, _ = to_tensors(pool, tokenizer, settings.max_length)
    result = train_locally(
        model,
        train,
        batch_size=settings.batch_size,
        epochs=task.central_epochs,
        learning_rate=settings.learning_rate,
        dp=None,
        device=device,
        seed=settings.seed,
        optimizer=settings.optimizer,
        head_learning_rate=settings.head_learning_rate or None,
    )
    held_out, _ = to_tensors(test, tokenizer, settings.max_length)
    return evaluate(model, held_out, device=device).accuracy, result.seconds


def federated_accuracy(task: Task, results_dir: Path, epsilon: float | None) -> dict[str, Any]:
    """Server-side test accuracy of one simulated run, and the sites' final epsilons."""
    run = dict(task.run)
    run |= {"dp": False} if epsilon is None else {"dp": True, "target-epsilon": epsilon}
    tag = "non-dp" if epsilon is None else f"eps{epsilon:g}"
    run["run-name"] = f"utility-{task.name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    folder = run_simulation(None, run, results_dir, num_supernodes=task.num_sites)
    summary = json.loads((folder / "summary.json").read_text())
    final = summary["final-round"]
    sites = final.get("sites", {})
    return {
        "accuracy": final["server-eval"]["accuracy"],
        "epsilons": [s.get("epsilon-spent") for s in sites.values() if "epsilon-spent" in s],
        "deltas": [s.get("delta") for s in sites.values() if "delta" in s],
        "seconds": time.perf_counter() - started,
        "folder": str(folder),
    }


def table(task: Task, central: float, federated: dict[str, dict[str, Any]]) -> str:
    rows = [
        f"#### {task.label}\n",
        "| setting | test accuracy | / centralized | sites' final epsilon (delta) |",
        "|---|---|---|---|",
        f"| centralized, non-DP | {central:.4f} | 1.000 | none |",
    ]
    for tag, got in federated.items():
        eps = got["epsilons"]
        if tag == "non-dp" or not eps:
            privacy = "none (non-private)"
        else:
            delta = max(got["deltas"])
            privacy = f"{min(eps):.2f}-{max(eps):.2f} (delta <= {delta:.1e})"
        name = "federated, non-DP" if tag == "non-dp" else f"federated, DP target epsilon {tag}"
        rows.append(
            f"| {name} | {got['accuracy']:.4f} | {got['accuracy'] / central:.3f} | {privacy} |"
        )
    share = federated["8"]["accuracy"] / central if "8" in federated else float("nan")
    met = "met" if share >= TARGET_SHARE else "**not met**"
    rows.append(
        f"\nFederated DP at epsilon 8 reaches {share:.3f} of centralized non-DP accuracy "
        f"(target >= {TARGET_SHARE}: {met})."
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "bench-utility.md"
    report = "### Utility: centralized vs federated vs federated DP\n\n"
    for name in args.tasks:
        task = TASKS[name]
        central, seconds = centralized_accuracy(task)
        print(f"{name}: centralized non-DP accuracy {central:.4f} ({seconds:.0f} s)", flush=True)
        federated = {}
        for epsilon in (None, *EPSILONS):
            tag = "non-dp" if epsilon is None else f"{epsilon:g}"
            federated[tag] = federated_accuracy(task, args.results_dir, epsilon)
            got = federated[tag]
            print(f"{name}: federated {tag}: {got['accuracy']:.4f} ({got['seconds']:.0f} s)")
        report += table(task, central, federated) + "\n"
        out.write_text(report)  # after each task: a later failure keeps what was measured
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
