"""client/ledger_cli.py: ``fedpriv-ledger``, the site operator's read-only view."""

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from client.gate import reserve_within_budget
from client.ledger_cli import main
from common.privacy.accounting import DpRelease
from common.privacy.ledger import PrivacyLedger, RunPlan
from tests.reference_accountants import reference_pld

FP = "c" * 64


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "site" / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        ledger.register_dataset(FP, "Cleveland", 240)
        ledger.save_run_plan(FP, "77", RunPlan(1.2, 0.05, 20, 2, 3.0, 1e-4, "pld", 1.2))
        for number in (1, 2):
            row = reserve_within_budget(
                ledger,
                FP,
                "77",
                number,
                DpRelease(1.2, 0.05, 20),
                delta=1e-4,
                accountant="pld",
                epsilon_budget=5.0,
            )
            ledger.mark_released(row, 20)
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_the_default_view_is_a_table_of_datasets(ledger_path):
    code, text = run("--ledger", str(ledger_path))
    assert code == 0
    header, row = text.splitlines()[1:3]
    assert header.split()[:3] == ["dataset", "fingerprint", "records"]
    spent = reference_pld([(1.2, 0.05, 20)] * 2, 1e-4)
    assert row.split()[:5] == ["Cleveland", FP[:12], "240", "1", "2"]
    assert f"{spent:.4f}" in row and f"{5.0 - spent:.4f}" in row


def test_json_views_of_datasets_runs_and_rounds(ledger_path):
    code, text = run("--ledger", str(ledger_path), "--json")
    (dataset,) = json.loads(text)
    assert code == 0 and dataset["epsilon-budget"] == 5.0
    _, text = run("--ledger", str(ledger_path), "--json", "runs")
    assert [r["run"] for r in json.loads(text)] == ["77"]
    _, text = run(
        "--ledger", str(ledger_path), "--json", "--dataset", "ccc", "rounds", "--run", "77"
    )
    assert [r["round"] for r in json.loads(text)] == [1, 2]


def test_a_policy_file_names_the_ledger_and_the_budget(ledger_path, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(f'epsilon-budget = 8.0\nledger = "{ledger_path}"\n')
    code, text = run("--policy", str(policy), "--json")
    assert code == 0 and json.loads(text)[0]["epsilon-budget"] == 8.0


@pytest.mark.parametrize("kind", ["json", "csv", "sqlite"])
def test_export_writes_a_new_file_and_never_overwrites(ledger_path, tmp_path, kind):
    target = tmp_path / "out" / f"ledger.{kind}"
    assert (
        run("--ledger", str(ledger_path), "export", "--out", str(target), "--format", kind)[0] == 0
    )
    if kind == "json":
        assert len(json.loads(target.read_text())["releases"]) == 2
    elif kind == "csv":
        rows = list(csv.DictReader(target.open()))
        assert [r["round"] for r in rows] == ["1", "2"] and rows[0]["status"] == "released"
    else:
        with sqlite3.connect(target) as copy:
            assert copy.execute("SELECT COUNT(*) FROM releases").fetchone() == (2,)
    before = target.read_bytes()
    assert run("--ledger", str(ledger_path), "export", "--out", str(target))[0] == 2
    assert target.read_bytes() == before


def test_errors_are_one_line_and_exit_2(ledger_path, tmp_path, capsys):
    assert run("--ledger", str(tmp_path / "none.sqlite"))[0] == 2
    assert "no privacy ledger" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()
    assert run("--ledger", str(ledger_path), "--dataset", "zz")[0] == 2
    assert "no dataset in the ledger match 'zz'" in capsys.readouterr().err
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    assert run("--ledger", str(foreign))[0] == 2
    assert "not a fedpriv privacy ledger" in capsys.readouterr().err


def test_the_view_writes_nothing(ledger_path):
    before = ledger_path.read_bytes()
    run("--ledger", str(ledger_path), "rounds")
    assert ledger_path.read_bytes() == before


def test_the_console_script_is_installed():
    import shutil

    assert shutil.which("fedpriv-ledger") or Path(".venv/bin/fedpriv-ledger").exists()
