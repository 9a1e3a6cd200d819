"""client/site_shim.py: in deployment the ClientApp only forwards to the site service; an
unreachable service is a refusal (train) or an error (evaluate), never a crash; the shim loads
no torch and takes no data path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client import app as client_app
from client.site import SiteService
from client.site_activity import ActivityLog
from client.site_cli import load_policy, status_record
from client.site_server import SiteServer
from client.site_shim import Endpoint
from common.config import ConfigError
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import SITE_UNAVAILABLE, TRAIN_METRIC_KEYS, to_array_record
from tests.client.deployed_site import ROOT, RUN_CONFIG, train_content, write_site


def _message(content: RecordDict, message_type: str) -> Message:
    metadata = Metadata(
        run_id=7,
        message_id="m1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def _context(node_config: dict) -> Context:
    return Context(
        run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={**RUN_CONFIG}
    )


def _small_content() -> RecordDict:
    return RecordDict(
        {
            "arrays": to_array_record({"w": np.zeros(3, np.float32)}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )


@pytest.fixture(scope="module")
def running_site() -> Iterator[tuple[Path, Path]]:
    """A real site service on a Unix socket: (socket, ledger)."""
    folder = Path(tempfile.mkdtemp(prefix="fps-", dir="/tmp"))
    policy_file = write_site(folder / "site")
    policy = load_policy(str(policy_file))
    activity = ActivityLog()
    server = SiteServer(
        SiteService(policy).handle,
        lambda: status_record(policy, activity.snapshot(), str(policy_file)),
        activity,
    )
    server.listen_unix(folder / "site.sock")
    try:
        yield folder / "site.sock", Path(policy.ledger)
    finally:
        server.close()
        shutil.rmtree(folder)


def test_the_deployed_client_app_answers_with_the_service_reply(running_site) -> None:
    socket_path, ledger = running_site
    context = _context({"site-service": f"unix://{socket_path}"})
    request = _message(train_content(RUN_CONFIG), "train")
    reply = client_app.app(request, context)
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"arrays", "metrics", "decision"}
    assert dict(reply.content["decision"])["site"] == "site-a"
    metrics = dict(reply.content["metrics"])
    with PrivacyLedger(ledger) as opened:  # the service, not the shim, recorded the spend
        (row,) = opened.rows()
    assert row.status == "released" and row.round == 1
    assert metrics["steps"] == row.steps and metrics["noise-multiplier"] == row.noise_multiplier
    evaluated = client_app.app(_message(train_content(RUN_CONFIG), "evaluate"), context)
    assert set(evaluated.content.keys()) == {"metrics", "decision"}  # decision: why refused
    assert 0 <= evaluated.content["metrics"]["eval-accuracy"] <= 1


def test_a_request_the_service_refuses_is_an_error_reply(running_site) -> None:
    socket_path, _ = running_site
    context = _context({"site-service": f"unix://{socket_path}"})
    context.run_config["model"] = "no-such-model"
    reply = client_app.app(_message(_small_content(), "train"), context)
    assert reply.has_error()
    assert "the site service refused the train request" in reply.error.reason
    assert "no-such-model" in reply.error.reason


def test_an_unreachable_service_is_a_refusal_for_train_and_an_error_for_evaluate() -> None:
    context = _context({"site-service": "unix:///nonexistent/site.sock", "site-name": "clinic"})
    reply = client_app.app(_message(_small_content(), "train"), context)
    assert not reply.has_error()
    assert set(reply.content.keys()) == {"metrics", "decision"}  # no arrays
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == set(TRAIN_METRIC_KEYS)
    assert metrics["status"] == SITE_UNAVAILABLE and metrics["num-examples"] == 0
    decision = dict(reply.content["decision"])
    assert decision["site"] == "clinic" and decision["status"] == "site service unavailable"
    assert "/nonexistent/site.sock" in decision["reason"] and decision["clamped"] == []
    evaluated = client_app.app(_message(_small_content(), "evaluate"), context)
    assert evaluated.has_error() and "site service unavailable" in evaluated.error.reason


@pytest.mark.parametrize(
    ("node_config", "says"),
    [
        ({}, "fedpriv-site serve"),
        (
            {"site-service": "unix:///run/fedpriv/site.sock", "data-file": "/data/x.csv"},
            "belong in the site service's policy file",
        ),
        ({"site-service": "unix://relative.sock"}, "absolute path"),
        ({"site-service": "tcp://10.0.0.5:7000"}, "tcp://127.0.0.1:PORT"),
        ({"site-service": "tcp://127.0.0.1:7000"}, "site-service-secret-file"),
        ({"site-service": "http://127.0.0.1:7000"}, "expected unix:///"),
    ],
)
def test_a_node_config_the_shim_cannot_use_is_named(node_config: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        client_app.train(_message(_small_content(), "train"), _context(node_config))


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("short\n")
    with pytest.raises(ConfigError, match="holds 5 bytes; use at least 16"):
        Endpoint.parse("tcp://127.0.0.1:7000", str(tmp_path / "secret"))


def test_the_deployed_client_app_imports_no_torch() -> None:
    """In its own process, as the SuperNode starts one per message."""
    code = """
import json, sys, time
import numpy as np
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from client import app
from common.protocol.records import to_array_record
content = RecordDict({"arrays": to_array_record({"w": np.zeros(2, np.float32)}),
                      "config": ConfigRecord({"server-round": 1})})
meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
context = Context(run_id=1, node_id=1, node_config={"site-service": "unix:///nonexistent.sock"},
                  state=RecordDict(), run_config={})
reply = app.app(Message(content=content, metadata=meta), context)
heavy = ("torch", "transformers", "opacus", "peft", "pandas", "sklearn", "client.site")
print(json.dumps({"status": reply.content["metrics"]["status"],
                  "loaded": [m for m in heavy if m in sys.modules]}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": SITE_UNAVAILABLE, "loaded": []}
