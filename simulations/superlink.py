"""Start and stop a private local Flower SuperLink (simulation runtime) on free loopback ports.

Flower's own ``flwr run`` can start a detached local SuperLink on fixed ports that outlives the
command; we start our own instead, in its own FLWR_HOME and process group, and stop it (and every
process under it: flwr-serverapp, flwr-simulation, Ray) by PID when done, error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from simulations.processes import flower_command, flower_path, stop_tree, wait_listening

CONNECTION = "fedpriv-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for every flwr command of this run: isolated FLWR_HOME, no phoning home, no
    dependency installation at run time (it would pull a CUDA torch), Flower's executables
    first on PATH (an environment that was not activated)."""
    env = dict(os.environ)
    env.update(
        PATH=flower_path(env.get("PATH")),
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_DEDUP_LOGS="0",
    )
    return env


class LocalSuperLink:
    """A SuperLink in simulation mode on 127.0.0.1:<free port>; a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.flwr_home = workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_file = workdir / "superlink.log"
        self.env = flower_env(self.flwr_home)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalSuperLink:
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        command = [
            flower_command("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--health-server-address",
            f"127.0.0.1:{free_port()}",
            "--database",
            str(self.workdir / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            wait_listening(self.process, self.port, self.log_file, timeout=60.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate the SuperLink and all its descendants (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        stop_tree(self.process, signal.SIGTERM)
        self.process = None

    def flwr(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this SuperLink (captured output)."""
        return subprocess.run(
            [flower_command("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def run_status(self, run_id: str) -> dict:
        """``flwr ls --run-id`` as a dict ("status" is e.g. "finished:completed")."""
        out = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json", timeout=60)
        data = json.loads(out.stdout)
        if not data.get("success"):
            raise RuntimeError(f"flwr ls failed: {data.get('error-message', out.stderr)}")
        return data["runs"][0]
