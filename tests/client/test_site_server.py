"""client/site_server.py against a real running service on a Unix socket: malformed, oversized,
mistyped, unknown and random requests are each refused with a reason and change nothing; the
service keeps serving; hung and vanished clients do not block it or break its ledger."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client import site_wire as wire
from client.site import SiteService
from client.site_activity import ACTIVITY_FILE, ActivityLog
from client.site_cli import load_policy, status_record
from client.site_server import SiteServer, auth_answer
from client.site_shim import Endpoint, call
from common.privacy.ledger import PrivacyLedger
from tests.client.deployed_site import RUN_CONFIG, train_content, write_site

LIMITS = wire.WireLimits(max_frame_bytes=4 * 2**20)


class Service:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.policy_file = write_site(folder / "site")
        self.policy = load_policy(str(self.policy_file))
        self.ledger = Path(self.policy.ledger)
        self.data = Path(self.policy.data_file)
        self.activity = ActivityLog(folder / ACTIVITY_FILE)
        self.server = SiteServer(
            SiteService(self.policy).handle,
            lambda: status_record(self.policy, self.activity.snapshot(), str(self.policy_file)),
            self.activity,
            LIMITS,
            timeout=2.0,
        )
        self.socket = folder / "site.sock"
        self.server.listen_unix(self.socket)
        self.endpoint = Endpoint(f"unix://{self.socket}", path=self.socket)

    def request(self, kind: str, content: RecordDict, run_config: dict | None = None):
        request = wire.Request(kind, 7, run_config or RUN_CONFIG, content)
        return call(self.endpoint, request, timeout=120)

    def raw(self, data: bytes) -> wire.Reply:
        """Send bytes as a client would, close the write side, read the one reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(str(self.socket))
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the service answered and closed before reading it all
                pass
            return wire.decode_reply(wire.read_frame(sock, LIMITS), LIMITS)

    def state(self) -> tuple[str, str]:
        """What must not change: the ledger's and the data file's bytes."""
        digest = [
            hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "absent"
            for p in (self.ledger, self.data)
        ]
        return digest[0], digest[1]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    folder = Path(tempfile.mkdtemp(prefix="fps-", dir="/tmp"))  # a socket path < 108 chars
    svc = Service(folder)
    try:
        yield svc
    finally:
        svc.server.close()
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def content() -> RecordDict:
    return train_content(RUN_CONFIG)


def _request(kind: str = "train", run_id: object = 7, **records) -> bytes:
    """A request frame with ``records`` replacing (or, as None, removing) its records."""
    base = {
        wire.REQUEST: ConfigRecord({"kind": kind, "run-id": run_id}),
        wire.RUN_CONFIG: ConfigRecord(dict(RUN_CONFIG)),
        "arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
        "config": ConfigRecord({"server-round": 1}),
    }
    base.update(records)
    payload = wire.recorddict_to_proto(
        RecordDict({k: v for k, v in base.items() if v is not None})
    ).SerializeToString()
    return wire.frame(payload)


def _bad_array() -> ArrayRecord:
    array = Array(np.zeros(4, np.float32))
    return ArrayRecord(
        {"w": Array(dtype="float32", shape=(2, 2, 2), stype="numpy.ndarray", data=array.data)}
    )


MALFORMED = {
    "empty": (b"", wire.MALFORMED, "truncated"),
    "truncated header": (b"FPS1\x00", wire.MALFORMED, "truncated"),
    "wrong magic": (b"GET / HTTP/1.1\r\n\r\n", wire.MALFORMED, "not a fedpriv-site frame"),
    "oversized length prefix": (struct.pack(">4sI", b"FPS1", 2**32 - 1), wire.TOO_LARGE, "exceeds"),
    "truncated payload": (struct.pack(">4sI", b"FPS1", 1000) + b"\x0a" * 10, wire.MALFORMED, "10"),
    "not a protobuf": (wire.frame(b"\xff" * 40), wire.MALFORMED, "not a RecordDict"),
    "unknown kind": (_request("dump-records"), wire.UNKNOWN_KIND, "'dump-records'"),
    "kind of the wrong type": (_request(3), wire.MALFORMED, "is a int, not a str"),
    "run id of the wrong type": (_request(run_id="7"), wire.MALFORMED, "is a str, not a int"),
    "no model": (_request(arrays=None), wire.MALFORMED, "carries ['arrays', 'config']"),
    "an extra record": (
        _request(raw=ConfigRecord({"path": "/etc/passwd"})),
        wire.MALFORMED,
        "not ['arrays', 'config', 'raw']",
    ),
    "model as config": (_request(arrays=ConfigRecord({"w": 1.0})), wire.MALFORMED, "not a Array"),
    "array shape lies": (_request(arrays=_bad_array()), wire.MALFORMED, "declared float32"),
    "run config with a list": (
        _request(**{wire.RUN_CONFIG: ConfigRecord({"dataset": ["a", "b"]})}),
        wire.MALFORMED,
        "run config 'dataset' is a list",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformed_request_is_refused_with_its_reason(service: Service, case: str) -> None:
    data, code, says = MALFORMED[case]
    before = service.state()
    reply = service.raw(data)
    assert (reply.ok, reply.error) == (False, code), reply
    assert says in reply.reason, reply.reason
    assert service.state() == before


def test_an_oversized_frame_is_refused_before_its_bytes_are_read(service: Service) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(service.socket))
        sock.sendall(struct.pack(">4sI", b"FPS1", LIMITS.max_frame_bytes + 1))  # no payload
        reply = wire.decode_reply(wire.read_frame(sock, LIMITS), LIMITS)
    assert reply.error == wire.TOO_LARGE
    assert f"limit of {LIMITS.max_frame_bytes}" in reply.reason


def test_a_thousand_random_byte_strings_are_refused_and_the_service_keeps_serving(
    service: Service, content: RecordDict
) -> None:
    rng = random.Random(13)
    valid = wire.encode_request(wire.Request("train", 7, RUN_CONFIG, content))[8:]
    before = service.state()
    codes: Counter[str] = Counter()
    for i in range(1000):
        junk = rng.randbytes(rng.randrange(0, 300))
        if i % 3 == 1:  # well framed, random payload: reaches the protobuf parser
            junk = wire.frame(junk)
        elif i % 3 == 2:  # a real request cut short, framed as if whole
            junk = wire.frame(valid[: rng.randrange(0, len(valid))])
        reply = service.raw(junk)
        assert not reply.ok and reply.reason, (i, reply)
        codes[reply.error] += 1
    assert sum(codes.values()) == 1000 and set(codes) <= {wire.MALFORMED, wire.TOO_LARGE}
    assert service.state() == before  # no ledger row, the data untouched
    reply = service.request("train", content)  # and a valid request still trains
    assert reply.ok, reply.reason
    assert dict(reply.content["decision"])["status"] == "trained"
    assert "arrays" in reply.content
    with PrivacyLedger(service.ledger) as ledger:
        assert [r.status for r in ledger.rows()][-1] == "released"


def test_a_refused_train_request_names_the_reason_and_records_nothing(
    service: Service, content: RecordDict
) -> None:
    before = service.state()
    reply = service.request("train", content, RUN_CONFIG | {"model": "no-such-model"})
    assert (reply.ok, reply.error) == (False, wire.REFUSED)
    assert "no-such-model" in reply.reason
    assert service.state() == before


def test_a_silent_client_is_dropped_and_does_not_block_others(
    service: Service, content: RecordDict
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(service.socket))
        started = time.monotonic()
        reply = service.request("evaluate", content)  # answered while the other one hangs
        assert reply.ok and 0 <= reply.content["metrics"]["eval-accuracy"] <= 1
        silent.settimeout(10)
        assert silent.recv(1) == b""  # the service closed it after its 2 s timeout
        assert time.monotonic() - started < 10


def test_a_client_gone_mid_training_leaves_the_release_recorded(
    service: Service, content: RecordDict
) -> None:
    with PrivacyLedger(service.ledger) as ledger:
        before = len(ledger.rows())
    data = wire.encode_request(wire.Request("train", 7, RUN_CONFIG, train_content(RUN_CONFIG, 2)))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(service.socket))
        sock.sendall(data)  # and leave without reading the reply
    deadline = time.monotonic() + 60
    while True:
        with PrivacyLedger(service.ledger) as ledger:
            rows = ledger.rows()
        if len(rows) > before and rows[-1].status == "released":
            break
        assert time.monotonic() < deadline, "the request was not completed"
        time.sleep(0.2)
    assert rows[-1].round == 2
    # the service still answers, and its log says the client had gone
    deadline = time.monotonic() + 10
    while "left before the reply" not in service.activity.snapshot()["requests"][-1].get(
        "reason", ""
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert service.request("evaluate", content).ok


def test_status_lists_datasets_connections_and_requests(service: Service) -> None:
    reply = service.request("status", RecordDict())
    assert reply.ok, reply.reason
    status = json.loads(reply.content["status"]["json"])
    assert status["site"] == "site-a" and status["ledger"] == str(service.ledger)
    (dataset,) = status["datasets"]
    assert dataset["epsilon-budget"] == 50.0 and 0 < dataset["epsilon-spent"] < 50.0
    assert dataset["epsilon-left"] == pytest.approx(50.0 - dataset["epsilon-spent"])
    assert status["connections"][-1]["uid"] == os.getuid()
    requests = status["requests"]  # the last 50, each logged once its reply is sent
    assert ("evaluate", "ok") in [(r["kind"], r["status"]) for r in requests]
    trains = [(r["round"], r["status"]) for r in requests if r["kind"] == "train"]
    assert trains == [(1, "trained"), (1, f"error: {wire.REFUSED}"), (2, "trained")]
    assert any(r["status"] == f"error: {wire.MALFORMED}" and r["reason"] for r in requests)
    # the log is on disk too: a restarted service (or status --state-dir) reads it back
    disk = ActivityLog(service.folder / ACTIVITY_FILE).snapshot()["requests"]
    assert [(r["round"], r["status"]) for r in disk if r["kind"] == "train"] == trains


def test_the_socket_is_group_accessible_only(service: Service) -> None:
    assert stat.S_IMODE(service.socket.stat().st_mode) == 0o660


def test_tcp_requires_the_shared_secret(service: Service, content: RecordDict) -> None:
    secret = b"s" * 32
    port = service.server.listen_tcp(0, secret)
    wrong = Endpoint(f"tcp://127.0.0.1:{port}", port=port, secret=b"x" * 32)
    reply = call(wrong, wire.Request("evaluate", 7, RUN_CONFIG, content), timeout=30)
    assert (reply.ok, reply.error) == (False, wire.UNAUTHORIZED)
    right = Endpoint(f"tcp://127.0.0.1:{port}", port=port, secret=secret)
    reply = call(right, wire.Request("evaluate", 7, RUN_CONFIG, content), timeout=60)
    assert reply.ok and "metrics" in reply.content
    # status is for the operator on the Unix socket, never over TCP
    assert call(right, wire.Request("status", 0, {}), timeout=30).error == wire.UNAUTHORIZED
    # a client that sends no answer to the challenge is dropped
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        nonce = wire.read_frame(sock, LIMITS)
        assert len(nonce) == 32 and auth_answer(secret, nonce) != auth_answer(secret, b"0" * 32)
        assert sock.recv(1) == b""


def test_a_second_service_on_the_same_socket_is_refused(service: Service) -> None:
    other = SiteServer(lambda *a: RecordDict(), dict)
    with pytest.raises(OSError, match="another site service is listening"):
        other.listen_unix(service.socket)


def test_a_burst_of_connections_beyond_the_cap_is_told_busy(service: Service) -> None:
    holders = []
    try:
        for _ in range(service.server.max_connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(service.socket))
            holders.append(sock)
        time.sleep(0.3)  # each now holds a slot until its timeout
        # on a loaded machine the service may not yet have taken every slot: ask again for up
        # to 1.5 s (well inside the holders' 2 s timeout)
        deadline = time.monotonic() + 1.5
        reply = service.raw(_request())
        while reply.error != wire.BUSY and time.monotonic() < deadline:
            time.sleep(0.1)
            reply = service.raw(_request())
        assert reply.error == wire.BUSY
    finally:
        for sock in holders:
            sock.close()
    threading.Event().wait(2.5)  # the slots are freed after the 2 s timeout
    assert service.raw(_request("nope")).error == wire.UNKNOWN_KIND


def test_a_request_trickling_in_is_cut_off_at_the_deadline(service: Service) -> None:
    data = _request()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(service.socket))
        started = time.monotonic()
        try:
            for byte in data:  # one byte every 0.5 s: each read is in time, the whole is not
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
                if time.monotonic() - started > 10:
                    break
        except OSError:  # the service closed the connection
            pass
        sock.settimeout(5)
        try:
            rest = sock.recv(1)
        except OSError:
            rest = b""
    assert rest == b"" and time.monotonic() - started < 6  # dropped after its 2 s timeout
