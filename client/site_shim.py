"""The ClientApp in deployment: an untrusted shim that forwards each message to the site service
named in node config and returns its reply. It holds no data path, no policy and no ledger, and
imports no torch: whatever the coordinator's code does here, the site's records stay behind the
service's socket.

    node config: site-service = "unix:///run/fedpriv/site.sock"
                 (or "tcp://127.0.0.1:PORT" with site-service-secret-file = "/path")
                 site-name = "..." (optional: the name a refusal carries when the service is down)

A service that cannot be reached (not running, socket permissions, no reply in time) is a
refusal the server records by site: a train reply with status "site service unavailable" and
the reason; an evaluate message gets an error reply.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from client import site_wire as wire
from common.config import ConfigError
from common.protocol.records import (
    DECISION,
    METRICS,
    SITE_UNAVAILABLE,
    STATUS_NAMES,
    TRAIN_METRIC_KEYS,
)

CONNECT_TIMEOUT = 10.0
REPLY_MARGIN = 120.0  # seconds past the run's round-timeout to wait for a reply


class SiteUnavailable(OSError):
    """The site service could not be reached or did not answer."""


@dataclass(frozen=True)
class Endpoint:
    """Where the site service listens: a Unix socket path, or 127.0.0.1:port + secret."""

    address: str
    path: Path | None = None
    port: int = 0
    secret: bytes = b""

    @classmethod
    def parse(cls, address: str, secret_file: str = "") -> Endpoint:
        if address.startswith("unix://"):
            path = Path(address.removeprefix("unix://"))
            if not path.is_absolute():
                raise ConfigError(f"site-service {address!r}: use an absolute path, unix:///...")
            return cls(address, path=path)
        if address.startswith("tcp://"):
            host, _, port = address.removeprefix("tcp://").rpartition(":")
            if host != "127.0.0.1" or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"site-service {address!r}: a TCP service must be tcp://127.0.0.1:PORT"
                )
            if not secret_file:
                raise ConfigError(
                    f"site-service {address!r} is TCP: set site-service-secret-file too"
                )
            from client.site_server import read_secret

            try:
                secret = read_secret(Path(secret_file))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            return cls(address, port=int(port), secret=secret)
        raise ConfigError(
            f"site-service {address!r}: expected unix:///path/to/site.sock or tcp://127.0.0.1:PORT"
        )

    def connect(self, timeout: float) -> socket.socket:
        try:
            if self.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(str(self.path))
                except BaseException:
                    sock.close()
                    raise
                return sock
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        except OSError as err:
            raise SiteUnavailable(f"cannot connect to {self.address}: {_why(err)}") from None


def call(
    endpoint: Endpoint,
    request: wire.Request,
    timeout: float,
    limits: wire.WireLimits | None = None,
) -> wire.Reply:
    """Send ``request``; the service's reply (raises SiteUnavailable when there is none)."""
    from client.site_server import auth_answer

    limits = limits or wire.WireLimits()
    with endpoint.connect(CONNECT_TIMEOUT) as sock:
        try:
            if endpoint.secret:
                nonce = wire.read_frame(sock, wire.WireLimits(max_frame_bytes=64))
                sock.sendall(wire.frame(auth_answer(endpoint.secret, nonce)))
            sock.sendall(wire.encode_request(request))
            sock.settimeout(timeout)
            return wire.decode_reply(wire.read_frame(sock, limits), limits)
        except (OSError, wire.WireError) as err:
            raise SiteUnavailable(f"no reply from {endpoint.address}: {_why(err)}") from None


def forward(
    message_type: str,
    msg: Message,
    node_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    run_id: int,
) -> Message:
    """The reply to ``msg`` from the site service that node config names."""
    address = str(node_config.get("site-service", ""))
    if not address:
        raise ConfigError(
            "node config has no site-service: start the site's service (fedpriv-site serve "
            "--policy POLICY --socket /run/fedpriv/site.sock) and pass --node-config "
            "\"site-service='unix:///run/fedpriv/site.sock'\" to flower-supernode"
        )
    extra = sorted(set(node_config) - {"site-service", "site-service-secret-file", "site-name"})
    if extra:
        raise ConfigError(
            f"node config {extra}: in deployment these belong in the site service's policy "
            "file (fedpriv-site serve --policy), not in the SuperNode's node config"
        )
    endpoint = Endpoint.parse(address, str(node_config.get("site-service-secret-file", "")))
    request = wire.Request(message_type, int(run_id), dict(run_config), msg.content)
    timeout = float(run_config.get("round-timeout", 3600.0)) + REPLY_MARGIN
    try:
        reply = call(endpoint, request, timeout)
    except SiteUnavailable as err:
        return unavailable_reply(message_type, msg, str(node_config.get("site-name", "")), err)
    if not reply.ok:
        reason = f"the site service refused the {message_type} request: {reply.reason}"
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )
    return Message(content=reply.content, reply_to=msg)


def unavailable_reply(message_type: str, msg: Message, site: str, err: Exception) -> Message:
    """A train message: a refusal (status "site service unavailable", no arrays); an
    evaluate message: an error reply. Either names the reason."""
    reason = f"site service unavailable ({err})"
    if message_type != "train":
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )
    metrics = {key: 0 for key in TRAIN_METRIC_KEYS} | {
        "status": SITE_UNAVAILABLE,
        "partition-id": -1,
    }
    decision = {
        "site": site,
        "status": STATUS_NAMES[SITE_UNAVAILABLE],
        "reason": reason,
        "clamped": [],
    }
    content = RecordDict({METRICS: MetricRecord(metrics), DECISION: ConfigRecord(decision)})
    return Message(content=content, reply_to=msg)


def _why(err: BaseException) -> str:
    if isinstance(err, wire.WireError):
        return err.reason
    if isinstance(err, TimeoutError | socket.timeout):
        return f"timed out at {time.strftime('%H:%M:%S')}"
    return getattr(err, "strerror", None) or str(err) or type(err).__name__
