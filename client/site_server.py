"""The site service's server: one ``SiteService`` behind a local endpoint, one request per
connection (``client/site_wire.py``).

Endpoints: a Unix domain socket (file mode 0660: its group decides who may connect; each peer's
uid/pid is read with SO_PEERCRED and logged), or TCP on 127.0.0.1 only with a shared secret
(HMAC-SHA256 challenge: the server sends a fresh 32-byte nonce, the client answers
HMAC(secret, nonce), compared in constant time). Every request is untrusted input: its frame is
bounded before it is read, checked before it is decoded, and a request that fails a check gets
an error reply with the reason and changes nothing.

Faults: each connection has its own thread, a deadline to send its request and read its reply
(a hung or silent client is dropped) and at most ``max_connections`` run at once (more are told
"busy"). Requests reach the site one at a time (a lock: the site's ledger and models are one
state). A client that disconnects mid-training does not stop the training: the request
completes and its spend stays recorded in the ledger (reserved before training, as always).

Over 300 lines because the endpoint's security decisions (socket modes, peer credentials, the
HMAC challenge, deadlines, the connection cap) belong in one file a site operator can audit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from client import site_wire as wire
from client.site_activity import ActivityLog

log = logging.getLogger("fedpriv.site")

Handler = Callable[[str, RecordDict, dict[str, Any], int], RecordDict]
NONCE_BYTES = 32
AUTH_CONTEXT = b"fedpriv-site-auth-v1"


def auth_answer(secret: bytes, nonce: bytes) -> bytes:
    """The client's answer to the server's challenge: HMAC-SHA256(secret, context | nonce)."""
    return hmac.new(secret, AUTH_CONTEXT + nonce, hashlib.sha256).digest()


def read_secret(path: Path) -> bytes:
    """A shared secret file (at least 16 bytes, surrounding whitespace ignored)."""
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise ValueError(f"cannot read the secret file {path}: {err.strerror}") from None
    if len(secret) < 16:
        raise ValueError(f"secret file {path} holds {len(secret)} bytes; use at least 16")
    return secret


@dataclass
class SiteServer:
    """Serves ``handler`` (``SiteService.handle``) and the ``status`` request.

    status: the status record's builder (a JSON-able dict); only the service's own uid or root
    may ask for it (on the Unix socket). timeout: seconds a connection may take to send its
    request, and to take its reply.
    """

    handler: Handler
    status: Callable[[], dict[str, Any]]
    activity: ActivityLog = field(default_factory=ActivityLog)
    limits: wire.WireLimits = field(default_factory=wire.WireLimits)
    timeout: float = 60.0
    max_connections: int = 8
    _servers: list[socketserver.BaseServer] = field(default_factory=list, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._gate = threading.Lock()  # one request at a time reaches the site
        self._slots = threading.BoundedSemaphore(self.max_connections)

    # --- endpoints ----------------------------------------------------------------------
    def listen_unix(self, path: Path, group: str | None = None) -> None:
        """Bind the Unix socket ``path`` (mode 0660, group ``group`` if given). A stale socket
        file is replaced; a live one (another service) is an error."""
        path = Path(path)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket; remove it or choose another")
            if _answers(path):
                raise OSError(f"{path}: another site service is listening there")
            path.unlink()
        if not path.parent.is_dir():
            raise OSError(f"socket directory {path.parent} does not exist (create it, mode 0750)")
        old = os.umask(0o117)  # the file is created 0660, never wider even for a moment
        try:
            server = _UnixServer(str(path), self)
        finally:
            os.umask(old)
        if group:
            import grp

            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
        self._start(server)

    def listen_tcp(self, port: int, secret: bytes, host: str = "127.0.0.1") -> int:
        """Bind loopback TCP ``port`` (0 = a free one); returns the port."""
        if host != "127.0.0.1":
            raise OSError(f"the site service listens on 127.0.0.1 only, not {host}")
        if len(secret) < 16:
            raise ValueError("the TCP endpoint needs a shared secret of at least 16 bytes")
        server = _TcpServer((host, port), self, secret)
        self._start(server)
        return int(server.server_address[1])

    def _start(self, server: socketserver.BaseServer) -> None:
        thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)

    def close(self) -> None:
        """Stop accepting; wait for the request in flight to finish (its ledger write)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
            if isinstance(server, _UnixServer):
                Path(server.server_address).unlink(missing_ok=True)  # type: ignore[arg-type]
        for thread in self._threads:
            thread.join(timeout=5)
        with self._gate:  # a request in flight completes before we return
            pass
        self._servers.clear()
        self._threads.clear()

    # --- one connection -----------------------------------------------------------------
    def serve_connection(
        self, conn: socket.socket, peer: dict[str, Any], secret: bytes | None
    ) -> None:
        if not self._slots.acquire(blocking=False):
            _send(conn, wire.error_reply(wire.BUSY, "too many connections; try again"))
            return
        try:
            self._serve(conn, peer, secret)
        finally:
            self._slots.release()

    def _serve(self, conn: socket.socket, peer: dict[str, Any], secret: bytes | None) -> None:
        conn.settimeout(self.timeout)
        self.activity.connection(peer)
        started = time.monotonic()
        fields: dict[str, Any] = {"peer": peer.get("uid", peer.get("address"))}
        deadline = started + self.timeout  # the whole request, however it trickles in
        try:
            if secret is not None and not _authenticate(conn, secret, deadline):
                fields |= {"kind": "-", "status": f"error: {wire.UNAUTHORIZED}"}
                _send(conn, wire.error_reply(wire.UNAUTHORIZED, "wrong or missing shared secret"))
                return
            request = wire.decode_request(wire.read_frame(conn, self.limits, deadline), self.limits)
        except wire.WireError as err:
            fields |= {"kind": "-", "status": f"error: {err.code}", "reason": err.reason}
            _send(conn, wire.error_reply(err.code, err.reason))
            return
        except OSError as err:  # timeout, reset: the client is gone
            fields |= {"kind": "-", "status": "error: connection", "reason": str(err)}
            return
        finally:
            if "status" in fields:
                self._log(fields, started)
        fields |= {"kind": request.kind, "run-id": request.run_id, **_round(request)}
        reply = self._answer(request, peer, secret is not None, fields)
        fields["seconds"] = round(time.monotonic() - started, 3)
        conn.settimeout(self.timeout)
        if not _send(conn, reply):
            fields["reason"] = fields.get("reason", "") + " (the client left before the reply)"
        self._log(fields, started)

    def _answer(
        self, request: wire.Request, peer: dict[str, Any], tcp: bool, fields: dict[str, Any]
    ) -> bytes:
        from client.site import SiteRequestError
        from common.config import ConfigError

        if request.kind == "status":
            if tcp or peer.get("uid") not in (os.getuid(), 0):
                fields |= {"status": f"error: {wire.UNAUTHORIZED}"}
                return wire.error_reply(
                    wire.UNAUTHORIZED,
                    "status is answered on the Unix socket to the service's own user or root",
                )
            content = RecordDict({"status": ConfigRecord({"json": json.dumps(self.status())})})
            fields["status"] = "ok"
            return wire.encode_reply(wire.Reply(content))
        try:
            with self._gate:
                content = self.handler(
                    request.kind, request.content, request.run_config, request.run_id
                )
        except (SiteRequestError, ConfigError) as err:
            fields |= {"status": f"error: {wire.REFUSED}", "reason": str(err)}
            return wire.error_reply(wire.REFUSED, str(err))
        except Exception:  # the message may quote private values: the log keeps it, not the reply
            log.exception("request %s of run %s failed", request.kind, request.run_id)
            fields |= {"status": f"error: {wire.INTERNAL}"}
            return wire.error_reply(wire.INTERNAL, "the site service failed (see its log)")
        fields |= _reply_status(content)
        return wire.encode_reply(wire.Reply(content))

    def _log(self, fields: dict[str, Any], started: float) -> None:
        fields.setdefault("seconds", round(time.monotonic() - started, 3))
        self.activity.request(**fields)
        log.info(
            "%s run %s round %s from %s: %s%s (%.2f s)",
            fields.get("kind", "-"),
            fields.get("run-id", "-"),
            fields.get("round", "-"),
            fields.get("peer", "?"),
            fields.get("status", "?"),
            f" ({fields['reason']})" if fields.get("reason") else "",
            fields["seconds"],
        )


def _round(request: wire.Request) -> dict[str, Any]:
    config = request.content.config_records.get("config")
    value = config.get("server-round") if config is not None else None
    return {"round": value} if isinstance(value, int) and not isinstance(value, bool) else {}


def _reply_status(content: RecordDict) -> dict[str, Any]:
    from common.protocol.records import STATUS_NAMES

    decision = content.config_records.get("decision")
    if decision is not None and "status" in decision:  # a train reply
        return {
            "status": str(decision.get("status", "")),
            "reason": str(decision.get("reason", "")),
        }
    metrics = content.metric_records.get("metrics")
    status = metrics.get("status") if metrics is not None else None
    notes = list(decision.get("notes", [])) if decision is not None else []
    refused = isinstance(status, int) and status != 0
    return {
        "status": STATUS_NAMES.get(status, "refused") if refused else "ok",
        "reason": "; ".join(str(n) for n in notes),
    }


def _authenticate(conn: socket.socket, secret: bytes, deadline: float) -> bool:
    nonce = secrets.token_bytes(NONCE_BYTES)
    conn.sendall(wire.frame(nonce))
    answer = wire.read_frame(conn, wire.WireLimits(max_frame_bytes=64), deadline)
    return hmac.compare_digest(answer, auth_answer(secret, nonce))


def _send(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.sendall(data)
        return True
    except OSError:
        return False


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def peer_credentials(conn: socket.socket) -> dict[str, Any]:
    """The connecting process's pid, uid and gid (Linux SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return {"transport": "unix", "pid": pid, "uid": uid, "gid": gid}


class _RequestHandler(socketserver.BaseRequestHandler):
    server: _UnixServer | _TcpServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        site: SiteServer = self.server.site
        if isinstance(self.server, _UnixServer):
            site.serve_connection(conn, peer_credentials(conn), None)
        else:
            host, port = self.client_address[:2]
            peer = {"transport": "tcp", "address": f"{host}:{port}"}
            site.serve_connection(conn, peer, self.server.secret)


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, site: SiteServer) -> None:
        self.site = site
        super().__init__(path, _RequestHandler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], site: SiteServer, secret: bytes) -> None:
        self.site = site
        self.secret = secret
        super().__init__(address, _RequestHandler)
