"""Benchmark: a round's wall time in a real deployment vs the sites' local training time,
through the site service vs the old per-message path.

    python -m simulations.bench_deployment [--rounds 3] [--results-dir results]
        [--case tabular|text|all] [--path service|per-message|both]

Starts a TLS SuperLink with SuperNode authentication and 3 sites on 127.0.0.1
(simulations/local_deployment.py), runs a tabular case (heart-disease MLP) and a MiniLM-LoRA
case (rotten-tomatoes), and prints a Markdown table per case and path: round wall time at the
server, the slowest site's local training time, and the rest (overhead: process start, imports,
model load, transport, evaluation). Paths: ``service`` — each site's ``fedpriv-site serve``
keeps data and model in memory, the ClientApp only forwards (the deployment fedpriv ships);
``per-message`` — the old path, each message's fresh ClientApp process loads torch, the data
and the model itself (simulations/bench_inprocess_app.py, submitted as its own FAB). Both run
in the same invocation, one after the other; the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from client.site_data import load_site_data
from common.config import RunSettings, SiteSettings
from common.data.assets import fetch
from simulations.local_deployment import APP_DIR, LocalFederation

SITES = ("site-a", "site-b", "site-c")
CASES: dict[str, dict[str, Any]] = {
    "tabular (heart-disease MLP)": {
        "dataset": "heart-disease",
        "model": "mlp",
        "local-epochs": 2,
    },
    "MiniLM-LoRA (rotten-tomatoes)": {
        "dataset": "rotten-tomatoes",
        "partitioner": "iid",
        "model": "text",
        "finetune": "lora",
        "pooler-init": "identity",
        "max-length": 32,
        "local-steps": 8,
        "batch-size": 32,
        "optimizer": "adam",
        "learning-rate": 2e-4,
        "head-learning-rate": 0.03,
        "server-eval-max-records": 200,
    },
}


def _site_files(work: Path, case: dict[str, Any], max_records: int = 600) -> list[Path]:
    """Each site's own data file: its partition of the case's dataset (text or tabular)."""
    settings = RunSettings.from_run_config(
        {k: v for k, v in case.items() if k in ("dataset", "partitioner")}
    )
    files = []
    for partition, name in enumerate(SITES):
        records = load_site_data(settings, SiteSettings(), partition, 4).train
        if len(records) > max_records:
            records = records.subset(list(range(max_records)))
        if records.kind == "text":
            frame = pd.DataFrame({"text": records.texts})
        else:
            frame = pd.DataFrame(records.features, columns=records.feature_names)
        frame["label"] = [records.class_names[i] for i in records.labels]
        path = work / f"{name}-{settings.dataset}.csv"
        frame.to_csv(path, index=False)
        files.append(path)
    return files


PATHS = ("service", "per-message")


def _per_message_app(work: Path) -> Path:
    """A copy of the app whose ClientApp is the old in-process one (its own FAB)."""
    app = work / "per-message-app"
    shutil.copytree(
        APP_DIR,
        app,
        ignore=shutil.ignore_patterns(".*", "results", "tests", "docs", "__pycache__", "*.md"),
    )
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    old = 'clientapp = "client.app:app"'
    assert old in text, "pyproject.toml no longer names client.app:app"
    pyproject.write_text(text.replace(old, 'clientapp = "simulations.bench_inprocess_app:app"'))
    (app / "README.md").write_text("fedpriv (benchmark copy)\n")
    return app


def run_case(
    label: str, case: dict[str, Any], rounds: int, results: Path, path: str = "service"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-") as tmp:
        work = Path(tmp)
        files = _site_files(work, case)
        app = APP_DIR if path == "service" else _per_message_app(work)
        with LocalFederation(work) as fed:
            for name, data in zip(SITES, files, strict=True):
                policy = work / f"{name}.toml"
                text = 'text-column = "text"\n' if case["model"] == "text" else ""
                policy.write_text(
                    f'name = "{name}"\nepsilon-budget = 100.0\nledger = "{work}/{name}.sqlite"\n'
                    f'data-file = "{data}"\nlabel-column = "label"\n{text}'
                )
                if path == "service":
                    fed.add_site(name, policy, fed.register(name))
                else:
                    fed.start_supernode(name, {"policy-file": str(policy)}, fed.register(name))
            fed.wait_online(len(SITES))
            run_name = f"bench-{case['model']}-{path}-{time.strftime('%H%M%S')}"
            run_config = case | {
                "num-server-rounds": rounds,
                "min-train-nodes": len(SITES),
                "min-evaluate-nodes": len(SITES),
                "results-dir": str(results.resolve()),
                "run-name": run_name,
            }
            started = time.monotonic()
            run_id = fed.submit(run_config, app=app)
            total = time.monotonic() - started
            status = fed.run_status(run_id)["status"]
            if status != "finished:completed":  # keep the logs: the work folder is deleted
                logs = results / f"{run_name}-logs"
                logs.mkdir(parents=True, exist_ok=True)
                for log in work.glob("*.log"):
                    shutil.copy(log, logs / log.name)
                raise RuntimeError(f"{label}: run ended {status}; logs in {logs}")
    lines = (results / run_name / "metrics.jsonl").read_text().splitlines()
    per_round = []
    for record in (json.loads(line) for line in lines[1:]):
        train = max(m["train-seconds"] for m in record["sites"].values() if "train-seconds" in m)
        per_round.append((record["round"], record["seconds"], train))
    return {"case": f"{label}, {path}", "rounds": per_round, "total": total}


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"| {r} | {wall:.1f} | {train:.2f} | {wall - train:.1f} | {train / wall:.1%} |"
        for r, wall, train in result["rounds"]
    ]
    wall = statistics.mean(w for _, w, _ in result["rounds"])
    train = statistics.mean(t for _, _, t in result["rounds"])
    return "\n".join(
        [
            f"### {result['case']}",
            "",
            "| round | round wall time (s) | slowest site's local training (s) | overhead (s) "
            "| training share |",
            "|---|---|---|---|---|",
            *rows,
            f"| mean | {wall:.1f} | {train:.2f} | {wall - train:.1f} | {train / wall:.1%} |",
            "",
            f"Whole run including ServerApp start and round 0: {result['total']:.1f} s.",
            "",
        ]
    )


def comparison(results: list[dict[str, Any]]) -> str:
    """Service vs per-message, per case: mean round wall time and the share outside training."""
    rows = ["| case | path | mean round (s) | outside training (s) | share outside |"]
    rows.append("|---|---|---|---|---|")
    for result in results:
        wall = statistics.mean(w for _, w, _ in result["rounds"][1:] or result["rounds"])
        train = statistics.mean(t for _, _, t in result["rounds"][1:] or result["rounds"])
        case, path = result["case"].rsplit(", ", 1)
        rows.append(
            f"| {case} | {path} | {wall:.1f} | {wall - train:.1f} | {1 - train / wall:.0%} |"
        )
    return "\n".join(
        ["### Through the service vs per message (rounds 2+: the service's first round loads",
         "the model once)", "", *rows, ""]
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--case", choices=("tabular", "text", "all"), default="all")
    parser.add_argument("--path", choices=(*PATHS, "both"), default="both")
    parser.add_argument(
        "--evaluate-with-train",
        action="store_true",
        help="sites evaluate inside the train message (one ClientApp process per round)",
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the federation's processes are stopped by PID
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    fetch("all-minilm-l6-v2")
    tables, measured = [], []
    for label, case in CASES.items():
        if args.case != "all" and (case["model"] == "text") != (args.case == "text"):
            continue
        if args.evaluate_with_train:
            case, label = case | {"evaluate-with-train": True}, label + ", evaluate-with-train"
        for path in PATHS if args.path == "both" else (args.path,):
            measured.append(run_case(label, case, args.rounds, args.results_dir, path))
            tables.append(markdown(measured[-1]))
            print(tables[-1], flush=True)
    tables.append(comparison(measured))
    print(tables[-1], flush=True)
    out = args.results_dir / f"bench-deployment-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("## Deployment round overhead\n\n" + "\n".join(tables))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
