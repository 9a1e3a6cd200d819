"""Benchmark: what DP-SGD costs in step time and memory, and what a site sends per round.

    python -m simulations.bench_dp_cost [--steps 3] [--results-dir results]

Table 1: the packaged all-MiniLM-L6-v2 (real weights), full fine-tuning ("full"), full
fine-tuning with the word-embedding table frozen ("full-frozen", the DP default) and LoRA (r=8
on query/value), expected batch B in {16, 64} and sequence length L in {64, 128} (texts of
rotten-tomatoes padded to L). Each case runs non-DP and DP-SGD clipped three ways: Opacus
per-example gradients ("hooks"), Opacus ghost clipping ("ghost", two backward passes) and
book-keeping ("bookkeeping", one: ``client.bookkeeping``), each in a fresh process, through
``client.training.train_locally`` (sigma = 1, C = 1, Poisson q = 1/10). Step time =
(CPU time of warm-up + k steps - CPU time of the warm-up step alone) x B / (examples those k
steps ran: Poisson batches vary around B), with one torch thread:
the machine is shared, and CPU time of a single-threaded process does not grow when other
processes compete for the cores as wall time does (wall time is reported too). Peak memory =
the process's peak resident set (polled every 2 ms) while training, and the growth over the
loaded model.
Table 2: bytes of the ArrayRecord protobuf a site sends per round, full vs LoRA.
Both tables are printed as Markdown and written to ``<results-dir>/bench-dp-cost.md``.

Over 300 lines because a benchmark script keeps its cases, measurement and table together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("full", "full-frozen", "lora")
BATCHES = (16, 64)
LENGTHS = (64, 128)
MODES = ("non-dp", "hooks", "ghost", "bookkeeping")
DP_MODES = MODES[1:]
BATCHES_PER_EPOCH = 10  # n = 10 B: Poisson rate q = 1/10
TIME_TARGET = {"full": 1.3, "full-frozen": 1.3, "lora": 1.15}
MEMORY_TARGET = 1.3  # full fine-tuning
BYTES_TARGET = 300.0
BYTES_KINDS = ("full", "lora")


@dataclass(frozen=True)
class Case:
    kind: str
    batch: int
    length: int
    mode: str

    def arg(self) -> str:
        return f"{self.kind}:{self.batch}:{self.length}:{self.mode}"

    @classmethod
    def parse(cls, text: str) -> Case:
        kind, batch, length, mode = text.split(":")
        return cls(kind, int(batch), int(length), mode)


class PeakRss:
    """Largest resident set size of this process seen while the block runs (polled)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _model(kind: str):  # noqa: ANN202 - (TextClassifier, tokenizer), imported lazily
    from common.data.assets import minilm_path
    from common.models.text import LoraSettings, load_text_classifier

    lora = (
        LoraSettings(r=8, alpha=16, target_modules=("query", "value")) if kind == "lora" else None
    )
    frozen = kind == "full-frozen"
    return load_text_classifier(
        str(minilm_path()), 2, lora=lora, device="cpu", seed=0, freeze_word_embeddings=frozen
    )


def _dataset(tokenizer, n: int, length: int):  # noqa: ANN001, ANN202
    """n rotten-tomatoes snippets padded (or cut) to exactly ``length`` tokens."""
    import torch
    from torch.utils.data import TensorDataset

    from common.data.registry import load_dataset

    train, _ = load_dataset("rotten-tomatoes")
    assert train.texts is not None
    texts = train.texts[:n]
    enc = tokenizer(
        texts, truncation=True, max_length=length, padding="max_length", return_tensors="pt"
    )
    ids = enc["input_ids"]
    positions = torch.arange(length).repeat(n, 1)
    labels = torch.as_tensor(train.labels[:n])
    return TensorDataset(ids, enc["attention_mask"], enc["token_type_ids"], positions, labels)


def measure(case: Case, steps: int) -> dict[str, float]:
    """Step time (s) and memory (MiB) of one case, in this process."""
    import torch

    from client.training import DpSgdSettings, train_locally

    torch.manual_seed(0)
    model, tokenizer = _model(case.kind)
    data = _dataset(tokenizer, BATCHES_PER_EPOCH * case.batch, case.length)
    dp = None if case.mode == "non-dp" else DpSgdSettings(1.0, 1.0)
    mode = "hooks" if case.mode == "non-dp" else case.mode

    seen = [0]  # examples through the model: Poisson batches vary around B
    model.register_forward_pre_hook(lambda _, inputs: seen.__setitem__(0, seen[0] + len(inputs[0])))

    def run(k: int) -> tuple[float, float, int]:
        cpu, before = time.process_time(), seen[0]
        wall = train_locally(
            model,
            data,
            batch_size=case.batch,
            epochs=1,
            learning_rate=1e-4,
            dp=dp,
            device="cpu",
            seed=k,
            grad_sample_mode=mode,
            max_steps=k,
        ).seconds
        return time.process_time() - cpu, wall, seen[0] - before

    import psutil

    loaded = psutil.Process().memory_info().rss
    warm, warm_wall, warm_seen = run(1)
    with PeakRss() as peak:
        total, total_wall, total_seen = run(1 + steps)
    per_batch = case.batch / (total_seen - warm_seen)  # time of k steps -> of one batch of B
    mib = 2**20
    return {
        "step_s": (total - warm) * per_batch,
        "wall_step_s": (total_wall - warm_wall) * per_batch,
        "peak_mib": peak.peak / mib,
        "growth_mib": (peak.peak - loaded) / mib,
    }


def _in_subprocess(case: Case, steps: int) -> dict[str, float]:
    command = [sys.executable, "-m", "simulations.bench_dp_cost", "--one", case.arg()]
    command += ["--steps", str(steps)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"case {case.arg()} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ok(met: bool) -> str:
    return "yes" if met else "**no**"


def _seconds(got: dict[str, dict[str, float]], mode: str) -> str:
    return f"{got[mode]['step_s']:.2f}" if mode in got else "-"


def cost_table(results: dict[Case, dict[str, float]], kinds: tuple[str, ...] = KINDS) -> str:
    """Markdown: non-DP vs each DP mode measured; the fastest DP mode's ratios against the
    targets (time and, for full fine-tuning, memory: peak resident set DP / non-DP)."""
    head = (
        "| model | B | L | non-DP CPU s/step | DP hooks | DP ghost | DP bookkeeping "
        "| fastest DP mode | time DP/non-DP | peak MiB non-DP | peak MiB DP | memory DP/non-DP "
        "| targets met |\n" + "|---" * 13 + "|\n"
    )
    rows = []
    for kind in kinds:
        for batch in BATCHES:
            for length in LENGTHS:
                got = {
                    m: results[Case(kind, batch, length, m)]
                    for m in MODES
                    if Case(kind, batch, length, m) in results
                }
                measured = [m for m in DP_MODES if m in got]
                if "non-dp" not in got or not measured:
                    continue
                best = min(measured, key=lambda m: got[m]["step_s"])
                base, dp = got["non-dp"], got[best]
                time_ratio = dp["step_s"] / base["step_s"]
                mem_ratio = dp["peak_mib"] / base["peak_mib"]
                target = f"time <= {TIME_TARGET[kind]}x: {_ok(time_ratio <= TIME_TARGET[kind])}"
                if kind != "lora":
                    target += f"; memory <= {MEMORY_TARGET}x: {_ok(mem_ratio <= MEMORY_TARGET)}"
                rows.append(
                    f"| MiniLM {kind} | {batch} | {length} | {base['step_s']:.2f} "
                    + "".join(f"| {_seconds(got, m)} " for m in DP_MODES)
                    + f"| {best} | {time_ratio:.2f}x | {base['peak_mib']:.0f} "
                    f"| {dp['peak_mib']:.0f} | {mem_ratio:.2f}x | {target} |"
                )
    return head + "\n".join(rows) + "\n"


def default_table(results: dict[Case, dict[str, float]]) -> str:
    """Markdown: the DP default for full fine-tuning (book-keeping, word embeddings frozen)
    against non-DP full fine-tuning of every parameter (what a non-private site would run)."""
    head = (
        "| B | L | non-DP full CPU s/step | DP bookkeeping full-frozen | time DP/non-DP "
        "| peak MiB non-DP / DP | memory DP/non-DP |\n" + "|---" * 7 + "|\n"
    )
    rows = []
    for batch in BATCHES:
        for length in LENGTHS:
            base = results.get(Case("full", batch, length, "non-dp"))
            dp = results.get(Case("full-frozen", batch, length, "bookkeeping"))
            if base is None or dp is None:
                continue
            rows.append(
                f"| {batch} | {length} | {base['step_s']:.2f} | {dp['step_s']:.2f} "
                f"| {dp['step_s'] / base['step_s']:.2f}x "
                f"| {base['peak_mib']:.0f} / {dp['peak_mib']:.0f} "
                f"| {dp['peak_mib'] / base['peak_mib']:.2f}x |"
            )
    return head + "\n".join(rows) + "\n"


def bytes_table() -> str:
    """Markdown: protobuf bytes of the ArrayRecord a site sends per round, full vs LoRA."""
    from flwr.common.serde import array_record_to_proto

    from common.models.weights import trainable_state
    from common.protocol.records import to_array_record

    sizes = {}
    for kind in BYTES_KINDS:
        model, _ = _model(kind)
        state = trainable_state(model)
        record = array_record_to_proto(to_array_record(state))
        sizes[kind] = (sum(v.size for v in state.values()), record.ByteSize())
    ratio = sizes["full"][1] / sizes["lora"][1]
    lines = [
        "| model | parameters sent | bytes per site per round |",
        "|---|---|---|",
        *(f"| MiniLM {k} | {sizes[k][0]:,} | {sizes[k][1]:,} |" for k in BYTES_KINDS),
        f"\nFull / LoRA: **{ratio:.0f}x** smaller (target >= {BYTES_TARGET:.0f}x: "
        f"{_ok(ratio >= BYTES_TARGET)}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (k)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every case this many times, round robin; keep the fastest time and "
        "the largest memory (robust to other load on a shared machine)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # kind:B:L:mode, in a child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(Case.parse(args.one), args.steps)))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kinds = tuple(args.kinds)
    results: dict[Case, dict[str, float]] = {}
    cases = [
        Case(k, b, n, m)
        for k in kinds
        for b in args.batches
        for n in args.lengths
        for m in args.modes
    ]
    for repeat in range(args.repeats):
        for i, case in enumerate(cases, 1):
            got = _in_subprocess(case, args.steps)
            print(f"[{repeat + 1}: {i}/{len(cases)}] {case.arg()}: {got}", flush=True)
            best = results.setdefault(case, got)
            best["step_s"] = min(best["step_s"], got["step_s"])
            best["wall_step_s"] = min(best["wall_step_s"], got["wall_step_s"])
            best["peak_mib"] = max(best["peak_mib"], got["peak_mib"])
            best["growth_mib"] = max(best["growth_mib"], got["growth_mib"])
    report = (
        "### DP-SGD step time and memory (MiniLM, CPU, one thread)\n\n"
        + cost_table(results, kinds)
        + "\n### DP default (book-keeping, word embeddings frozen) vs non-DP full\n\n"
        + default_table(results)
        + "\n### Bytes sent per site per round\n\n"
        + bytes_table()
    )
    print(report)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "bench-dp-cost.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
