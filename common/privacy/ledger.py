"""The site's durable privacy ledger (SQLite): what was released on which dataset.

Our own code because nothing off the shelf persists DP spend across processes and runs.
One row per DP release batch (run, round, sigma, q, steps, delta, accountant). Epsilon is never
stored: it is recomputed from the rows (common.privacy.accounting). A round's row is *reserved*
atomically with the budget check before training (so two processes cannot both pass the check),
and marked *released* before the update leaves the site. A reserved row whose process died still
counts: the ledger errs on the side of over-counting, never under-counting.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.privacy.accounting import ACCOUNTANTS, DpRelease, compute_epsilon

SCHEMA_NAME = "fedpriv-ledger"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, num_records INTEGER NOT NULL,
    first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    fingerprint TEXT NOT NULL, run_id TEXT NOT NULL, noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL, steps_per_round INTEGER NOT NULL, planned_rounds INTEGER NOT NULL,
    target_epsilon REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (fingerprint, run_id));
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0), delta REAL NOT NULL, accountant TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'released')), recorded_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS releases_by_dataset ON releases (fingerprint);
"""


class LedgerError(RuntimeError):
    """The ledger file cannot be used (corrupt, foreign, newer schema). Never auto-reset."""


class BudgetExceededError(RuntimeError):
    """A planned release would take the dataset's epsilon past its budget."""

    def __init__(self, epsilon_spent: float, epsilon_after: float, epsilon_budget: float) -> None:
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after
        self.epsilon_budget = epsilon_budget
        super().__init__(
            f"budget exhausted: this round would bring epsilon from {epsilon_spent:.4f} to "
            f"{epsilon_after:.4f}, over the budget {epsilon_budget:.4f} "
            f"({max(epsilon_budget - epsilon_spent, 0.0):.4f} left)"
        )


@dataclass(frozen=True)
class LedgerRow:
    """One recorded release batch."""

    id: int
    fingerprint: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    status: str
    recorded_at: float

    @property
    def release(self) -> DpRelease:
        return DpRelease(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class RunPlan:
    """The calibrated DP parameters of one run on one dataset, fixed at its first round."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    target_epsilon: float
    delta: float
    accountant: str


class PrivacyLedger:
    """A site's ledger file. Safe for several processes: writes run in IMMEDIATE transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.OperationalError as err:
            raise LedgerError(f"privacy ledger {self.path} cannot be opened: {err}") from err
        try:
            self._open()
        except LedgerError:
            self._conn.close()
            raise
        except sqlite3.OperationalError:
            self._conn.close()
            raise  # locked, read-only, disk full: a real condition, not a damaged file
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise LedgerError(
                f"privacy ledger {self.path} is unreadable ({err}). It is not a SQLite file or is "
                "damaged; restore it from a backup. fedpriv never resets a ledger."
            ) from err

    def _open(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if tables and "meta" not in tables:
            raise LedgerError(
                f"{self.path} is a SQLite file but not a fedpriv privacy ledger "
                f"(tables: {', '.join(sorted(tables))}); point the site at its own ledger file"
            )
        with self._transaction():
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            try:
                meta = dict(self._conn.execute("SELECT key, value FROM meta"))
            except sqlite3.OperationalError as err:
                raise LedgerError(f"{self.path} is not a fedpriv privacy ledger ({err})") from err
            if not meta:
                self._conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))],
                )
            elif meta.get("schema") != SCHEMA_NAME:
                raise LedgerError(f"{self.path} is not a fedpriv privacy ledger (meta: {meta})")
            elif int(meta.get("version", "0")) > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} has ledger schema {meta['version']}, newer than this fedpriv "
                    f"({SCHEMA_VERSION}); upgrade fedpriv"
                )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- reading -------------------------------------------------------------------------
    def rows(self, fingerprint: str | None = None) -> list[LedgerRow]:
        """Recorded release batches (of one dataset, or all), oldest first."""
        query = "SELECT * FROM releases"
        args: tuple[str, ...] = ()
        if fingerprint is not None:
            query += " WHERE fingerprint = ?"
            args = (fingerprint,)
        return [LedgerRow(*r) for r in self._conn.execute(query + " ORDER BY id", args)]

    def datasets(self) -> list[tuple[str, str, int]]:
        """(fingerprint, name, number of records) of every dataset seen."""
        return list(self._conn.execute("SELECT fingerprint, name, num_records FROM datasets"))

    def epsilon_spent(self, fingerprint: str, delta: float, accountant: str = "pld") -> float:
        """Epsilon at ``delta`` of every release ever recorded on this dataset."""
        return compute_epsilon([r.release for r in self.rows(fingerprint)], delta, accountant)

    def run_plan(self, fingerprint: str, run_id: str) -> RunPlan | None:
        row = self._conn.execute(
            "SELECT noise_multiplier, sample_rate, steps_per_round, planned_rounds, "
            "target_epsilon, delta, accountant FROM runs WHERE fingerprint = ? AND run_id = ?",
            (fingerprint, run_id),
        ).fetchone()
        return None if row is None else RunPlan(*row)

    # --- writing -------------------------------------------------------------------------
    def register_dataset(self, fingerprint: str, name: str, num_records: int) -> None:
        with self._transaction():
            self._conn.execute(
                "INSERT OR IGNORE INTO datasets VALUES (?, ?, ?, ?)",
                (fingerprint, name, num_records, time.time()),
            )

    def save_run_plan(self, fingerprint: str, run_id: str, plan: RunPlan) -> RunPlan:
        """Store the run's plan unless one exists; return the stored one (first writer wins)."""
        with self._transaction():
            self._conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    fingerprint,
                    run_id,
                    plan.noise_multiplier,
                    plan.sample_rate,
                    plan.steps_per_round,
                    plan.planned_rounds,
                    plan.target_epsilon,
                    plan.delta,
                    plan.accountant,
                    time.time(),
                ),
            )
        stored = self.run_plan(fingerprint, run_id)
        assert stored is not None
        return stored

    def reserve(
        self,
        fingerprint: str,
        run_id: str,
        round_number: int,
        release: DpRelease,
        *,
        delta: float,
        accountant: str,
        epsilon_budget: float,
    ) -> int:
        """Atomically check the budget and record the planned release as *reserved*.

        Raises BudgetExceededError (recording nothing) if epsilon after it would exceed the budget.
        Returns the row id to ``mark_released`` or ``cancel``.
        """
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}")
        if not (math.isfinite(epsilon_budget) and epsilon_budget >= 0):
            raise ValueError(f"epsilon budget must be a finite number >= 0, got {epsilon_budget}")
        with self._transaction():
            past = [r.release for r in self.rows(fingerprint)]
            spent = compute_epsilon(past, delta, accountant)
            after = compute_epsilon([*past, release], delta, accountant)
            if after > epsilon_budget:
                raise BudgetExceededError(spent, after, epsilon_budget)
            cursor = self._conn.execute(
                "INSERT INTO releases (fingerprint, run_id, round, noise_multiplier, sample_rate,"
                " steps, delta, accountant, status, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                (
                    fingerprint,
                    run_id,
                    round_number,
                    release.noise_multiplier,
                    release.sample_rate,
                    release.steps,
                    delta,
                    accountant,
                    time.time(),
                ),
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    def mark_released(self, row_id: int, steps: int) -> None:
        """Record that the update left (or is about to leave) the site after ``steps`` steps."""
        with self._transaction():
            row = self._conn.execute(
                "SELECT steps, status FROM releases WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None or row[1] != "reserved":
                raise LedgerError(f"ledger row {row_id} is not a reservation (it is {row})")
            if not 0 <= steps <= row[0]:
                raise ValueError(
                    f"{steps} steps taken but {row[0]} reserved: a release can only be smaller "
                    "than what passed the budget check"
                )
            self._conn.execute(
                "UPDATE releases SET status = 'released', steps = ? WHERE id = ?", (steps, row_id)
            )

    def cancel(self, row_id: int) -> None:
        """Drop a reservation whose training failed before anything left the site."""
        with self._transaction():
            self._conn.execute(
                "DELETE FROM releases WHERE id = ? AND status = 'reserved'", (row_id,)
            )
