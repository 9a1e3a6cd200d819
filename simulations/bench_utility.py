"""Benchmark: what federation and DP cost, against centralized non-DP training.

    python -m simulations.bench_utility [--tasks rotten-tomatoes-head] [--repeats 3]
        [--epsilons 3 8] [--no-reference]

For each task, one run each of:
- centralized non-DP with the task's own method on the whole training pool (``train_locally``
  with dp=None; head mode on the frozen encoder's cached features), as many passes over it as
  the federation makes;
- for text tasks with a ``reference``, the strong centralized reference: full fine-tuning of
  the same encoder for one epoch (the ratio column divides by it);
- federated non-DP (dp=false), and federated DP-SGD at each target epsilon (``--repeats`` runs
  each, differing in the DP noise; mean +- standard deviation), through the Flower simulation
  (``simulations.run.run_simulation``), sigma calibrated per site for the run, delta = 0.1/n.
Scores are on the same held-out test set (never seen by any site): accuracy, or entity
micro-F1 for NER. Each row has its wall time. The Markdown table is printed and written to
``<results-dir>/bench-utility.md``.

Over 300 lines because a benchmark script keeps its rows (each a full run recipe), measurement
and table together.
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


@dataclass(frozen=True)
class Task:
    """A dataset, its federated run config, and the centralized run matching it."""

    name: str
    label: str
    run: dict[str, Any]
    central_epochs: int
    num_sites: int = 4
    extra: dict[str, Any] = field(default_factory=dict)
    # the strong centralized reference, when it is another method than ``run`` (text: full
    # fine-tuning), as run-config overrides, and its epochs
    reference: dict[str, Any] = field(default_factory=dict)
    reference_epochs: int = 1


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
            "finetune": "lora",
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
    # the demo's recipe (simulations/configs/demo.toml): a DP head on frozen MiniLM features
    "rotten-tomatoes-head": Task(
        name="rotten-tomatoes-head",
        label="rotten-tomatoes, frozen MiniLM (mean + L2) + DP head, 4 sites (Dirichlet 0.5)",
        run={
            "dataset": "rotten-tomatoes",
            "partitioner": "dirichlet",
            "dirichlet-alpha": 0.5,
            "validation-fraction": 0.1,
            "model": "text",
            "finetune": "head",
            "max-length": 64,
            "num-server-rounds": 20,
            "local-steps": 10,
            "batch-size": 1024,
            "optimizer": "adam",
            "learning-rate": 0.03,
            "max-grad-norm": 1.0,
            "evaluate-with-train": True,
            "min-train-nodes": 4,
            "min-evaluate-nodes": 4,
        },
        central_epochs=20,
        reference={
            "finetune": "full",
            "batch-size": 32,
            "learning-rate": 5e-5,
            "optimizer": "adam",
        },
        reference_epochs=1,
    ),
    "wnut16-ner-head": Task(
        name="wnut16-ner-head",
        label="wnut16-ner, frozen MiniLM token features + DP token head (O weighs 0.1), 4 sites",
        run={
            "dataset": "wnut16-ner",
            "partitioner": "iid",
            "validation-fraction": 0.1,
            "model": "text",
            "finetune": "head",
            "max-length": 64,
            "outside-tag-weight": 0.1,
            "num-server-rounds": 20,
            "local-steps": 10,
            "batch-size": 256,
            "optimizer": "adam",
            "learning-rate": 0.03,
            "max-grad-norm": 1.0,
            "evaluate-with-train": True,
            "min-train-nodes": 4,
            "min-evaluate-nodes": 4,
        },
        central_epochs=20,
    ),
}


def _settings(run: dict[str, Any]):  # noqa: ANN202 - RunSettings, imported lazily
    from common.config import RunSettings

    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    return RunSettings.from_run_config({**defaults["config"], **run})


def centralized_accuracy(
    task: Task, overrides: dict[str, Any] | None = None, epochs: int | None = None
) -> tuple[float, float]:
    """(test score, seconds) of non-DP training on the whole pool: the task's own method, or
    the method ``overrides`` name (the strong reference). Head mode trains the head on the
    frozen encoder's cached features, as the sites do. Score: accuracy, entity micro-F1 (NER)."""
    from client.training import train_locally
    from common.data.registry import load_dataset
    from common.entities import seqeval_scores
    from common.evaluation import evaluate
    from common.task import build_model, head_features, pick_device, to_tensors

    settings = _settings(task.run | (overrides or {}))
    pool, test = load_dataset(settings.dataset, settings.seed)
    device = pick_device()
    started = time.perf_counter()
    model, tokenizer = build_model(settings, pool, device)
    train, _ = to_tensors(pool, tokenizer, settings.max_length)
    held_out, _ = to_tensors(test, tokenizer, settings.max_length)
    if settings.model == "text" and settings.finetune_mode == "head":
        if pool.kind == "tokens" and settings.outside_tag_weight != 1.0:
            train.tag_weights = [  # type: ignore[attr-defined]
                settings.outside_tag_weight if n == "O" else 1.0 for n in pool.class_names
            ]
        head, train = head_features(settings, model, train, device)
        model, held_out = head, head_features(settings, model, held_out, device)[1]
    train_locally(
        model,
        train,
        batch_size=settings.batch_size,
        epochs=epochs or task.central_epochs,
        learning_rate=settings.learning_rate,
        dp=None,
        device=device,
        seed=settings.seed,
        optimizer=settings.optimizer,
        head_learning_rate=settings.head_learning_rate or None,
        max_physical_batch_size=settings.max_physical_batch_size or None,
    )
    tags = test.class_names if test.kind == "tokens" else None
    result = evaluate(model, held_out, device=device, tag_names=tags)
    seconds = time.perf_counter() - started
    if tags is not None:
        assert result.gold_tags is not None and result.predicted_tags is not None
        return seqeval_scores(result.gold_tags, result.predicted_tags)["entity-f1"], seconds
    return result.accuracy, seconds


def federated_accuracy(
    task: Task, results_dir: Path, epsilon: float | None, repeat: int = 0
) -> dict[str, Any]:
    """Server-side test score (accuracy; NER: entity micro-F1) of one simulated run, and the
    sites' final epsilons. Repeats differ in the DP noise only (drawn fresh from the OS)."""
    run = dict(task.run)
    run |= {"dp": False} if epsilon is None else {"dp": True, "target-epsilon": epsilon}
    tag = "non-dp" if epsilon is None else f"eps{epsilon:g}"
    run["run-name"] = f"utility-{task.name}-{tag}-{repeat}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    folder = run_simulation(None, run, results_dir, num_supernodes=task.num_sites)
    summary = json.loads((folder / "summary.json").read_text())
    final = summary["final-round"]
    sites = final.get("sites", {})
    server = final["server-eval"]
    return {
        "accuracy": server.get("entity-f1", server["accuracy"]),
        "epsilons": [s.get("epsilon-spent") for s in sites.values() if "epsilon-spent" in s],
        "deltas": [s.get("delta") for s in sites.values() if "delta" in s],
        "seconds": time.perf_counter() - started,
        "folder": str(folder),
    }


def _mean_spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} +- {spread:.4f} ({len(values)} runs)"


def table(
    task: Task,
    central: tuple[float, float],
    federated: dict[str, list[dict[str, Any]]],
    reference: tuple[float, float] | None = None,
) -> str:
    """One Markdown table: every row's score, its ratio to the strong reference (or the
    centralized run of the same method), the sites' epsilon, and wall time."""
    score = "entity micro-F1" if "ner" in task.name else "test accuracy"
    ref_score = (reference or central)[0]
    rows = [
        f"#### {task.label}\n",
        f"| setting | {score} | / centralized reference | sites' final epsilon (delta) | wall s |",
        "|---|---|---|---|---|",
    ]
    if reference is not None:
        rows.append(
            f"| centralized, non-DP, full fine-tuning ({task.reference_epochs} epoch) "
            f"(reference) | {reference[0]:.4f} | 1.000 | none | {reference[1]:.0f} |"
        )
    rows.append(
        f"| centralized, non-DP, same method | {central[0]:.4f} | "
        f"{central[0] / ref_score:.3f} | none | {central[1]:.0f} |"
    )
    for tag, runs in federated.items():
        scores = [r["accuracy"] for r in runs]
        eps = [e for r in runs for e in r["epsilons"]]
        if tag == "non-dp" or not eps:
            privacy = "none (non-private)"
        else:
            delta = max(d for r in runs for d in r["deltas"])
            privacy = f"{min(eps):.2f}-{max(eps):.2f} (delta <= {delta:.1e})"
        name = "federated, non-DP" if tag == "non-dp" else f"federated, DP target epsilon {tag}"
        mean = sum(scores) / len(scores)
        seconds = sum(r["seconds"] for r in runs) / len(runs)
        rows.append(
            f"| {name} | {_mean_spread(scores)} | {mean / ref_score:.3f} | {privacy} | "
            f"{seconds:.0f} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per DP row (mean, spread)")
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS), help="DP rows")
    parser.add_argument("--no-reference", action="store_true", help="skip full fine-tuning")
    args = parser.parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "bench-utility.md"
    report = "### Utility: centralized vs federated vs federated DP\n\n"
    for name in args.tasks:
        task = TASKS[name]
        central = centralized_accuracy(task)
        print(f"{name}: centralized non-DP {central[0]:.4f} ({central[1]:.0f} s)", flush=True)
        reference = None
        if task.reference and not args.no_reference:
            reference = centralized_accuracy(task, task.reference, task.reference_epochs)
            print(f"{name}: reference {reference[0]:.4f} ({reference[1]:.0f} s)", flush=True)
        federated: dict[str, list[dict[str, Any]]] = {}
        for epsilon in (None, *args.epsilons):
            tag = "non-dp" if epsilon is None else f"{epsilon:g}"
            repeats = 1 if epsilon is None else args.repeats
            federated[tag] = [
                federated_accuracy(task, args.results_dir, epsilon, i) for i in range(repeats)
            ]
            for got in federated[tag]:
                print(f"{name}: federated {tag}: {got['accuracy']:.4f} ({got['seconds']:.0f} s)")
        report += table(task, central, federated, reference) + "\n"
        out.write_text(report)  # after each task: a later failure keeps what was measured
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
