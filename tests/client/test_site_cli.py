"""client/site_cli.py: ``fedpriv-site serve`` as its own process (socket 0660, SIGTERM stops it
cleanly), ``fedpriv-site status`` from the running service and from its files."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from client import site_cli
from client import site_wire as wire
from client.site_shim import Endpoint, call
from common.config import ConfigError
from tests.client.deployed_site import ROOT, RUN_CONFIG, train_content, write_site


def test_serve_answers_reports_status_and_stops_on_sigterm() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fps-", dir="/tmp"))
    policy = write_site(folder / "site", budget=30.0)
    sock, state = folder / "site.sock", folder / "state"
    log = (folder / "serve.log").open("wb")
    command = [sys.executable, "-m", "client.site_cli", "serve", "--policy", str(policy)]
    command += ["--socket", str(sock), "--state-dir", str(state), "--timeout", "5"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "serving site" not in (folder / "serve.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                folder / "serve.log"
            ).read_text()
            time.sleep(0.2)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        reply = call(
            Endpoint(f"unix://{sock}", path=sock),
            wire.Request("train", 3, RUN_CONFIG, train_content(RUN_CONFIG)),
            timeout=120,
        )
        assert reply.ok and dict(reply.content["decision"])["status"] == "trained"
        spent = reply.content["metrics"]["epsilon-spent"]

        out = io.StringIO()
        assert site_cli.main(["status", "--socket", str(sock), "--json"], out) == 0
        status = json.loads(out.getvalue())
        assert status["service"]["pid"] == proc.pid and status["site"] == "site-a"
        (dataset,) = status["datasets"]
        assert dataset["epsilon-spent"] == pytest.approx(spent)
        assert dataset["epsilon-left"] == pytest.approx(30.0 - spent)
        assert [r["kind"] for r in status["requests"]] == ["train"]
        assert status["connections"][0]["uid"] == os.getuid()

        text = io.StringIO()
        assert site_cli.main(["status", "--socket", str(sock)], text) == 0
        assert "train    run 3 round 1  trained" in text.getvalue()
        assert f"service pid {proc.pid}" in text.getvalue()
        assert stat.S_IMODE(Path(json.loads(out.getvalue())["ledger"]).stat().st_mode) == 0o600

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not sock.exists()  # removed on a clean stop
        assert "stopped" in (folder / "serve.log").read_text()

        offline = io.StringIO()  # the same view from the files, while no service runs
        args = ["status", "--policy", str(policy), "--state-dir", str(state), "--json"]
        assert site_cli.main(args, offline) == 0
        record = json.loads(offline.getvalue())
        assert record["datasets"][0]["epsilon-spent"] == pytest.approx(spent)
        assert [r["kind"] for r in record["requests"]][:2] == ["train", "status"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder)


def test_status_without_a_service_says_so(tmp_path: Path, capsys) -> None:
    assert site_cli.main(["status", "--socket", str(tmp_path / "none.sock")]) == 2
    assert "is fedpriv-site serve running?" in capsys.readouterr().err


def test_a_policy_without_data_or_budget_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "a"\nepsilon-budget = 1.0\n')
    with pytest.raises(ConfigError, match="set data-file"):
        site_cli.load_policy(str(policy))
    (tmp_path / "x.csv").write_text("a,label\n1,0\n")
    policy.write_text(f'name = "a"\ndata-file = "{tmp_path / "x.csv"}"\n')
    with pytest.raises(ConfigError, match="set epsilon-budget"):
        site_cli.load_policy(str(policy))
