"""A site's epsilon lives in its ledger, not in a process: fresh processes per round (as in
deployment), a process killed between rounds and one killed mid-round, then a second run on
the same data. The epsilon the site reports equals dp-accounting's composition of every release
of both runs (a reservation whose process died counts: over-counting, never under)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.privacy.ledger import PrivacyLedger
from tests.reference_accountants import reference_pld

ROOT = Path(__file__).resolve().parents[2]


class SiteProcess:
    """``tests/client/site_process.py`` in its own process group, stopped by PID."""

    def __init__(self, tmp: Path, run_id: int, server_round: int, rounds: int, mode: str):
        args = [str(tmp / "sites.toml"), str(tmp / "results"), str(run_id), str(server_round)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.client.site_process", *args, str(rounds), mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"site process exited with {self.proc.wait()}"
        return line

    def reply(self) -> dict:
        return json.loads(self.line())

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def finish(self) -> None:
        assert self.proc.wait(timeout=300) == 0


def _releases(ledger_file: Path) -> list[tuple[float, float, int]]:
    with PrivacyLedger(ledger_file) as ledger:
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.rows()]


@pytest.mark.slow
def test_epsilon_survives_killed_processes_and_composes_over_two_runs(tmp_path: Path) -> None:
    ledger_file = tmp_path / "site-ledger.sqlite"
    (tmp_path / "sites.toml").write_text(
        f'[site.0]\nepsilon-budget = 10.0\nledger = "{ledger_file}"\n'
    )
    processes: list[SiteProcess] = []

    def start(run_id: int, server_round: int, rounds: int, mode: str) -> SiteProcess:
        processes.append(SiteProcess(tmp_path, run_id, server_round, rounds, mode))
        return processes[-1]

    try:
        # run 1, round 1: a long-lived process answers, then is killed while idle
        first = start(1, 1, 2, "linger")
        round_1 = first.reply()
        assert round_1["decision"]["status"] == "trained"
        first.kill()
        # run 1, round 2: killed mid-training, after its reservation
        doomed = start(1, 2, 2, "hang")
        assert doomed.line().strip() == "training"
        doomed.kill()
        assert [r[2] for r in _releases(ledger_file)] == [round_1["metrics"]["steps"]] * 2
        # the server retries round 2 in a fresh process
        retry = start(1, 2, 2, "reply")
        round_2 = retry.reply()
        retry.finish()
        # run 2 on the same data, two rounds, each in a fresh process
        run_2 = []
        for server_round in (1, 2):
            proc = start(2, server_round, 2, "reply")
            run_2.append(proc.reply())
            proc.finish()
    finally:
        for proc in processes:
            if proc.proc.poll() is None:
                proc.kill()

    for reply in (round_2, *run_2):
        assert reply["decision"]["status"] == "trained"
    run_1_releases = [
        (r["metrics"]["noise-multiplier"], r["metrics"]["sample-rate"], r["metrics"]["steps"])
        for r in (round_1, round_1, round_2)  # the killed round reserved what round 1 took
    ]
    run_2_releases = [
        (r["metrics"]["noise-multiplier"], r["metrics"]["sample-rate"], r["metrics"]["steps"])
        for r in run_2
    ]
    assert _releases(ledger_file) == run_1_releases + run_2_releases
    delta = run_2[-1]["metrics"]["delta"]
    expected = reference_pld(run_1_releases + run_2_releases, delta)
    assert run_2[-1]["metrics"]["epsilon-spent"] == pytest.approx(expected, rel=0.01)
    assert round_2["metrics"]["epsilon-spent"] == pytest.approx(
        reference_pld(run_1_releases, delta), rel=0.01
    )
    # each run was planned to cost 2.0 alone; together more than either, less than the sum
    alone = reference_pld(run_2_releases, delta)
    assert alone <= 2.0 * 1.01
    assert max(alone, round_2["metrics"]["epsilon-spent"]) < expected
    assert run_2[-1]["metrics"]["epsilon-left"] == pytest.approx(10.0 - expected, rel=0.01)
