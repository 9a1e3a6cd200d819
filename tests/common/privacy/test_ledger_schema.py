"""common/privacy/ledger_schema.py: opening the ledger file, refusing what is not a ledger,
upgrading an older schema in place."""

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from common.privacy.accounting import DpRelease
from common.privacy.ledger import LedgerError, PrivacyLedger, RunPlan
from tests.common.privacy.ledger_support import FP, reserve


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


# --- files that are not our ledger ---------------------------------------------------------


def write_foreign_db(path, statements):
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(statements)
        conn.commit()


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).bytes(8192),
        b"SQLite format 3\x00" + np.random.default_rng(1).bytes(8192 - 16),
        b"not a database, just some notes\n",
    ],
    ids=["random-bytes", "sqlite-header-then-garbage", "text"],
)
def test_a_corrupt_file_raises_and_is_left_untouched(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match="unreadable"):
        PrivacyLedger(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]


@pytest.mark.parametrize(
    "statements, message",
    [
        (
            "CREATE TABLE patients (id INTEGER, age INTEGER); INSERT INTO patients VALUES (1, 63);",
            "not a fedpriv privacy ledger",
        ),
        (
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema', 'somebody-else');",
            "not a fedpriv privacy ledger",
        ),
        pytest.param(
            "CREATE TABLE meta (id INTEGER, blob BLOB); INSERT INTO meta VALUES (1, x'00');",
            "not a fedpriv privacy ledger|unreadable",
        ),
    ],
    ids=["other-tables", "other-meta", "meta-with-other-columns"],
)
def test_a_foreign_sqlite_db_raises_and_is_left_untouched(tmp_path, statements, message):
    path = tmp_path / "someone-elses.sqlite"
    write_foreign_db(path, statements)
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=message):
        PrivacyLedger(path)
    assert path.read_bytes() == before


def test_a_ledger_from_a_newer_fedpriv_raises(ledger_path):
    PrivacyLedger(ledger_path).close()
    with closing(sqlite3.connect(ledger_path)) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
        conn.commit()
    with pytest.raises(LedgerError, match="newer"):
        PrivacyLedger(ledger_path)


# --- schema 1 ledgers, read-only access, the operator's summaries ----------------------------
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE datasets (fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL,
    num_records INTEGER NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE runs (fingerprint TEXT NOT NULL, run_id TEXT NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps_per_round INTEGER NOT NULL,
    planned_rounds INTEGER NOT NULL, target_epsilon REAL NOT NULL, delta REAL NOT NULL,
    accountant TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (fingerprint, run_id));
CREATE TABLE releases (id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL, round INTEGER NOT NULL, noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL, steps INTEGER NOT NULL, delta REAL NOT NULL,
    accountant TEXT NOT NULL, status TEXT NOT NULL, recorded_at REAL NOT NULL);
INSERT INTO meta VALUES ('schema', 'fedpriv-ledger'), ('version', '1');
INSERT INTO runs VALUES ('{fp}', 'run-1', 1.1, 0.02, 50, 5, 4.0, 1e-5, 'rdp', 1.0);
INSERT INTO releases VALUES (1, '{fp}', 'run-1', 1, 1.1, 0.02, 50, 1e-5, 'rdp', 'released', 2.0);
"""


def _schema_1_ledger(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_1.format(fp=FP))


def test_a_schema_1_ledger_is_upgraded_in_place_keeping_every_row(ledger_path):
    _schema_1_ledger(ledger_path)
    with pytest.raises(LedgerError, match="schema 1"):
        PrivacyLedger(ledger_path, read_only=True)  # the operator view never writes
    with PrivacyLedger(ledger_path) as ledger:
        (row,) = ledger.rows(FP)
        assert (row.release, row.epsilon_budget) == (DpRelease(1.1, 0.02, 50), None)
        assert ledger.run_plan(FP, "run-1") == RunPlan(1.1, 0.02, 50, 5, 4.0, 1e-5, "rdp", 1.1)
        reserve(ledger, DpRelease(1.1, 0.02, 50), round_number=2, epsilon_budget=9.0)
        assert ledger.rows(FP)[-1].epsilon_budget == 9.0
    with closing(sqlite3.connect(ledger_path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='version'").fetchone() == ("3",)


def test_read_only_access_needs_an_existing_ledger_and_writes_nothing(ledger_path):
    with pytest.raises(LedgerError, match="no privacy ledger"):
        PrivacyLedger(ledger_path, read_only=True)
    assert not ledger_path.exists() and not ledger_path.parent.exists()
    with PrivacyLedger(ledger_path) as ledger:
        reserve(ledger, DpRelease(1.0, 0.02, 10))
    before = ledger_path.read_bytes()
    with PrivacyLedger(ledger_path, read_only=True) as ledger:
        assert len(ledger.rows(FP)) == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reserve(ledger, DpRelease(1.0, 0.02, 10), round_number=2)
    assert ledger_path.read_bytes() == before
