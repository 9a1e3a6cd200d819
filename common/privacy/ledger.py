"""The site's durable privacy ledger (SQLite): what was released on which dataset.

Our own code because nothing off the shelf persists DP spend across processes and runs.
One row per DP release batch (run, round, sigma, q, steps, delta, accountant, purpose: DP-SGD
training or a Gaussian evaluation answer, which is a release with q = 1, k = 1). Epsilon is never
stored: it is recomputed from the rows (common.privacy.accounting). A round's row is *reserved*
atomically with the budget check before training (so two processes cannot both pass the check),
and marked *released* before the update leaves the site. A reserved row whose process died still
counts: the ledger errs on the side of over-counting, never under-counting.

Budgets bound records, not splits: the ``records`` table holds each record's keyed hash, the
split (ledger key) it belongs to for good, and ``since``, the last release id before it was
first seen. A record's epsilon composes the releases on its key after ``since`` (records added
later start at 0; old ones keep their spend); the budget check takes the oldest record present.
Releases recorded before this schema (version < 3) count for every record of every key.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.privacy.accounting import (
    ACCOUNTANTS,
    DpRelease,
    NonPrivateRelease,
    Release,
    compute_epsilon,
)

SCHEMA_NAME = "fedpriv-ledger"
# 2: releases.epsilon_budget, runs.requested_noise_multiplier, non-private;
# 3: per-record membership (records), releases.purpose/.session, policy_releases, split key
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, num_records INTEGER NOT NULL,
    first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    fingerprint TEXT NOT NULL, run_id TEXT NOT NULL, noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL, steps_per_round INTEGER NOT NULL, planned_rounds INTEGER NOT NULL,
    target_epsilon REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL,
    created REAL NOT NULL, requested_noise_multiplier REAL,
    PRIMARY KEY (fingerprint, run_id));
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0), delta REAL NOT NULL, accountant TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'released')), recorded_at REAL NOT NULL,
    epsilon_budget REAL, purpose TEXT NOT NULL DEFAULT 'dp-sgd', session TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS releases_by_dataset ON releases (fingerprint);
CREATE TABLE IF NOT EXISTS non_private_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, recorded_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    fingerprint TEXT NOT NULL, record TEXT NOT NULL, since INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, record));
CREATE TABLE IF NOT EXISTS policy_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    round INTEGER NOT NULL, purpose TEXT NOT NULL, session TEXT NOT NULL,
    recorded_at REAL NOT NULL);
"""
_V3_COLUMNS = [
    "ALTER TABLE releases ADD COLUMN purpose TEXT NOT NULL DEFAULT 'dp-sgd'",
    "ALTER TABLE releases ADD COLUMN session TEXT NOT NULL DEFAULT ''",
]
_MIGRATIONS = {  # from version -> statements that bring a ledger to the next version
    1: [
        "ALTER TABLE releases ADD COLUMN epsilon_budget REAL",
        "ALTER TABLE runs ADD COLUMN requested_noise_multiplier REAL",
        "CREATE TABLE non_private_releases (id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint "
        "TEXT NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, recorded_at REAL NOT NULL)",
    ],
    2: [
        *_V3_COLUMNS,
        "CREATE TABLE records (fingerprint TEXT NOT NULL, record TEXT NOT NULL, since INTEGER "
        "NOT NULL, PRIMARY KEY (fingerprint, record))",
        "CREATE TABLE policy_releases (id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT "
        "NOT NULL, run_id TEXT NOT NULL, round INTEGER NOT NULL, purpose TEXT NOT NULL, session "
        "TEXT NOT NULL, recorded_at REAL NOT NULL)",
        # what an older ledger released was keyed by split: it now counts for every record
        "INSERT INTO meta SELECT 'legacy-release-max-id', COALESCE(MAX(id), 0) FROM releases",
    ],
}
_ROW_COLUMNS = (
    "id, fingerprint, run_id, round, noise_multiplier, sample_rate, steps, delta, accountant, "
    "status, recorded_at, epsilon_budget, purpose, session"
)
_PLAN_COLUMNS = (
    "noise_multiplier, sample_rate, steps_per_round, planned_rounds, target_epsilon, delta, "
    "accountant, COALESCE(requested_noise_multiplier, noise_multiplier)"
)


def default_ledger_path() -> Path:
    """A deployed site's ledger unless its policy names one: $FEDPRIV_HOME/ledger.sqlite
    (FEDPRIV_HOME defaults to ~/.fedpriv)."""
    return Path(os.environ.get("FEDPRIV_HOME", Path.home() / ".fedpriv")) / "ledger.sqlite"


class LedgerError(RuntimeError):
    """The ledger file cannot be used (corrupt, foreign, newer schema). Never auto-reset."""


class BudgetExceededError(RuntimeError):
    """A planned release would take the dataset's epsilon past its budget."""

    def __init__(self, epsilon_spent: float, epsilon_after: float, epsilon_budget: float) -> None:
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after
        self.epsilon_budget = epsilon_budget
        if math.isinf(epsilon_spent):
            super().__init__(
                "budget exhausted: an update trained without DP already left the site on this "
                "dataset, so no epsilon bound holds for it any more"
            )
            return
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
    epsilon_budget: float | None  # the budget this release was checked against
    purpose: str = "dp-sgd"  # dp-sgd | evaluation | group-counts
    session: str = ""  # the Flower run that asked (the site's own count of who asked)

    @property
    def release(self) -> DpRelease:
        return DpRelease(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class RunPlan:
    """The DP parameters of one run on one dataset, fixed at its first round.

    noise_multiplier: sigma used (never below the site's floor); requested_noise_multiplier:
    sigma asked for or calibrated, before the floor; target_epsilon: what the planned
    rounds x steps at (sigma, q) cost on their own.
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    target_epsilon: float
    delta: float
    accountant: str
    requested_noise_multiplier: float


@dataclass(frozen=True)
class RunSummary:
    """One run on one dataset as the ledger saw it (for the operator view)."""

    fingerprint: str
    run_id: str
    created: float
    plan: RunPlan
    rounds: int
    reserved: int  # reservations never marked released (a crash mid-round): counted as spent


class PrivacyLedger:
    """A site's ledger file. Safe for several processes: writes run in IMMEDIATE transactions.

    read_only: open an existing ledger without creating, migrating or writing anything (the
    operator view); a missing file is then a LedgerError.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise LedgerError(f"no privacy ledger at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if read_only:
                uri = f"file:{self.path.resolve()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
            else:
                self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.OperationalError as err:
            raise LedgerError(f"privacy ledger {self.path} cannot be opened: {err}") from err
        try:
            self._version = self._open()
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

    def _open(self) -> int:
        """Check (and create or migrate, unless read-only) the schema; return its version."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if tables and "meta" not in tables:
            raise LedgerError(
                f"{self.path} is a SQLite file but not a fedpriv privacy ledger "
                f"(tables: {', '.join(sorted(tables))}); point the site at its own ledger file"
            )
        if self.read_only:
            return self._check_meta(self._meta())
        with self._transaction():
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            meta = self._meta()
            if not meta:
                self._conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema", SCHEMA_NAME),
                        ("version", str(SCHEMA_VERSION)),
                        ("legacy-release-max-id", "0"),
                    ],
                )
                return SCHEMA_VERSION
            version = self._check_meta(meta)
            while version < SCHEMA_VERSION:  # upgrade in place, in the same transaction
                for statement in _MIGRATIONS[version]:
                    self._conn.execute(statement)
                version += 1
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            return version

    def _meta(self) -> dict[str, str]:
        try:
            return dict(self._conn.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError as err:
            raise LedgerError(f"{self.path} is not a fedpriv privacy ledger ({err})") from err

    def _check_meta(self, meta: dict[str, str]) -> int:
        if meta.get("schema") != SCHEMA_NAME:
            raise LedgerError(f"{self.path} is not a fedpriv privacy ledger (meta: {meta})")
        version = int(meta.get("version", "0"))
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} has ledger schema {version}, newer than this fedpriv "
                f"({SCHEMA_VERSION}); upgrade fedpriv"
            )
        if version not in _MIGRATIONS and version != SCHEMA_VERSION:
            raise LedgerError(f"{self.path} has an unknown ledger schema version {version}")
        if self.read_only and version < SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} has ledger schema {version}; the next training round (or opening it "
                "with write access) upgrades it in place"
            )
        return version

    def close(self) -> None:
        self._conn.close()

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole ledger into ``target`` (SQLite's online backup: a consistent copy)."""
        self._conn.backup(target)

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
    def rows(self, fingerprint: str | None = None, *, since: int = 0) -> list[LedgerRow]:
        """Recorded release batches (of one dataset, or all), oldest first. With a dataset:
        those that count for a record first seen after release ``since`` (every release of an
        older schema counts for every dataset)."""
        query = f"SELECT {_ROW_COLUMNS} FROM releases"
        args: tuple[str | int, ...] = ()
        if fingerprint is not None:
            query += " WHERE (fingerprint = ? AND id > ?) OR id <= ?"
            args = (fingerprint, since, self._legacy_max_id())
        return [LedgerRow(*r) for r in self._conn.execute(query + " ORDER BY id", args)]

    def _legacy_max_id(self) -> int:
        row = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'legacy-release-max-id'"
        ).fetchone()
        return int(row[0]) if row else 0

    def last_release_id(self) -> int:
        """The id of the newest release row (0 for none): records first seen now have it as
        ``since``."""
        return int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM releases").fetchone()[0])

    def record_memberships(self, dataset: str) -> dict[str, tuple[str, int]]:
        """record hash -> (ledger key it belongs to, since) for every record of ``dataset``
        (keys ``<dataset>/<split>``) the site has ever registered."""
        return {
            record: (key, since)
            for key, record, since in self._conn.execute(
                "SELECT fingerprint, record, since FROM records "
                "WHERE substr(fingerprint, 1, ?) = ?",
                (len(dataset) + 1, dataset + "/"),
            )
        }

    def sessions_rounds(self, session: str, purpose: str = "dp-sgd") -> int:
        """Distinct (run, round) pairs released for one asking session (Flower run)."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT fingerprint, run_id, round FROM releases "
            "WHERE session = ? AND purpose = ?)",
            (session, purpose),
        ).fetchone()
        return int(row[0])

    def releases_since(self, timestamp: float, purpose: str = "dp-sgd") -> int:
        """Distinct (dataset, run, round) releases of ``purpose`` recorded after ``timestamp``
        (the site's clock: a cap no server-sent number can reset)."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT fingerprint, run_id, round FROM releases "
            "WHERE recorded_at > ? AND purpose = ?)",
            (timestamp, purpose),
        ).fetchone()
        return int(row[0])

    def round_released(self, fingerprint: str, run_id: str, round_number: int) -> bool:
        """Whether this (run, round) already released a training update on this dataset. A
        reservation whose process died released nothing: it stays counted, and a retry of the
        round may train (and is counted again)."""
        row = self._conn.execute(
            "SELECT 1 FROM releases WHERE fingerprint = ? AND run_id = ? AND round = ? "
            "AND purpose = 'dp-sgd' AND status = 'released' LIMIT 1",
            (fingerprint, run_id, round_number),
        ).fetchone()
        return row is not None or self.non_private_released(fingerprint, run_id, round_number)

    def non_private_released(self, fingerprint: str, run_id: str, round_number: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM non_private_releases WHERE fingerprint = ? AND run_id = ? AND round = ?",
            (fingerprint, run_id, round_number),
        ).fetchone()
        return row is not None

    def policy_releases_since(self, timestamp: float, purpose: str) -> int:
        """Non-private answers of ``purpose`` the site's policy allowed, recorded after
        ``timestamp``."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM policy_releases WHERE recorded_at > ? AND purpose = ?",
            (timestamp, purpose),
        ).fetchone()
        return int(row[0])

    def policy_release_counts(self, dataset: str) -> dict[str, int]:
        """purpose -> non-private answers allowed by policy on ``dataset``'s keys."""
        return dict(
            self._conn.execute(
                "SELECT purpose, COUNT(*) FROM policy_releases WHERE substr(fingerprint, 1, ?) = ? "
                "GROUP BY purpose",
                (len(dataset) + 1, dataset + "/"),
            )
        )

    def split_key(self, default: bytes) -> bytes:
        """The site's secret key for assigning records to splits: stored on first use (then
        ``default``), never changed, so no later setting re-splits a record."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'split-key'").fetchone()
        if row is not None:
            return bytes.fromhex(row[0])
        if self.read_only:
            return default
        with self._transaction():
            self._conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('split-key', ?)", (default.hex(),)
            )
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'split-key'").fetchone()
        return bytes.fromhex(row[0])

    def datasets(self) -> list[tuple[str, str, int]]:
        """(fingerprint, name, number of records) of every dataset seen, oldest first."""
        return list(
            self._conn.execute(
                "SELECT fingerprint, name, num_records FROM datasets ORDER BY first_seen"
            )
        )

    def runs(self, fingerprint: str | None = None) -> list[RunSummary]:
        """Every run's plan and how many rounds it released (per dataset), oldest first."""
        query = f"SELECT fingerprint, run_id, created, {_PLAN_COLUMNS} FROM runs"
        args: tuple[str, ...] = ()
        if fingerprint is not None:
            query += " WHERE fingerprint = ?"
            args = (fingerprint,)
        out = []
        for fp, run_id, created, *plan in self._conn.execute(query + " ORDER BY created", args):
            counts = dict(
                self._conn.execute(
                    "SELECT status, COUNT(*) FROM releases WHERE fingerprint = ? AND run_id = ? "
                    "GROUP BY status",
                    (fp, run_id),
                )
            )
            released, reserved = counts.get("released", 0), counts.get("reserved", 0)
            out.append(RunSummary(fp, run_id, created, RunPlan(*plan), released, reserved))
        return out

    def rounds_recorded(self, fingerprint: str, run_id: str) -> int:
        """Rounds of this run with a release recorded (reserved or released) on this dataset."""
        row = self._conn.execute(
            "SELECT COUNT(DISTINCT round) FROM releases WHERE fingerprint = ? AND run_id = ?",
            (fingerprint, run_id),
        ).fetchone()
        return int(row[0])

    def epsilon_spent(
        self, fingerprint: str, delta: float, accountant: str = "pld", *, since: int = 0
    ) -> float:
        """Epsilon at ``delta`` of every release recorded on this dataset after release
        ``since`` (the oldest record's, for the budget of every record), infinite once an
        update trained without DP left the site: no epsilon bound holds after that."""
        return compute_epsilon(self._releases(fingerprint, since), delta, accountant)

    def _releases(self, fingerprint: str, since: int) -> list[Release]:
        """What counts on this dataset after release ``since``: its DP releases, then every
        update trained without DP (whenever it left: no bound holds for any record after it)."""
        past: list[Release] = [r.release for r in self.rows(fingerprint, since=since)]
        return past + [NonPrivateRelease(*row) for row in self.non_private_rounds(fingerprint)]

    def non_private_rounds(self, fingerprint: str) -> list[tuple[str, int]]:
        """(run id, round) of every update trained on this dataset without DP."""
        return list(
            self._conn.execute(
                "SELECT run_id, round FROM non_private_releases WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            )
        )

    def run_plan(self, fingerprint: str, run_id: str) -> RunPlan | None:
        row = self._conn.execute(
            f"SELECT {_PLAN_COLUMNS} FROM runs WHERE fingerprint = ? AND run_id = ?",
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
                "INSERT OR IGNORE INTO runs (fingerprint, run_id, noise_multiplier, sample_rate, "
                "steps_per_round, planned_rounds, target_epsilon, delta, accountant, created, "
                "requested_noise_multiplier) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    plan.requested_noise_multiplier,
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
        since: int = 0,
        purpose: str = "dp-sgd",
        session: str = "",
    ) -> int:
        """Atomically check the budget and record the planned release as *reserved*.

        since: the oldest present record's ``since`` (its epsilon is the largest); purpose:
        what the release is (dp-sgd, evaluation, group-counts); session: who asked.

        Raises BudgetExceededError (recording nothing) if epsilon after it would exceed the budget.
        Returns the row id to ``mark_released`` or ``cancel``.
        """
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}")
        if not (math.isfinite(epsilon_budget) and epsilon_budget >= 0):
            raise ValueError(f"epsilon budget must be a finite number >= 0, got {epsilon_budget}")
        with self._transaction():
            past = self._releases(fingerprint, since)
            spent = compute_epsilon(past, delta, accountant)  # inf after a non-private update
            after = compute_epsilon([*past, release], delta, accountant)
            if after > epsilon_budget:
                raise BudgetExceededError(spent, after, epsilon_budget)
            cursor = self._conn.execute(
                "INSERT INTO releases (fingerprint, run_id, round, noise_multiplier, sample_rate,"
                " steps, delta, accountant, status, recorded_at, epsilon_budget, purpose, session)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?)",
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
                    epsilon_budget,
                    purpose,
                    session,
                ),
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    def non_private_since(self, fingerprint: str) -> float | None:
        """When the first update trained without DP on this dataset was recorded (or None)."""
        row = self._conn.execute(
            "SELECT MIN(recorded_at) FROM non_private_releases WHERE fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        return row[0]

    def record_non_private(self, fingerprint: str, run_id: str, round_number: int) -> None:
        """Record, before it leaves, an update trained without DP: from now on the dataset's
        epsilon is infinite and every DP reservation on it is refused."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO non_private_releases (fingerprint, run_id, round, recorded_at) "
                "VALUES (?, ?, ?, ?)",
                (fingerprint, run_id, round_number, time.time()),
            )

    def register_records(self, memberships: dict[str, str]) -> dict[str, tuple[str, int]]:
        """Record each new record (hash -> the ledger key of its split) with ``since`` = the
        newest release now; a record seen before keeps its key and since. Returns hash ->
        (key, since) as stored: the split a record got first is its split for good."""
        with self._transaction():
            since = self.last_release_id()
            self._conn.executemany(
                "INSERT OR IGNORE INTO records (fingerprint, record, since) VALUES (?, ?, ?)",
                [(key, record, since) for record, key in memberships.items()],
            )
            stored: dict[str, tuple[str, int]] = {}
            keys = {key for key in memberships.values()}
            for key in keys:
                for record, got_key, got_since in self._conn.execute(
                    "SELECT record, fingerprint, since FROM records WHERE fingerprint = ?", (key,)
                ):
                    if record in memberships:
                        stored[record] = (got_key, got_since)
        missing = set(memberships) - set(stored)
        if missing:  # registered earlier under another split: that one stays
            placeholders = ",".join("?" * len(missing))
            for record, got_key, got_since in self._conn.execute(
                f"SELECT record, fingerprint, since FROM records WHERE record IN ({placeholders})",
                tuple(missing),
            ):
                stored[record] = (got_key, got_since)
        return stored

    def record_policy_release(
        self, fingerprint: str, run_id: str, round_number: int, purpose: str, session: str
    ) -> None:
        """Record, before it leaves, a non-private answer the site's policy allows (exact
        evaluation, audit figures): outside the DP accounting, counted against its cap."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO policy_releases (fingerprint, run_id, round, purpose, session, "
                "recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                (fingerprint, run_id, round_number, purpose, session, time.time()),
            )

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
