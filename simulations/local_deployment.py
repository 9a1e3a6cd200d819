"""A real Flower deployment on one machine: a TLS SuperLink with SuperNode authentication and,
per site, a site service (``fedpriv-site serve``: its own data file, policy, ledger, state) and a
SuperNode (its key; its node config names only the service's socket) — the processes a
coordinator and its sites run, on 127.0.0.1 with free ports, every process stopped by PID.

Used by the deployment tests and the round-overhead benchmark; the README's runbooks give the
same commands for real machines.

Over 300 lines because it starts and stops a whole federation (CA and certificates, SuperLink,
site services, SuperNodes, runs) in the order the runbooks give.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

from common.certificates import make_ca, make_server_certificate, make_site_key
from simulations.processes import flower_command, stop_tree, wait_listening
from simulations.superlink import flower_env, free_port

APP_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedpriv-deployment"


class DeploymentError(RuntimeError):
    """A process of the local deployment failed to start or a command failed."""


@dataclass
class SuperNode:
    """One site's ``flower-supernode`` process (its own FLWR_HOME and log)."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    home: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@dataclass
class SiteProcess:
    """One site's ``fedpriv-site serve`` process, its socket and log."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    socket: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"


@dataclass
class LocalFederation:
    """Start with ``with LocalFederation(workdir) as fed:``; ``fed.add_site(...)`` per site."""

    workdir: Path
    port: int = field(default_factory=free_port)
    supernodes: dict[str, SuperNode] = field(default_factory=dict)
    services: dict[str, SiteProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.certs = self.workdir / "certs"
        self.home = self.workdir / "coordinator-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.home)
        self.superlink: subprocess.Popen[bytes] | None = None
        self.superlink_log = self.workdir / "superlink.log"

    # --- coordinator ---------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        make_ca(self.certs)
        make_server_certificate(self.certs, self.certs, ["localhost"], ["127.0.0.1"])
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{(self.certs / "ca.crt").resolve()}"\n'
        )
        command = [
            flower_command("flower-superlink"),
            "--ssl-ca-certfile",
            str((self.certs / "ca.crt").resolve()),
            "--ssl-certfile",
            str((self.certs / "server.pem").resolve()),
            "--ssl-keyfile",
            str((self.certs / "server.key").resolve()),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database",
            str(self.workdir / "superlink.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.superlink = self._spawn(command, self.env, self.superlink_log)
        try:
            wait_listening(self.superlink, self.port, self.superlink_log)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A ``flwr`` CLI command against this SuperLink, as the coordinator runs it."""
        return subprocess.run(
            [flower_command("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def flwr_json(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """``flwr ... --format json``; its exit code is 0 even on failure: check "success"."""
        out = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            data = json.loads(out.stdout)
        except json.JSONDecodeError as err:
            raise DeploymentError(f"flwr {' '.join(args)}: {out.stdout} {out.stderr}") from err
        if not data.get("success"):
            raise DeploymentError(f"flwr {' '.join(args)} failed: {data.get('error-message')}")
        return data

    def register(self, name: str) -> Path:
        """Create a site's key pair (as the site does) and register its public key (as the
        coordinator does). Returns the private key's path, for the site."""
        private, public = make_site_key(self.workdir / "site-keys", name)
        self.flwr_json("supernode", "register", str(public), CONNECTION)
        return private

    def online_nodes(self) -> int:
        nodes = self.flwr_json("supernode", "list", CONNECTION).get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.online_nodes() < count:
            if time.monotonic() > deadline:
                raise DeploymentError(f"fewer than {count} SuperNodes online after {timeout}s")
            time.sleep(2)

    # --- sites ---------------------------------------------------------------------------
    def add_site(self, name: str, policy: Path, key: Path | None) -> SuperNode:
        """A site as its runbook sets it up: its service (policy, data, ledger), then a
        SuperNode whose node config names only the service's socket."""
        service = self.start_site_service(name, policy)
        node_config = {"site-service": service.address, "site-name": name}
        return self.start_supernode(name, node_config, key)

    def start_site_service(
        self,
        name: str,
        policy: Path,
        *,
        run_as: tuple[str, ...] = (),
        socket_path: Path | None = None,
        state_dir: Path | None = None,
        socket_group: str | None = None,
        timeout: float = 120,
    ) -> SiteProcess:
        """``fedpriv-site serve --policy POLICY --socket SOCKET --state-dir STATE`` (defaults
        under <workdir>/site-service-<name>); ``run_as``: a command prefix (e.g. setpriv) that
        drops privileges. Returns once the socket listens."""
        folder = self.workdir / f"site-service-{name}"
        if socket_path is None:
            (folder / "run").mkdir(parents=True, exist_ok=True)
        sock = socket_path or folder / "run" / "site.sock"
        command = [*run_as, sys.executable, "-m", "client.site_cli", "serve"]
        command += ["--policy", str(policy), "--socket", str(sock)]
        command += ["--state-dir", str(state_dir or folder / "state")]
        if socket_group:
            command += ["--socket-group", socket_group]
        log_file = self.workdir / f"site-service-{name}.log"
        start = log_file.stat().st_size if log_file.exists() else 0  # a restart appends
        env = {**os.environ, "PYTHONPATH": str(APP_DIR), "FEDPRIV_HOME": str(folder / "home")}
        service = SiteProcess(name, self._spawn(command, env, log_file, APP_DIR), log_file, sock)
        self.services[name] = service
        deadline = time.monotonic() + timeout
        while "serving site" not in service.log()[start:]:  # logged once the socket listens
            if service.process.poll() is not None:
                raise DeploymentError(
                    f"site service {name} exited ({service.process.returncode}):\n"
                    + service.log()[-3000:]
                )
            if time.monotonic() > deadline:
                raise DeploymentError(f"site service {name} did not listen within {timeout}s")
            time.sleep(0.3)
        return service

    def stop_site_service(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Stop a site's service (SIGTERM: it finishes the request in flight); its exit code."""
        service = self.services.pop(name)
        stop_tree(service.process, sig)
        return int(service.process.returncode)

    def start_supernode(
        self,
        name: str,
        node_config: dict[str, Any],
        key: Path | None,
        *,
        tls: bool = True,
        extra: tuple[str, ...] = (),
        run_as: tuple[str, ...] = (),
        home: Path | None = None,
    ) -> SuperNode:
        """A site's ``flower-supernode`` with its node config (the site service's address);
        ``run_as``: a command prefix that drops privileges, ``home``: its FLWR_HOME."""
        home = home or self.workdir / f"site-home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        command = [
            *run_as,
            flower_command("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
        ]
        if tls:
            command += ["--root-certificates", str((self.certs / "ca.crt").resolve())]
        else:
            command += ["--insecure"]
        if key is not None:
            command += ["--auth-supernode-private-key", str(key.resolve())]
        command += ["--node-config", node_config_string(node_config)]
        command += ["--port", str(free_port()), *extra]
        log_file = self.workdir / f"supernode-{name}.log"
        node = SuperNode(name, self._spawn(command, flower_env(home), log_file), log_file, home)
        self.supernodes[name] = node
        return node

    def kill_supernode(self, name: str) -> None:
        """SIGKILL a site's SuperNode and everything under it (a machine that died)."""
        node = self.supernodes.pop(name)
        stop_tree(node.process, signal.SIGKILL)

    # --- runs ----------------------------------------------------------------------------
    def submit(
        self, run_config: dict[str, Any], stream: TextIO | None = None, app: Path = APP_DIR
    ) -> str:
        """``flwr run`` the fedpriv app (or ``app``) with ``run_config``; wait until it ends;
        return its run id. ``flwr run --stream`` exits 0 even when the run failed: see
        ``run_status``."""
        config_file = self.workdir / f"run-config-{time.monotonic_ns()}.toml"
        config_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items()))
        before = {r["run-id"] for r in self.runs()}
        command = [flower_command("flwr"), "run", str(app), CONNECTION, "--stream"]
        command += ["--run-config", str(config_file)]
        with subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.workdir,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if stream is not None:
                    stream.write(line)
        new = [r for r in self.runs() if r["run-id"] not in before]
        if len(new) != 1:
            raise DeploymentError(f"expected one new run, found {new}")
        return str(new[0]["run-id"])

    def runs(self) -> list[dict[str, Any]]:
        return list(self.flwr_json("ls", CONNECTION).get("runs", []))

    def run_status(self, run_id: str) -> dict[str, Any]:
        """e.g. {"status": "finished:completed", "status-details": ...}"""
        (run,) = self.flwr_json("ls", CONNECTION, "--run-id", run_id)["runs"]
        return dict(run)

    def serverapp_processes(self) -> list[psutil.Process]:
        """The ServerApp processes the SuperLink started (to kill one in a test)."""
        if self.superlink is None:
            return []
        children = psutil.Process(self.superlink.pid).children(recursive=True)
        return [p for p in children if "flwr-serverapp" in " ".join(_cmdline(p))]

    # --- processes -----------------------------------------------------------------------
    def stop(self) -> None:
        for node in list(self.supernodes.values()):
            stop_tree(node.process, signal.SIGTERM)
        self.supernodes.clear()
        for service in list(self.services.values()):
            stop_tree(service.process, signal.SIGTERM)
        self.services.clear()
        if self.superlink is not None:
            stop_tree(self.superlink, signal.SIGTERM)
            self.superlink = None

    @staticmethod
    def _spawn(
        command: list[str], env: dict[str, str], log_file: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as log:
            return subprocess.Popen(
                command,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=cwd or log_file.parent,
            )


def node_config_string(values: dict[str, Any]) -> str:
    """``--node-config`` syntax: space-separated key=value, strings quoted, TOML values."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = "'" + str(value).replace("'", "") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
