"""Benchmark: many simulated sites on one machine (issue 8).

    python -m simulations.bench_scale [--results-dir results] [--rounds 10]

Prints, in one run, Markdown tables (also written to <results-dir>/bench-scale.md):
1. tabular runs of simulations/configs/scale.toml with 100 and 1,000 sites (10% sampled per
   round): whole-run wall time, rounds per minute, peak memory of the whole process tree (this
   process, the SuperLink, the ServerApp, Ray and its workers: sum of RSS, sampled every 0.5 s);
2. the share of a round spent outside local training (Flower + fedpriv bookkeeping: messages,
   ledger, (de)serialising, aggregation, checkpoint) for the tabular run and a small MiniLM-LoRA
   run (the packaged all-MiniLM-L6-v2, rotten-tomatoes; evaluation switched off so that only
   training and bookkeeping remain): 1 - sum(sites' train-seconds) / (round seconds x workers);
3. the accountant: every site's epsilon for 1,000 sites x 100 rounds (the histories the scale
   config gives: each site's n, q, steps and calibrated sigma, 10% of sites per round), cold
   caches, compared with dp-accounting's PLDAccountant on a sample of the histories.
The machine is shared: compare numbers of the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from simulations.run import run_simulation

SCALE = Path(__file__).resolve().parent / "configs" / "scale.toml"
WORKERS = 2  # Ray's CPUs / client-resources-num-cpus in scale.toml and the MiniLM case
MINILM: dict[str, Any] = {
    "dataset": "rotten-tomatoes",
    "partitioner": "iid",
    "model": "text",
    "finetune": "lora",
    "pooler-init": "identity",
    "max-length": 32,
    "local-steps": 8,
    "batch-size": 128,  # a round as in configs/demo.toml: 8 DP-SGD steps, expected batch 128
    "optimizer": "adam",
    "learning-rate": 2e-4,
    "head-learning-rate": 0.03,
    "fraction-train": 1.0,
    "min-train-nodes": 2,
    "evaluate-with-train": False,
    "fraction-evaluate": 0.0,
    "min-evaluate-nodes": 0,
    "server-eval": False,
}


@contextmanager
def peak_tree_memory() -> Iterator[dict[str, float]]:
    """Track the peak sum of RSS over this process and all its descendants (GiB)."""
    peak = {"gib": 0.0}
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass  # exited between listing and reading
            peak["gib"] = max(peak["gib"], total / 2**30)
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def simulate(
    label: str, config: Path | None, overrides: dict[str, Any], sites: int, results: Path
) -> dict[str, Any]:
    """One simulated run; its wall time, peak memory and per-round timings."""
    log = io.StringIO()
    started = time.perf_counter()
    with peak_tree_memory() as peak:
        folder = run_simulation(config, overrides, results, num_supernodes=sites, stream=log)
    wall = time.perf_counter() - started
    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["round"] > 0]
    shares = [outside_training_share(r) for r in rounds]
    steady = shares[1:] or shares  # round 1 also starts Ray's workers and loads data/models
    round_seconds = sum(r["seconds"] for r in rounds)
    print(f"  {label}: {wall:.0f} s, peak {peak['gib']:.2f} GiB", file=sys.stderr)
    return {
        "label": label,
        "sites": sites,
        "rounds": len(rounds),
        "sites-per-round": statistics.mean(r["trained-sites"] for r in rounds),
        "wall-s": wall,
        "rounds-per-min-run": 60 * len(rounds) / wall,
        "rounds-per-min-rounds": 60 * len(rounds) / round_seconds,
        "round-s-first": rounds[0]["seconds"],
        "round-s-steady": statistics.mean(r["seconds"] for r in rounds[1:] or rounds),
        "peak-gib": peak["gib"],
        "outside-share-first": shares[0],
        "outside-share-steady": statistics.mean(steady),
        "outside-s-steady": statistics.mean(
            r["seconds"] * share for r, share in list(zip(rounds, shares, strict=True))[1:]
        )
        if len(rounds) > 1
        else 0.0,
        "train-s-per-site": statistics.mean(
            m["train-seconds"] for r in rounds for m in r["sites"].values() if "train-seconds" in m
        ),
    }


def outside_training_share(round_record: dict[str, Any]) -> float:
    """1 - (sites' local training seconds) / (the round's seconds x parallel workers)."""
    training = sum(m.get("train-seconds", 0.0) for m in round_record["sites"].values())
    return max(0.0, 1.0 - training / (round_record["seconds"] * WORKERS))


def accountant_benchmark(sites: int, rounds: int, fraction: float, sample: int) -> dict[str, Any]:
    """Every site's epsilon after ``rounds`` rounds of the scale config, cold caches."""
    import tomllib

    from dp_accounting import pld

    from client.site_data import load_site_data
    from common.config import SIMULATED_SITE, RunSettings
    from common.privacy import accounting, pld_cache
    from common.privacy.accounting import DpRelease, compute_epsilon
    from common.privacy.calibration import calibrate_noise_multiplier
    from common.privacy.delta import site_delta
    from common.privacy.sampling import sample_rate, steps_per_epoch

    defaults = tomllib.loads((SCALE.parents[2] / "pyproject.toml").read_text())
    run = tomllib.loads(SCALE.read_text())["run"]
    settings = RunSettings.from_run_config({**defaults["tool"]["flwr"]["app"]["config"], **run})
    plans = []  # per site: (sigma, q, steps per round, delta)
    for pid in range(sites):
        n = len(load_site_data(settings, SIMULATED_SITE, pid, sites).train)
        q = sample_rate(n, settings.batch_size)
        steps = steps_per_epoch(n, settings.batch_size) * settings.local_epochs
        delta = site_delta(SIMULATED_SITE, settings.target_delta, n)
        sigma = calibrate_noise_multiplier(settings.target_epsilon, delta, q, steps * rounds)
        plans.append((sigma, q, steps, delta))
    rng = random.Random(0)
    history: list[list[DpRelease]] = [[] for _ in range(sites)]
    for _ in range(rounds):  # Flower samples fraction x sites per round
        for pid in rng.sample(range(sites), int(fraction * sites)):
            sigma, q, steps, _ = plans[pid]
            history[pid].append(DpRelease(sigma, q, steps))
    for cache in (
        accounting._composed_epsilon,
        pld_cache.history_epsilon,
        pld_cache.one_step_pld,
        pld_cache.self_composed_pld,
    ):
        cache.cache_clear()
    started = time.perf_counter()
    epsilons = [compute_epsilon(history[pid], plans[pid][3]) for pid in range(sites)]
    seconds = time.perf_counter() - started
    distinct = {
        (tuple(sorted({(r.noise_multiplier, r.sample_rate) for r in h})), len(h)) for h in history
    }
    # The plain computation: dp-accounting's PLDAccountant, one event per ledger row.
    checked = rng.sample([pid for pid in range(sites) if history[pid]], sample)
    plain_started = time.perf_counter()
    worst = 0.0
    for pid in checked:
        acc = pld.PLDAccountant(value_discretization_interval=accounting.PLD_VALUE_DISCRETIZATION)
        for release in history[pid]:
            acc.compose(release.event())
        plain = acc.get_epsilon(plans[pid][3])
        worst = max(worst, abs(epsilons[pid] - plain) / plain)
    plain_per_site = (time.perf_counter() - plain_started) / sample
    return {
        "sites": sites,
        "rounds": rounds,
        "releases": sum(len(h) for h in history),
        "distinct-histories": len(distinct),
        "distinct-sigma-q": len({(p[0], p[1]) for p in plans}),
        "seconds": seconds,
        "plain-seconds-per-site": plain_per_site,
        "plain-seconds-estimate": plain_per_site * sites,
        "checked": sample,
        "max-relative-difference": worst,
        "epsilon-range": (min(epsilons), max(epsilons)),
    }


def tables(runs: list[dict[str, Any]], text: dict[str, Any], acc: dict[str, Any]) -> str:
    out = [
        "### Tabular (credit-default MLP, scale.toml: 10% of sites per round, 2 Ray workers)",
        "",
        "| sites | rounds | sites per round | run wall time (s) | rounds/min (whole run) "
        "| rounds/min (rounds only) | round 1 (s) | later rounds (s, mean) | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['sites']:,} | {r['rounds']} | {r['sites-per-round']:.0f} | {r['wall-s']:.0f} "
            f"| {r['rounds-per-min-run']:.1f} | {r['rounds-per-min-rounds']:.1f} "
            f"| {r['round-s-first']:.1f} | {r['round-s-steady']:.1f} | {r['peak-gib']:.2f} |"
        )
    out += [
        "",
        "### Share of a round outside local training (Flower + fedpriv bookkeeping)",
        "",
        "| case | sites per round | local training per site (s) | later rounds: round (s) "
        "| later rounds: outside training (s) | round 1 | later rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in [*runs[-1:], text]:
        out.append(
            f"| {r['label']} | {r['sites-per-round']:.0f} | {r['train-s-per-site']:.2f} "
            f"| {r['round-s-steady']:.1f} | {r['outside-s-steady']:.1f} "
            f"| {100 * r['outside-share-first']:.1f}% | {100 * r['outside-share-steady']:.1f}% |"
        )
    lo, hi = acc["epsilon-range"]
    out += [
        "",
        "### Accountant: every site's epsilon (PLD, delta = 0.1/n per site)",
        "",
        "| sites x rounds | releases | distinct histories | distinct (sigma, q) | time, cold "
        "caches (s) | per distinct history (s) | plain PLDAccountant per site (s) "
        "| plain, all sites (s, estimated) | max relative difference (sample) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {acc['sites']:,} x {acc['rounds']} | {acc['releases']:,} "
        f"| {acc['distinct-histories']} | {acc['distinct-sigma-q']} | {acc['seconds']:.2f} "
        f"| {acc['seconds'] / max(acc['distinct-histories'], 1):.2f} "
        f"| {acc['plain-seconds-per-site']:.2f} | {acc['plain-seconds-estimate']:.0f} "
        f"| {acc['max-relative-difference']:.1e} ({acc['checked']} sites) |",
        "",
        f"Epsilon per site after {acc['rounds']} rounds: {lo:.3f} to {hi:.3f}.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--text-rounds", type=int, default=3)
    parser.add_argument("--accountant-rounds", type=int, default=100)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.results_dir.resolve() / f"bench-scale-{stamp}"
    runs = []
    for sites in args.sites:
        overrides = {"num-server-rounds": args.rounds, "run-name": f"tabular-{sites}"}
        runs.append(simulate(f"tabular, {sites:,} sites", SCALE, overrides, sites, work))
    text_overrides = {**MINILM, "num-server-rounds": args.text_rounds, "run-name": "minilm"}
    text = simulate("MiniLM-LoRA, 2 sites", None, text_overrides, 2, work)
    acc = accountant_benchmark(1000, args.accountant_rounds, 0.1, sample=3)
    report = tables(runs, text, acc)
    (work / "bench-scale.md").write_text(report)
    print(report)
    print(f"written to {work / 'bench-scale.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
