"""Benchmark: federated NER entity F1, non-DP vs DP-SGD, with the real all-MiniLM-L6-v2 + LoRA.

    python -m simulations.bench_ner [--config simulations/configs/ner.toml] [--epsilon 8]
        [--set num-server-rounds=5 --set local-steps=8 ...] [--runs nondp,dp] [--results-dir DIR]

Runs the same federated simulation (default: simulations/configs/ner.toml, 4 sites, WNUT16)
twice through Flower, once without privacy (dp=false) and once with DP-SGD at target epsilon
(delta = 0.1/n per site, below 1/n), and prints Markdown tables: entity precision/recall/F1
(micro) and macro F1 of the final global model on the held-out test set (seqeval), the federated
entity F1 (from the sites' summed counts on their validation records), the sites' epsilon; and
F1 per entity type. The tables are written under the results folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from simulations.run import run_simulation

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "ner.toml"


def run_case(
    config: Path, overrides: dict[str, Any], results: Path, name: str
) -> tuple[dict[str, Any], float]:
    """One simulated run; its summary and wall time."""
    started = time.monotonic()
    folder = run_simulation(config, overrides | {"run-name": name}, results)
    summary = json.loads((folder / "summary.json").read_text())
    return summary, time.monotonic() - started


def _row(label: str, summary: dict[str, Any], seconds: float) -> str:
    final = summary["final-round"]
    server, federated = final["server-eval"], final["federated-eval"]
    if summary["config"]["dp"]:
        eps = max(s["epsilon-spent"] for s in summary["sites"].values())
        delta = max(s["delta"] for s in summary["sites"].values())
        privacy = f"{eps:.2f} (delta {delta:.1e})"
    else:
        privacy = "none (NON-PRIVATE)"
    return (
        f"| {label} | {server['entity-precision']:.3f} | {server['entity-recall']:.3f} "
        f"| **{server['entity-f1']:.3f}** | {server['entity-macro-f1']:.3f} "
        f"| {federated.get('eval-entity-f1', float('nan')):.3f} | {server['accuracy']:.3f} "
        f"| {privacy} | {seconds / 60:.1f} |"
    )


def markdown(cases: list[tuple[str, dict[str, Any], float]], command: str) -> str:
    first = cases[0][1]["config"]
    lines = [
        "## NER: entity F1, non-DP vs DP (issue 5)",
        "",
        f"WNUT16 tweets (`wnut16-ner`), {first['num_server_rounds']} rounds x "
        f"{first['local_steps']} local steps (expected batch {first['batch_size']}), "
        f"all-MiniLM-L6-v2 + LoRA r={first['lora_r']} ({first['lora_target_modules']}), "
        f"max length {first['max_length']}, partitioner {first['partitioner']}. "
        "Held-out test set scored with seqeval (entity level, conlleval rules); federated F1 "
        "from the sites' summed TP/FP/FN on their validation records.",
        "",
        f"Command: `{command}`",
        "",
        "| run | precision | recall | entity F1 (micro) | macro F1 | federated entity F1 "
        "| token accuracy | epsilon per site | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(label, summary, seconds) for label, summary, seconds in cases),
        "",
    ]
    reports = [(label, summary.get("entity-report", {})) for label, summary, _ in cases]
    types = [t for t in reports[0][1] if not t.endswith(" avg")]
    if types:
        lines += [
            "F1 per entity type on the held-out set (support = gold entities):",
            "",
            "| type | support | " + " | ".join(label for label, _ in reports) + " |",
            "|---|---|" + "---|" * len(reports),
        ]
        for kind in types:
            support = int(reports[0][1][kind]["support"])
            scores = " | ".join(f"{r.get(kind, {}).get('f1-score', 0.0):.3f}" for _, r in reports)
            lines.append(f"| {kind} | {support} | {scores} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--epsilon", type=float, default=8.0, help="target epsilon of the DP run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument(
        "--runs", default="nondp,dp", help="which runs, comma-separated: nondp, dp (default both)"
    )
    args = parser.parse_args(argv)
    runs = {r.strip() for r in args.runs.split(",") if r.strip()}
    if not runs or runs - {"nondp", "dp"}:
        parser.error(f"--runs takes nondp and/or dp, got {args.runs!r}")
    overrides = dict(tomllib.loads("\n".join(args.set)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    command = "python -m simulations.bench_ner " + " ".join(sys.argv[1:] if argv is None else argv)
    cases = []
    for label, extra in (
        ("federated, non-DP", {"dp": False}),
        (f"federated, DP epsilon {args.epsilon:g}", {"dp": True, "target-epsilon": args.epsilon}),
    ):
        kind = "dp" if extra["dp"] else "nondp"
        if kind not in runs:
            continue
        name = f"bench-ner-{kind}-{stamp}"
        summary, seconds = run_case(args.config, overrides | extra, args.results_dir, name)
        cases.append((label, summary, seconds))
    table = markdown(cases, command.strip())
    print(table, flush=True)
    out = args.results_dir / f"bench-ner-{stamp}.md"
    out.write_text(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
