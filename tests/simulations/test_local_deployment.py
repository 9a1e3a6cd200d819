"""A real deployment on 127.0.0.1: TLS SuperLink with SuperNode authentication, three sites each
with its own site service (data file, policy, ledger) and a SuperNode (its key) whose ClientApp
only forwards to that service. Runs go through ``flwr run``; every process is started here on
free ports and stopped by PID (simulations/local_deployment.py)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from client import site_cli
from client.site_data import load_site_data
from common.certificates import make_site_key
from common.config import RunSettings, SiteSettings
from common.privacy.ledger import PrivacyLedger
from simulations.local_deployment import LocalFederation

SITES = ("site-a", "site-b", "site-c")
BASE_RUN = {
    "model": "logreg",
    "target-epsilon": 2.0,
    "min-train-nodes": 2,
    "round-timeout": 90.0,
    "server-eval-max-records": 60,
}


def _write_site_file(settings: RunSettings, partition: int, path: Path) -> None:
    """A hospital's own CSV (its heart-disease records), as a site would hold it."""
    records = load_site_data(settings, SiteSettings(), partition, 4).train
    frame = pd.DataFrame(records.features, columns=records.feature_names)
    frame["label"] = [records.class_names[i] for i in records.labels]
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    work = tmp_path_factory.mktemp("deployment")
    before = {p.pid for p in psutil.process_iter()}
    with LocalFederation(work) as fed:
        for partition, name in enumerate(SITES):
            _write_site_file(RunSettings(), partition, work / f"{name}.csv")
            (work / f"{name}-policy.toml").write_text(
                f'name = "{name}"\nepsilon-budget = 1000.0\nledger = "{work}/{name}.sqlite"\n'
                f'data-file = "{work / (name + ".csv")}"\nlabel-column = "label"\n'
            )
            fed.add_site(name, work / f"{name}-policy.toml", fed.register(name))
        fed.wait_online(len(SITES))
        yield fed
    leftover = [
        " ".join(p.cmdline())
        for p in psutil.process_iter()
        if p.pid not in before and _is_flower(p) and _ours(p, work)
    ]
    assert not leftover, f"processes left running: {leftover}"


def _node_config(fed: LocalFederation, name: str) -> dict[str, str]:
    return {"site-service": fed.services[name].address}


def _is_flower(proc: psutil.Process) -> bool:
    try:
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    names = ("flower-superlink", "flower-supernode", "flwr-", "superexec", "client.site_cli")
    return any(n in line for n in names)


def _ours(proc: psutil.Process, work: Path) -> bool:
    """Started by this federation (other runs may share the machine): its command line or its
    FLWR_HOME lies under ``work``."""
    try:
        return str(work) in " ".join(proc.cmdline()) or str(work) in proc.environ().get(
            "FLWR_HOME", ""
        )
    except psutil.Error:
        return False


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _wait_for_round_1(partial: Path, timeout: float = 300) -> None:
    """Until the running run's metrics file holds round 0 and round 1."""
    metrics = partial / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, "round 1 never completed"
        time.sleep(0.5)


def _ledger_rounds(fed: LocalFederation, site: str, run_key: str) -> list[int]:
    with PrivacyLedger(fed.workdir / f"{site}.sqlite") as ledger:
        return [r.round for r in ledger.rows() if r.run_id == run_key and r.status == "released"]


@pytest.mark.slow
def test_two_rounds_over_tls_with_authenticated_sites(federation: LocalFederation) -> None:
    results = federation.workdir / "results"
    run_id = federation.submit(
        BASE_RUN | {"num-server-rounds": 2, "run-name": "tls", "results-dir": str(results)}
    )
    status = federation.run_status(run_id)
    assert status["status"] == "finished:completed", status
    folder = results / "tls"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds-completed"] == 2
    assert set(summary["sites"]) == set(SITES)  # the sites' own names, from their replies
    assert [r["round"] for r in _rounds(folder)] == [0, 1, 2]
    for site in SITES:
        assert _ledger_rounds(federation, site, summary["run-key"]) == [1, 2]
        assert 0 < summary["sites"][site]["epsilon-spent"] <= 2.0 + 1e-6
    assert (folder / "model" / "tabular_model.pt").is_file()


@pytest.mark.slow
def test_unregistered_and_plaintext_supernodes_are_refused(federation: LocalFederation) -> None:
    work = federation.workdir
    stranger, _ = make_site_key(work / "stranger-keys", "stranger")  # never registered
    registered = federation.register("late-site")
    config = _node_config(federation, "site-a")
    attempts = {
        "unregistered": federation.start_supernode("unregistered", config, stranger),
        "plaintext": federation.start_supernode(
            "plaintext", config, None, tls=False, extra=("--max-retries", "2")
        ),
        "plaintext-with-key": federation.start_supernode(
            "plaintext-key", config, registered, tls=False
        ),
    }
    for what, node in attempts.items():
        assert node.process.wait(timeout=120) != 0, what
        federation.supernodes.pop(node.name)
    assert "Failed to activate SuperNode" in attempts["unregistered"].log()
    assert "requires a secure TLS connection" in attempts["plaintext-with-key"].log()
    # gRPC words a plaintext client against a TLS server either way, depending on timing
    plaintext = attempts["plaintext"].log()
    assert "Server disconnected" in plaintext or "Connection attempt failed" in plaintext
    assert federation.online_nodes() == len(SITES)


@pytest.mark.slow
def test_a_killed_serverapp_resumes_without_losing_or_repeating_a_round(
    federation: LocalFederation,
) -> None:
    results = federation.workdir / "results"
    run = BASE_RUN | {
        "num-server-rounds": 3,
        "run-name": "resumable",
        "results-dir": str(results),
        "fraction-evaluate": 0.0,
        "min-evaluate-nodes": 0,
    }
    first = threading.Thread(target=federation.submit, args=(run, io.StringIO()))
    first.start()
    _wait_for_round_1(results / "resumable.partial")
    killed = federation.serverapp_processes()
    assert killed
    for proc in killed:
        proc.kill()
    first.join(timeout=300)
    round_1 = _rounds(results / "resumable.partial")[1]

    run_id = federation.submit(run | {"resume": True})
    assert federation.run_status(run_id)["status"] == "finished:completed"
    folder = results / "resumable"
    rounds = _rounds(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # each round once
    assert summary["rounds-completed"] == 3 and len(summary["flower-run-ids"]) == 2
    (resumed,) = summary["resumed"]
    # the resumed run started from exactly the model of round 1 ...
    assert (resumed["after-round"], resumed["model-sha256"]) == (1, round_1["model-sha256"])
    assert rounds[1]["model-sha256"] == round_1["model-sha256"]
    # ... and the saved model is round 3's
    assert summary["model-sha256"] == rounds[3]["model-sha256"]
    assert len({r["model-sha256"] for r in rounds}) == 4
    for site in SITES:  # the ledger keeps every release, a round redone after the kill too
        trained = _ledger_rounds(federation, site, summary["run-key"])
        assert set(trained) == {1, 2, 3} and trained == sorted(trained)


@pytest.mark.slow
def test_a_stopped_site_service_is_a_refusal_and_a_restarted_one_keeps_its_ledger(
    federation: LocalFederation,
) -> None:
    results = federation.workdir / "results"
    before = _ledger_rows(federation.workdir / "site-c.sqlite")
    assert federation.stop_site_service("site-c") == 0  # SIGTERM: a clean stop
    run = BASE_RUN | {
        "num-server-rounds": 1,
        "run-name": "service-down",
        "results-dir": str(results),
        "fraction-evaluate": 0.0,
        "min-evaluate-nodes": 0,
    }
    try:
        run_id = federation.submit(run)
    finally:
        federation.start_site_service("site-c", federation.workdir / "site-c-policy.toml")
    assert federation.run_status(run_id)["status"] == "finished:completed"
    (round_1,) = _rounds(results / "service-down")[1:]
    assert round_1["trained-sites"] == 2
    refused = round_1["sites"]["site-c"]
    assert refused["status"] == "site service unavailable"
    assert "cannot connect to unix://" in refused["reason"]
    summary = json.loads((results / "service-down" / "summary.json").read_text())
    assert _ledger_rounds(federation, "site-c", summary["run-key"]) == []
    assert _ledger_rows(federation.workdir / "site-c.sqlite") == before
    # the restarted service answers from the same state on disk: ledger and activity log
    out = io.StringIO()
    sock = federation.services["site-c"].socket
    assert site_cli.main(["status", "--socket", str(sock), "--json"], out) == 0
    status = json.loads(out.getvalue())
    assert status["ledger"] == str(federation.workdir / "site-c.sqlite")
    assert len(status["datasets"]) == (1 if before else 0)


def _ledger_rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with PrivacyLedger(path, read_only=True) as ledger:
        return [(r.run_id, r.round, r.status) for r in ledger.rows()]


@pytest.mark.slow
def test_a_site_killed_mid_run_is_recorded_as_dropped_out(federation: LocalFederation) -> None:
    results = federation.workdir / "results"
    run = BASE_RUN | {
        "num-server-rounds": 3,
        "run-name": "dropout",
        "results-dir": str(results),
        "fraction-evaluate": 0.0,
        "min-evaluate-nodes": 0,
        "round-timeout": 60.0,
    }
    done: list[str] = []
    runner = threading.Thread(target=lambda: done.append(federation.submit(run, io.StringIO())))
    runner.start()
    _wait_for_round_1(results / "dropout.partial")
    federation.kill_supernode("site-c")
    runner.join(timeout=600)
    assert federation.run_status(done[0])["status"] == "finished:completed"
    summary = json.loads((results / "dropout" / "summary.json").read_text())
    rounds = _rounds(results / "dropout")
    assert [r["trained-sites"] for r in rounds[1:]] == [3, 2, 2]
    assert rounds[2]["dropped"] == ["site-c"]
    assert summary["sites"]["site-c"]["dropped-rounds"] == [2]
    assert summary["sites"]["site-c"]["rounds-trained"] == 1
    assert summary["rounds-completed"] == 3
