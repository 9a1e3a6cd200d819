"""The privacy ledger's file: opening it, its SQLite schema, and upgrading older versions.

A file that is not a fedpriv ledger (foreign tables, another schema name, damaged bytes) or is
newer than this fedpriv is a LedgerError and is left untouched: a ledger is never reset. An
older ledger is upgraded in place, in one transaction, unless it is opened read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.privacy.ledger_types import LedgerError

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
MIGRATIONS = {  # from version -> statements that bring a ledger to the next version
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


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One IMMEDIATE transaction: it takes the file's write lock at BEGIN, so a check made
    inside it still holds when its writes commit (another process waits, up to 60 s)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(path: Path, read_only: bool) -> tuple[sqlite3.Connection, int]:
    """Open the ledger at ``path``, check its schema (creating or upgrading it unless
    ``read_only``) and return the connection (autocommit; writes go through ``transaction``)
    and the schema version. Raises LedgerError for a file that is not a usable ledger."""
    if read_only and not path.is_file():
        raise LedgerError(f"no privacy ledger at {path}")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if read_only:
            uri = f"file:{path.resolve()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        else:
            conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    except sqlite3.OperationalError as err:
        raise LedgerError(f"privacy ledger {path} cannot be opened: {err}") from err
    try:
        return conn, _prepare(conn, path, read_only)
    except LedgerError:
        conn.close()
        raise
    except sqlite3.OperationalError:
        conn.close()
        raise  # locked, read-only, disk full: a real condition, not a damaged file
    except sqlite3.DatabaseError as err:
        conn.close()
        raise LedgerError(
            f"privacy ledger {path} is unreadable ({err}). It is not a SQLite file or is "
            "damaged; restore it from a backup. fedpriv never resets a ledger."
        ) from err


def _prepare(conn: sqlite3.Connection, path: Path, read_only: bool) -> int:
    """Check (and create or migrate, unless read-only) the schema; return its version."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if tables and "meta" not in tables:
        raise LedgerError(
            f"{path} is a SQLite file but not a fedpriv privacy ledger "
            f"(tables: {', '.join(sorted(tables))}); point the site at its own ledger file"
        )
    if read_only:
        return _check_meta(_meta(conn, path), path, read_only)
    with transaction(conn):
        if not tables:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        meta = _meta(conn, path)
        if not meta:
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema", SCHEMA_NAME),
                    ("version", str(SCHEMA_VERSION)),
                    ("legacy-release-max-id", "0"),
                ],
            )
            return SCHEMA_VERSION
        version = _check_meta(meta, path, read_only)
        while version < SCHEMA_VERSION:  # upgrade in place, in the same transaction
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
        return version


def _meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.OperationalError as err:
        raise LedgerError(f"{path} is not a fedpriv privacy ledger ({err})") from err


def _check_meta(meta: dict[str, str], path: Path, read_only: bool) -> int:
    if meta.get("schema") != SCHEMA_NAME:
        raise LedgerError(f"{path} is not a fedpriv privacy ledger (meta: {meta})")
    version = int(meta.get("version", "0"))
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} has ledger schema {version}, newer than this fedpriv "
            f"({SCHEMA_VERSION}); upgrade fedpriv"
        )
    if version not in MIGRATIONS and version != SCHEMA_VERSION:
        raise LedgerError(f"{path} has an unknown ledger schema version {version}")
    if read_only and version < SCHEMA_VERSION:
        raise LedgerError(
            f"{path} has ledger schema {version}; the next training round (or opening it "
            "with write access) upgrades it in place"
        )
    return version
