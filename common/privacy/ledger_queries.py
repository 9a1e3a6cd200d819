"""The privacy ledger's read side: what was released, planned and registered, and the epsilon
recomputed from it (never stored). Nothing here writes."""

from __future__ import annotations

import sqlite3

from common.privacy.accounting import NonPrivateRelease, Release, compute_epsilon
from common.privacy.ledger_types import LedgerRow, RunPlan, RunSummary

_ROW_COLUMNS = (
    "id, fingerprint, run_id, round, noise_multiplier, sample_rate, steps, delta, accountant, "
    "status, recorded_at, epsilon_budget, purpose, session"
)
_PLAN_COLUMNS = (
    "noise_multiplier, sample_rate, steps_per_round, planned_rounds, target_epsilon, delta, "
    "accountant, COALESCE(requested_noise_multiplier, noise_multiplier)"
)


class LedgerQueries:
    """Reads of an open ledger connection (PrivacyLedger opens it)."""

    _conn: sqlite3.Connection

    # --- releases ----------------------------------------------------------------------------
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

    def releases(self, fingerprint: str, *, since: int = 0) -> list[Release]:
        """What counts on this dataset after release ``since``: its DP releases, then every
        update trained without DP (whenever it left: no bound holds for any record after it)."""
        past: list[Release] = [r.release for r in self.rows(fingerprint, since=since)]
        return past + [NonPrivateRelease(*row) for row in self.non_private_rounds(fingerprint)]

    def epsilon_spent(
        self, fingerprint: str, delta: float, accountant: str = "pld", *, since: int = 0
    ) -> float:
        """Epsilon at ``delta`` of every release recorded on this dataset after release
        ``since`` (the oldest record's, for the budget of every record), infinite once an
        update trained without DP left the site: no epsilon bound holds after that."""
        return compute_epsilon(self.releases(fingerprint, since=since), delta, accountant)

    def non_private_rounds(self, fingerprint: str) -> list[tuple[str, int]]:
        """(run id, round) of every update trained on this dataset without DP."""
        return list(
            self._conn.execute(
                "SELECT run_id, round FROM non_private_releases WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            )
        )

    def non_private_since(self, fingerprint: str) -> float | None:
        """When the first update trained without DP on this dataset was recorded (or None)."""
        row = self._conn.execute(
            "SELECT MIN(recorded_at) FROM non_private_releases WHERE fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        return row[0]

    # --- counts the caps read ------------------------------------------------------------------
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

    def rounds_recorded(self, fingerprint: str, run_id: str) -> int:
        """Rounds of this run with a release recorded (reserved or released) on this dataset."""
        row = self._conn.execute(
            "SELECT COUNT(DISTINCT round) FROM releases WHERE fingerprint = ? AND run_id = ?",
            (fingerprint, run_id),
        ).fetchone()
        return int(row[0])

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

    # --- datasets, records, runs ---------------------------------------------------------------
    def datasets(self) -> list[tuple[str, str, int]]:
        """(fingerprint, name, number of records) of every dataset seen, oldest first."""
        return list(
            self._conn.execute(
                "SELECT fingerprint, name, num_records FROM datasets ORDER BY first_seen"
            )
        )

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

    def run_plan(self, fingerprint: str, run_id: str) -> RunPlan | None:
        row = self._conn.execute(
            f"SELECT {_PLAN_COLUMNS} FROM runs WHERE fingerprint = ? AND run_id = ?",
            (fingerprint, run_id),
        ).fetchone()
        return None if row is None else RunPlan(*row)

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
