"""The site's durable privacy ledger (SQLite): what was released on which dataset.

Our own code because nothing off the shelf persists DP spend across processes and runs.
One row per DP release batch (run, round, sigma, q, steps, delta, accountant, purpose: DP-SGD
training or a Gaussian evaluation answer, which is a release with q = 1, k = 1). Epsilon is never
stored: it is recomputed from the rows (common.privacy.accounting). A round's row is *reserved*
atomically with the site's budget check before training (the check is the gate's, client/gate.py,
run inside the ledger's write transaction, so two processes cannot both pass it), and marked
*released* before the update leaves the site. A reserved row whose process died still counts:
the ledger errs on the side of over-counting, never under-counting.

Budgets bound records, not splits: the ``records`` table holds each record's keyed hash, the
split (ledger key) it belongs to for good, and ``since``, the last release id before it was
first seen. A record's epsilon composes the releases on its key after ``since`` (records added
later start at 0; old ones keep their spend); the budget check takes the oldest record present.
Releases recorded before this schema (version < 3) count for every record of every key.

The parts: ledger_schema (the file, schema, upgrades), ledger_types (rows, plans, errors),
ledger_queries (reads, epsilon recomputed), ledger_writes (reserve, mark, cancel, record).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from common.privacy.ledger_schema import connect
from common.privacy.ledger_types import (
    BudgetExceededError,
    LedgerError,
    LedgerRow,
    RunPlan,
    RunSummary,
)
from common.privacy.ledger_writes import Admission, LedgerWrites

__all__ = [
    "Admission",
    "BudgetExceededError",
    "LedgerError",
    "LedgerRow",
    "PrivacyLedger",
    "RunPlan",
    "RunSummary",
    "default_ledger_path",
]


def default_ledger_path() -> Path:
    """A deployed site's ledger unless its policy names one: $FEDPRIV_HOME/ledger.sqlite
    (FEDPRIV_HOME defaults to ~/.fedpriv)."""
    return Path(os.environ.get("FEDPRIV_HOME", Path.home() / ".fedpriv")) / "ledger.sqlite"


class PrivacyLedger(LedgerWrites):
    """A site's ledger file. Safe for several processes: writes run in IMMEDIATE transactions.

    read_only: open an existing ledger without creating, migrating or writing anything (the
    operator view); a missing file is then a LedgerError.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._conn, self._version = connect(self.path, read_only)

    def close(self) -> None:
        self._conn.close()

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole ledger into ``target`` (SQLite's online backup: a consistent copy)."""
        self._conn.backup(target)

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
