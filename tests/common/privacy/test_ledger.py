"""common/privacy/ledger.py: the site's durable record of what was released, and its budget guard.

Epsilons are checked against dp-accounting events built here (PLD at its default discretisation)
or Opacus's RDP accountant fed the rows' (sigma, q, steps); never against accounting.py itself.
"""

import multiprocessing
import os
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.privacy.accounting import DpRelease
from common.privacy.ledger import (
    BudgetExceededError,
    LedgerError,
    LedgerRow,
    PrivacyLedger,
    RunPlan,
)
from tests.reference_accountants import opacus_rdp as _opacus_rdp
from tests.reference_accountants import reference_pld as _reference_pld

DELTA = 1e-5
FP = "a" * 64  # dataset fingerprints (sha256 hex digests)
OTHER_FP = "b" * 64


def reference_pld(batches, delta=DELTA):
    return _reference_pld(batches, delta)


def opacus_rdp(batches, delta=DELTA):
    return _opacus_rdp(batches, delta)


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


def reserve(
    ledger,
    release,
    *,
    fingerprint=FP,
    run_id="run-1",
    round_number=1,
    accountant="pld",
    epsilon_budget=1e3,
    delta=DELTA,
):
    return ledger.reserve(
        fingerprint,
        run_id,
        round_number,
        release,
        delta=delta,
        accountant=accountant,
        epsilon_budget=epsilon_budget,
    )


def batches(rows):
    return [(r.noise_multiplier, r.sample_rate, r.steps) for r in rows]


# --- opening -------------------------------------------------------------------------------
def test_a_new_ledger_is_empty_and_its_folder_is_created(ledger_path):
    assert not ledger_path.parent.exists()
    with PrivacyLedger(ledger_path) as fresh:
        assert fresh.rows() == [] and fresh.datasets() == []
        assert fresh.epsilon_spent(FP, DELTA) == 0.0
        assert fresh.run_plan(FP, "run-1") is None
    assert ledger_path.is_file()


# --- recording and recomputing -------------------------------------------------------------
def test_epsilon_spent_is_the_composition_of_every_row(ledger):
    # run 1: two rounds released in full; run 2: one round stopped after 20 of 30 steps, and
    # one reserved round whose process died before marking it (it still counts).
    for run_id, round_number, release, done in [
        ("run-1", 1, DpRelease(1.0, 0.01, 50), 50),
        ("run-1", 2, DpRelease(1.0, 0.01, 50), 50),
        ("run-2", 1, DpRelease(0.8, 0.02, 30), 20),
        ("run-2", 2, DpRelease(0.8, 0.02, 30), None),
    ]:
        row_id = reserve(ledger, release, run_id=run_id, round_number=round_number)
        if done is not None:
            ledger.mark_released(row_id, done)

    rows = ledger.rows(FP)
    assert [(r.run_id, r.round, r.status) for r in rows] == [
        ("run-1", 1, "released"),
        ("run-1", 2, "released"),
        ("run-2", 1, "released"),
        ("run-2", 2, "reserved"),
    ]
    recorded = [(1.0, 0.01, 50), (1.0, 0.01, 50), (0.8, 0.02, 20), (0.8, 0.02, 30)]
    assert batches(rows) == recorded
    assert all(r.delta == DELTA and r.accountant == "pld" for r in rows)
    assert all(time.time() - 60 < r.recorded_at <= time.time() for r in rows)

    spent = ledger.epsilon_spent(FP, DELTA, "pld")
    assert spent == pytest.approx(reference_pld(recorded), rel=0.01)
    assert ledger.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(opacus_rdp(recorded), rel=0.01)
    assert ledger.epsilon_spent(FP, DELTA, "pld") < ledger.epsilon_spent(FP, DELTA, "rdp")


def test_each_dataset_has_its_own_spend(ledger):
    reserve(ledger, DpRelease(1.0, 0.02, 100))
    reserve(ledger, DpRelease(2.0, 0.05, 40), fingerprint=OTHER_FP)
    assert batches(ledger.rows(FP)) == [(1.0, 0.02, 100)]
    assert batches(ledger.rows(OTHER_FP)) == [(2.0, 0.05, 40)]
    assert len(ledger.rows()) == 2
    for fingerprint, history in [(FP, [(1.0, 0.02, 100)]), (OTHER_FP, [(2.0, 0.05, 40)])]:
        spent = ledger.epsilon_spent(fingerprint, DELTA, "rdp")
        assert spent == pytest.approx(opacus_rdp(history), rel=0.01)


def test_rows_plans_and_datasets_survive_closing_and_reopening(ledger_path):
    plan = RunPlan(1.1, 0.02, 50, 5, 4.0, DELTA, "pld", 1.1)
    with PrivacyLedger(ledger_path) as first:
        first.register_dataset(FP, "heart-disease/site-1", 270)
        first.save_run_plan(FP, "run-1", plan)
        released = reserve(first, DpRelease(1.1, 0.02, 50))
        first.mark_released(released, 50)
        reserve(first, DpRelease(1.1, 0.02, 50), round_number=2)  # left reserved: still counts
        rows = first.rows()
    with PrivacyLedger(ledger_path) as second:  # what the next ClientApp process does
        assert second.rows() == rows
        assert [r.status for r in second.rows(FP)] == ["released", "reserved"]
        assert second.run_plan(FP, "run-1") == plan
        assert second.datasets() == [(FP, "heart-disease/site-1", 270)]
        history = [(1.1, 0.02, 50), (1.1, 0.02, 50)]
        assert second.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(
            opacus_rdp(history), rel=0.01
        )


def test_rows_are_ledger_rows_with_their_release(ledger):
    row_id = reserve(ledger, DpRelease(1.3, 0.04, 25), run_id="r", round_number=7)
    (row,) = ledger.rows(FP)
    assert isinstance(row, LedgerRow)
    assert (row.id, row.fingerprint, row.run_id, row.round) == (row_id, FP, "r", 7)
    assert row.release == DpRelease(1.3, 0.04, 25)


# --- the budget guard ----------------------------------------------------------------------
def test_a_round_over_the_budget_is_refused_and_nothing_is_recorded(ledger):
    round_ = DpRelease(1.0, 0.02, 100)
    reserve(ledger, round_, accountant="rdp")
    reserve(ledger, round_, accountant="rdp", round_number=2)
    two_rounds = opacus_rdp([(1.0, 0.02, 100)] * 2)
    three_rounds = opacus_rdp([(1.0, 0.02, 100)] * 3)
    assert three_rounds > 1.1 * two_rounds  # the budget below sits well clear of both
    budget = (two_rounds + three_rounds) / 2
    rows = ledger.rows()

    with pytest.raises(BudgetExceededError, match="budget") as refused:
        reserve(ledger, round_, accountant="rdp", round_number=3, epsilon_budget=budget)
    assert refused.value.epsilon_spent == pytest.approx(two_rounds, rel=0.01)
    assert refused.value.epsilon_after == pytest.approx(three_rounds, rel=0.01)
    assert refused.value.epsilon_budget == budget
    assert refused.value.epsilon_after > budget
    assert ledger.rows() == rows

    # a smaller release that fits is still accepted after a refusal
    reserve(
        ledger, DpRelease(1.0, 0.02, 5), accountant="rdp", round_number=3, epsilon_budget=budget
    )
    assert len(ledger.rows()) == 3
    assert ledger.epsilon_spent(FP, DELTA, "rdp") <= budget


def test_the_budget_counts_every_run_on_the_dataset(ledger):
    # run 2's first round is refused: alone it would fit, after run 1 it does not
    first, second = (1.0, 0.05, 100), (1.2, 0.05, 100)
    fits_alone = max(opacus_rdp([first]), opacus_rdp([second]))
    together = opacus_rdp([first, second])
    assert together > 1.1 * fits_alone
    budget = (fits_alone + together) / 2
    reserve(ledger, DpRelease(*first), run_id="run-1", accountant="rdp", epsilon_budget=budget)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, DpRelease(*second), run_id="run-2", accountant="rdp", epsilon_budget=budget)
    assert [r.run_id for r in ledger.rows(FP)] == ["run-1"]


@pytest.mark.parametrize("accountant", ["prv", "PLD", ""])
def test_an_unknown_accountant_is_refused_and_nothing_is_recorded(ledger, accountant):
    with pytest.raises(ValueError, match="unknown accountant"):
        reserve(ledger, DpRelease(1.0, 0.02, 10), accountant=accountant)
    assert ledger.rows() == []


@pytest.mark.parametrize("delta", [0.0, 1.0, float("nan")])
def test_a_bad_delta_is_refused_and_nothing_is_recorded(ledger, delta):
    with pytest.raises(ValueError, match="delta"):
        reserve(ledger, DpRelease(1.0, 0.02, 10), delta=delta)
    assert ledger.rows() == []


def test_a_nan_budget_records_nothing(ledger):
    with pytest.raises((ValueError, BudgetExceededError)):
        reserve(ledger, DpRelease(0.5, 0.5, 1000), epsilon_budget=float("nan"))
    assert ledger.rows() == []


# --- marking and cancelling ----------------------------------------------------------------
def test_cancel_removes_only_a_reserved_row(ledger):
    released = reserve(ledger, DpRelease(1.0, 0.02, 10))
    ledger.mark_released(released, 10)
    pending = reserve(ledger, DpRelease(1.0, 0.02, 10), round_number=2)
    other = reserve(ledger, DpRelease(1.0, 0.02, 10), round_number=3)

    ledger.cancel(released)  # already left the site: must stay
    ledger.cancel(pending)
    ledger.cancel(10_000)  # no such row: nothing happens
    assert [(r.id, r.status) for r in ledger.rows()] == [
        (released, "released"),
        (other, "reserved"),
    ]


def test_mark_released_records_the_steps_actually_taken(ledger):
    row_id = reserve(ledger, DpRelease(1.0, 0.02, 30))
    ledger.mark_released(row_id, 12)
    (row,) = ledger.rows()
    assert (row.status, row.steps) == ("released", 12)
    assert ledger.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(
        opacus_rdp([(1.0, 0.02, 12)]), rel=0.01
    )


# --- run plans and datasets ----------------------------------------------------------------
def test_the_first_run_plan_saved_wins(ledger_path):
    first = RunPlan(1.2, 0.02, 40, 5, 4.0, DELTA, "pld", 1.0)
    second = RunPlan(0.7, 0.05, 80, 10, 8.0, 1e-6, "rdp", 0.7)
    with PrivacyLedger(ledger_path) as ledger:
        assert ledger.save_run_plan(FP, "run-1", first) == first
        assert ledger.save_run_plan(FP, "run-1", second) == first
        assert ledger.save_run_plan(FP, "run-2", second) == second
        assert ledger.save_run_plan(OTHER_FP, "run-1", second) == second
    with PrivacyLedger(ledger_path) as reopened:
        assert reopened.save_run_plan(FP, "run-1", second) == first
        assert reopened.run_plan(FP, "run-1") == first
        assert reopened.run_plan(FP, "run-3") is None


def test_a_dataset_is_registered_once(ledger):
    ledger.register_dataset(FP, "site-1", 100)
    ledger.register_dataset(FP, "site-1 again", 100)
    ledger.register_dataset(OTHER_FP, "site-2", 50)
    assert sorted(ledger.datasets()) == [(FP, "site-1", 100), (OTHER_FP, "site-2", 50)]


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


# --- two processes at once -----------------------------------------------------------------
ROUND = DpRelease(1.0, 0.02, 100)


def _reserve_from_another_process(path, budget, barrier, results):
    """One ClientApp process: open the ledger, wait for the other, reserve a round."""
    ledger = PrivacyLedger(path)
    try:
        barrier.wait(timeout=120)
        row_id = reserve(ledger, ROUND, run_id=f"run-{os.getpid()}", epsilon_budget=budget)
        results.put(("reserved", row_id))
    except BudgetExceededError as err:
        results.put(("refused", err.epsilon_spent, err.epsilon_after, err.epsilon_budget))
    except BaseException as err:  # reported to the parent, which fails the test
        results.put(("error", repr(err)))
    finally:
        ledger.close()


def test_two_processes_cannot_both_take_the_last_round(ledger_path):
    with PrivacyLedger(ledger_path) as ledger:
        for round_number in (1, 2):
            reserve(ledger, ROUND, round_number=round_number)
    three = reference_pld([(1.0, 0.02, 100)] * 3)
    four = reference_pld([(1.0, 0.02, 100)] * 4)
    budget = (three + four) / 2  # room for exactly one more round

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_reserve_from_another_process, args=(str(ledger_path), budget, barrier, results)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted((results.get(timeout=180) for _ in workers), key=lambda o: o[0])
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert [o[0] for o in outcomes] == ["refused", "reserved"], outcomes
    _, spent, after, refused_budget = outcomes[0]
    assert spent == pytest.approx(three, rel=0.01)
    assert after == pytest.approx(four, rel=0.01)
    assert after > refused_budget == budget
    with PrivacyLedger(ledger_path) as ledger:
        assert len(ledger.rows(FP)) == 3
        assert ledger.epsilon_spent(FP, DELTA) <= budget


# --- property: whatever happens, the ledger stays within the budget -------------------------
# Full-batch releases (q = 1) keep RDP cheap, so hundreds of sequences fit in seconds.
RELEASES = st.builds(
    DpRelease,
    noise_multiplier=st.floats(0.5, 20.0),
    sample_rate=st.just(1.0),
    steps=st.integers(0, 20),
)
AFTERWARDS = st.sampled_from(["released", "released early", "cancelled", "left reserved"])
# The property is about the guard, not the disk: a RAM-backed folder where there is one (a
# commit's fsync on a real disk costs ~20 ms; 200 sequences would take minutes).
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
OPERATIONS = st.lists(
    st.tuples(st.sampled_from([FP, OTHER_FP]), RELEASES, AFTERWARDS), min_size=1, max_size=10
)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(budget=st.floats(0.05, 30.0), delta=st.sampled_from([1e-6, 1e-5, 1e-3]), ops=OPERATIONS)
def test_property_epsilon_never_exceeds_the_budget(budget, delta, ops):
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp, PrivacyLedger(Path(tmp) / "l") as ledger:
        for round_number, (fingerprint, release, afterwards) in enumerate(ops):
            spent = ledger.epsilon_spent(fingerprint, delta, "rdp")
            rows = ledger.rows()
            try:
                row_id = reserve(
                    ledger,
                    release,
                    fingerprint=fingerprint,
                    accountant="rdp",
                    round_number=round_number,
                    epsilon_budget=budget,
                    delta=delta,
                )
            except BudgetExceededError as err:
                assert err.epsilon_after > budget
                assert err.epsilon_spent == spent
                assert err.epsilon_budget == budget
                assert ledger.rows() == rows  # nothing recorded
                continue
            assert len(ledger.rows()) == len(rows) + 1
            if afterwards == "released":
                ledger.mark_released(row_id, release.steps)
            elif afterwards == "released early":
                ledger.mark_released(row_id, release.steps // 2)
            elif afterwards == "cancelled":
                ledger.cancel(row_id)
            for key in (FP, OTHER_FP):
                assert ledger.epsilon_spent(key, delta, "rdp") <= budget


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


def test_a_non_private_release_voids_every_epsilon_bound_on_that_dataset(ledger):
    reserve(ledger, DpRelease(1.0, 0.02, 10))
    ledger.record_non_private(FP, "baseline", 3)
    assert ledger.non_private_rounds(FP) == [("baseline", 3)]
    assert ledger.epsilon_spent(FP, DELTA) == float("inf")
    assert ledger.epsilon_spent(OTHER_FP, DELTA) == 0.0  # other datasets keep their bound
    with pytest.raises(BudgetExceededError, match="without DP"):
        reserve(ledger, DpRelease(50.0, 0.01, 1), round_number=4)
    assert len(ledger.rows(FP)) == 1


def test_runs_list_each_plan_with_released_and_reserved_rounds(ledger):
    plan = RunPlan(1.1, 0.02, 50, 5, 4.0, DELTA, "pld", 0.9)
    ledger.save_run_plan(FP, "run-1", plan)
    ledger.save_run_plan(OTHER_FP, "run-1", plan)
    for round_number in (1, 2):
        ledger.mark_released(
            reserve(ledger, DpRelease(1.1, 0.02, 50), round_number=round_number), 50
        )
    reserve(ledger, DpRelease(1.1, 0.02, 50), round_number=3)  # a crash mid-round
    (run,) = ledger.runs(FP)
    assert (run.run_id, run.plan, run.rounds, run.reserved) == ("run-1", plan, 2, 1)
    assert [r.fingerprint for r in ledger.runs()] == [FP, OTHER_FP]
    assert ledger.rounds_recorded(FP, "run-1") == 3
    assert ledger.rounds_recorded(OTHER_FP, "run-1") == 0
