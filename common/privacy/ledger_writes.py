"""The privacy ledger's write side: every write is one IMMEDIATE transaction (ledger_schema).

Storage only: no budget rule here. ``reserve`` takes its admission rule from the caller (the
site's gate, client/gate.py) and runs it inside the write transaction, so a rule checked and
the row it admits are one atomic step across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from common.privacy.accounting import ACCOUNTANTS, DpRelease, Release
from common.privacy.ledger_queries import LedgerQueries
from common.privacy.ledger_schema import transaction
from common.privacy.ledger_types import LedgerError, RunPlan

# Called with what already counts on the dataset; raises to refuse the reservation.
Admission = Callable[[list[Release]], None]


class LedgerWrites(LedgerQueries):
    """Writes to an open ledger connection (PrivacyLedger opens it)."""

    read_only: bool

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with transaction(self._conn):
            yield

    # --- datasets, plans, records ------------------------------------------------------------
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

    # --- releases ----------------------------------------------------------------------------
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
        admit: Admission,
        since: int = 0,
        purpose: str = "dp-sgd",
        session: str = "",
    ) -> int:
        """Record the planned release as *reserved*, if ``admit`` lets it, in one transaction.

        admit: the caller's rule (the gate's budget rule), called under the write lock with
        what already counts on this dataset after ``since`` (``releases``); it raises to
        refuse, and nothing is recorded. epsilon_budget: stored with the row (the budget it was
        checked against); purpose: what the release is (dp-sgd, evaluation, group-counts);
        session: who asked. Returns the row id to ``mark_released`` or ``cancel``.
        """
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}")
        with self._transaction():
            admit(self.releases(fingerprint, since=since))
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

    def record_non_private(self, fingerprint: str, run_id: str, round_number: int) -> None:
        """Record, before it leaves, an update trained without DP: from now on the dataset's
        epsilon is infinite and every DP reservation on it is refused."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO non_private_releases (fingerprint, run_id, round, recorded_at) "
                "VALUES (?, ?, ?, ?)",
                (fingerprint, run_id, round_number, time.time()),
            )

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
