"""``fedpriv-site``: the site service a site operator runs next to its data, as its own user.

    fedpriv-site serve --policy /etc/fedpriv/policy.toml --socket /run/fedpriv/site.sock
                       [--socket-group fedpriv] [--tcp 127.0.0.1:PORT --secret-file F]
                       [--state-dir DIR]
    fedpriv-site status [--socket /run/fedpriv/site.sock] [--json]
    fedpriv-site status --policy POLICY --state-dir DIR     (from the files, no service needed)

``serve`` holds the site's one SiteService (policy, data, ledger, models kept in memory across
rounds and runs) behind a Unix socket (mode 0660; the socket's group may connect) or loopback TCP
with a shared secret, until SIGTERM / Ctrl-C (a request in flight completes first). ``status``:
the site's datasets with epsilon spent and left (from the ledger, read-only), who connected and
the last requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from client.ledger_cli import TABLE_COLUMNS, _jsonable, _table
from client.site_activity import ACTIVITY_FILE, ActivityLog
from common.config import ConfigError, SiteSettings
from common.privacy.ledger import LedgerError, PrivacyLedger, default_ledger_path
from common.privacy.ledger_report import dataset_report

DEFAULT_SOCKET = "/run/fedpriv/site.sock"
log = logging.getLogger("fedpriv.site")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        return status(args, out)
    except (ConfigError, LedgerError, OSError, ValueError) as err:
        print(f"fedpriv-site: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpriv-site", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_ = commands.add_parser("serve", help="run the site service")
    serve_.add_argument("--policy", required=True, help="the site's policy file (TOML)")
    serve_.add_argument("--socket", help=f"Unix socket to listen on (e.g. {DEFAULT_SOCKET})")
    serve_.add_argument("--socket-group", help="group of the socket file (who may connect)")
    serve_.add_argument("--tcp", help="also/instead listen on 127.0.0.1:PORT (needs a secret)")
    serve_.add_argument("--secret-file", help="shared secret for --tcp (>= 16 bytes)")
    serve_.add_argument("--state-dir", help="activity log folder (default $FEDPRIV_HOME/site)")
    serve_.add_argument("--timeout", type=float, default=60.0, help="seconds per connection")
    serve_.add_argument("--max-frame-mib", type=int, default=256, help="largest request, MiB")
    status_ = commands.add_parser("status", help="datasets, epsilon, connections, requests")
    status_.add_argument("--socket", default=DEFAULT_SOCKET, help="the running service's socket")
    status_.add_argument("--policy", help="read the files instead (with --state-dir)")
    status_.add_argument("--state-dir", help="the service's state folder")
    status_.add_argument("--json", action="store_true", help="print JSON, not tables")
    return parser


# --- serve -------------------------------------------------------------------------------
def load_policy(path: str) -> SiteSettings:
    """The site's policy file, checked as the service needs it: its data and its budget."""
    policy = SiteSettings.from_mapping({"policy-file": path}, f"policy {path}")
    if not policy.data_file:
        raise ConfigError(f"policy {path}: set data-file (the site's own CSV/JSONL)")
    if not os.access(policy.data_file, os.R_OK):
        raise ConfigError(f"policy {path}: data-file {policy.data_file} is not readable")
    if not policy.epsilon_budget:
        raise ConfigError(
            f"policy {path}: set epsilon-budget (the lifetime epsilon of this dataset, all runs)"
        )
    return policy


def ledger_path(policy: SiteSettings) -> Path:
    return Path(policy.ledger).expanduser() if policy.ledger else default_ledger_path()


def serve(args: argparse.Namespace) -> int:
    from client import site_wire as wire
    from client.site import SiteService
    from client.site_server import SiteServer, read_secret

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s fedpriv-site %(levelname)s %(message)s"
    )
    if not args.socket and not args.tcp:
        raise ValueError("give --socket PATH (and/or --tcp 127.0.0.1:PORT --secret-file F)")
    os.umask(0o077)  # the ledger, its journal and the state: the service's user only
    policy = load_policy(args.policy)
    state_dir = _state_dir(args.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    activity = ActivityLog(state_dir / ACTIVITY_FILE)
    service = SiteService(policy)
    started = time.time()
    endpoints: list[str] = []

    def site_status() -> dict[str, Any]:
        return status_record(policy, activity.snapshot(), args.policy) | {
            "service": {"pid": os.getpid(), "uid": os.getuid(), "started": started},
            "endpoints": endpoints,
        }

    server = SiteServer(
        service.handle,
        site_status,
        activity,
        wire.WireLimits(max_frame_bytes=args.max_frame_mib * 2**20),
        timeout=args.timeout,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.socket:
            server.listen_unix(Path(args.socket), args.socket_group)
            endpoints.append(f"unix://{Path(args.socket).resolve()}")
        if args.tcp:
            if not args.secret_file:
                raise ValueError("--tcp needs --secret-file (the secret the shim also holds)")
            host, _, port = args.tcp.rpartition(":")
            bound = server.listen_tcp(int(port), read_secret(Path(args.secret_file)), host)
            endpoints.append(f"tcp://127.0.0.1:{bound}")
        log.info(
            "serving site %r (data %s, ledger %s, budget epsilon %g) on %s; state in %s",
            policy.name or "(unnamed)",
            policy.data_file,
            ledger_path(policy),
            policy.epsilon_budget,
            ", ".join(endpoints),
            state_dir,
        )
        stop.wait()
        log.info("stopping: finishing the request in flight, if any")
    finally:
        server.close()
    log.info("stopped")
    return 0


def _state_dir(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    return default_ledger_path().parent / "site"


# --- status ------------------------------------------------------------------------------
def status_record(
    policy: SiteSettings, activity: dict[str, list[dict[str, Any]]], policy_file: str
) -> dict[str, Any]:
    """The status: the site's datasets (epsilon from the ledger, read-only) and its activity."""
    path = ledger_path(policy)
    datasets: list[dict[str, Any]] = []
    if path.is_file():
        with PrivacyLedger(path, read_only=True) as ledger:
            datasets = dataset_report(
                ledger, budget=policy.epsilon_budget or None, delta=policy.delta or None
            )
    return {
        "site": policy.name,
        "policy": policy_file,
        "ledger": str(path),
        "datasets": datasets,
        **activity,
    }


def status(args: argparse.Namespace, out: TextIO) -> int:
    if args.policy or args.state_dir:
        if not (args.policy and args.state_dir):
            raise ValueError("reading the files needs both --policy and --state-dir")
        policy = SiteSettings.from_mapping({"policy-file": args.policy}, f"policy {args.policy}")
        activity = ActivityLog(Path(args.state_dir) / ACTIVITY_FILE)  # read, never written
        record = status_record(policy, activity.snapshot(), args.policy)
    else:
        record = _ask_service(Path(args.socket))
    if args.json:
        json.dump(_jsonable(record), out, indent=2)
        out.write("\n")
    else:
        out.write(format_status(record))
    return 0


def _ask_service(socket_path: Path) -> dict[str, Any]:
    from client import site_wire as wire
    from client.site_shim import Endpoint, SiteUnavailable, call

    endpoint = Endpoint(f"unix://{socket_path}", path=socket_path)
    try:
        limits = wire.WireLimits(max_text=16 * 2**20)  # the status is one JSON text
        reply = call(endpoint, wire.Request("status", 0, {}), timeout=30.0, limits=limits)
    except SiteUnavailable as err:
        raise OSError(
            f"{err} (is fedpriv-site serve running? or use --policy --state-dir)"
        ) from None
    if not reply.ok:
        raise OSError(f"the service refused: {reply.reason}")
    return dict(json.loads(str(reply.content["status"]["json"])))


def format_status(record: dict[str, Any]) -> str:
    """The status as a person reads it."""
    service = record.get("service")
    lines = [f"site {record.get('site') or '(unnamed)'}  policy {record['policy']}"]
    if service:
        up = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(service["started"]))
        lines.append(
            f"service pid {service['pid']} (uid {service['uid']}) up since {up} on "
            + ", ".join(record.get("endpoints", []))
        )
    lines += [f"ledger {record['ledger']}", ""]
    datasets = _table(record["datasets"], TABLE_COLUMNS["datasets"]).rstrip("\n")
    lines += ["datasets:", datasets, "", "last connections:"]
    lines += [
        f"  {_when(c['time'])}  {c.get('transport', '?')}  "
        + (f"uid {c['uid']} pid {c['pid']}" if "uid" in c else str(c.get("address", "")))
        for c in record["connections"][-10:]
    ] or ["  (none)"]
    lines += ["", "last requests:"]
    lines += [
        f"  {_when(r['time'])}  {r.get('kind', '-'):8s} run {r.get('run-id', '-')} "
        f"round {r.get('round', '-')}  {r.get('status', '?')}"
        + (f" ({r['reason']})" if r.get("reason") else "")
        + f"  {r.get('seconds', 0):.2f} s"
        for r in record["requests"][-10:]
    ] or ["  (none)"]
    return "\n".join(lines) + "\n"


def _when(timestamp: float) -> str:
    if not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


if __name__ == "__main__":
    sys.exit(main())
