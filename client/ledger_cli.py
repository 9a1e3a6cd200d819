"""``fedpriv-ledger``: a site operator's view of the site's privacy ledger (read-only).

    fedpriv-ledger                       datasets: epsilon spent, budget, left
    fedpriv-ledger runs [--dataset FP]   each run's plan (sigma, q, steps) and its own epsilon
    fedpriv-ledger rounds [--run ID]     every release, with the dataset's epsilon after it
    fedpriv-ledger export --out FILE     the whole ledger as JSON, CSV (releases) or SQLite copy

The ledger is ``--ledger PATH``, else the one the site's ``--policy FILE`` names, else
$FEDPRIV_HOME/ledger.sqlite. With ``--policy`` the budget and delta shown are the policy's.
``--json`` prints JSON instead of a table. Nothing here writes to the ledger.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO

from common.config import ConfigError, SiteSettings
from common.privacy.ledger import LedgerError, LedgerRow, PrivacyLedger, default_ledger_path
from common.privacy.ledger_report import (
    Record,
    dataset_report,
    export_records,
    round_report,
    run_report,
)

TABLE_COLUMNS = {
    "datasets": [
        "dataset", "fingerprint", "records", "runs", "rounds", "delta", "epsilon-spent",
        "epsilon-budget", "epsilon-left", "accountant",
    ],
    "runs": [
        "dataset", "run", "started", "noise-multiplier", "sample-rate", "steps-per-round",
        "rounds", "planned-rounds", "target-epsilon", "epsilon-of-run",
    ],
    "rounds": [
        "dataset", "run", "round", "recorded", "status", "noise-multiplier", "sample-rate",
        "steps", "epsilon-after", "epsilon-budget",
    ],
}  # fmt: skip


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    try:
        path, budget, delta = _ledger_location(args)
        with PrivacyLedger(path, read_only=True) as ledger:
            fingerprint = _dataset(ledger, args.dataset) if args.dataset else None
            if args.command == "export":
                _export(ledger, Path(args.out), args.format)
                print(f"exported {path} to {args.out} ({args.format})", file=out)
                return 0
            if args.command == "runs":
                records = run_report(ledger, fingerprint)
            elif args.command == "rounds":
                records = round_report(ledger, fingerprint, args.run, delta=delta)
            else:
                records = dataset_report(ledger, budget=budget, delta=delta)
                if fingerprint:
                    records = [r for r in records if r["fingerprint"] == fingerprint]
    except (LedgerError, ConfigError, FileExistsError, ValueError) as err:
        print(f"fedpriv-ledger: {err}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(_jsonable(records), out, indent=2)
        out.write("\n")
    else:
        print(f"ledger {path}", file=out)
        out.write(_table(records, TABLE_COLUMNS[args.command or "datasets"]))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpriv-ledger", description="A site's privacy ledger: epsilon spent and left."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ledger", help="ledger file (default $FEDPRIV_HOME/ledger.sqlite)")
    where.add_argument("--policy", help="the site's policy file (its ledger, budget, delta)")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument("--dataset", help="only this dataset (fingerprint or its prefix)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("datasets", help="epsilon spent, budget and left per dataset (default)")
    commands.add_parser("runs", help="each run's plan and its own epsilon")
    rounds = commands.add_parser("rounds", help="every release with the epsilon after it")
    rounds.add_argument("--run", help="only this run id")
    export = commands.add_parser("export", help="write the whole ledger to a file")
    export.add_argument("--out", required=True, help="file to write (must not exist)")
    export.add_argument("--format", choices=("json", "csv", "sqlite"), default="json")
    return parser


def _ledger_location(args: argparse.Namespace) -> tuple[Path, float | None, float | None]:
    if args.policy:
        policy = SiteSettings.from_mapping({"policy-file": args.policy}, "policy")
        path = Path(policy.ledger).expanduser() if policy.ledger else default_ledger_path()
        return path, policy.epsilon_budget or None, policy.delta or None
    return (Path(args.ledger).expanduser() if args.ledger else default_ledger_path()), None, None


def _dataset(ledger: PrivacyLedger, prefix: str) -> str:
    matches = [fp for fp, _, _ in ledger.datasets() if fp.startswith(prefix)]
    if len(matches) != 1:
        known = ", ".join(f"{fp[:12]} ({name})" for fp, name, _ in ledger.datasets()) or "none"
        what = "no dataset" if not matches else f"{len(matches)} datasets"
        raise ValueError(f"{what} in the ledger match {prefix!r}; datasets: {known}")
    return matches[0]


def _export(ledger: PrivacyLedger, target: Path, kind: str) -> None:
    """Write a new file (never overwrite: an export must not destroy another record)."""
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":  # a consistent copy, even while a site is writing
        with sqlite3.connect(target) as copy:
            ledger.backup_to(copy)
        return
    with target.open("x", encoding="utf-8", newline="") as file:
        if kind == "json":
            json.dump(_jsonable(export_records(ledger)), file, indent=2)
            file.write("\n")
        else:
            writer = csv.writer(file)
            names = [f.name for f in fields(LedgerRow)]
            writer.writerow(names)
            for row in ledger.rows():
                writer.writerow([getattr(row, name) for name in names])


def _jsonable(value: Any) -> Any:
    """JSON with no NaN/Infinity tokens: an infinite epsilon (a non-private release) is "inf"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return value


def _table(records: list[Record], columns: list[str]) -> str:
    if not records:
        return "(nothing recorded)\n"
    cells = [[_cell(column, r.get(column)) for column in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "fingerprint":
        return str(value)[:12]
    if isinstance(value, float):
        if math.isinf(value):
            return "inf (non-private)" if column.startswith("epsilon") else "inf"
        return f"{value:.3g}" if column in ("delta", "sample-rate") else f"{value:.4f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
