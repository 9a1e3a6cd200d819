"""Processes the launchers start: Flower's executables found, wait until one listens, stop one
with all its descendants."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def flower_command(name: str) -> str:
    """The path of Flower's executable ``name`` (flower-superlink, flower-supernode, flwr):
    the one beside the running interpreter first (its virtual environment's ``bin``, so
    ``.venv/bin/python -m simulations.run`` works without activating it), else PATH's."""
    beside = Path(sys.executable).parent / name  # not resolved: a venv's python is a link
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"Flower's `{name}` is neither beside this Python ({beside.parent}) nor on PATH; "
            "install fedpriv into this environment (scripts/setup.sh) or run its own python"
        )
    return found


def flower_path(path: str | None) -> str:
    """``path`` (a PATH value) with the folder of Flower's executables first: the SuperLink
    and SuperNodes start Flower's other executables (flower-superexec, flwr-serverapp, ...)
    by name."""
    folder = str(Path(flower_command("flwr")).parent)
    return os.pathsep.join([folder, *(path.split(os.pathsep) if path else [])])


def wait_listening(
    process: subprocess.Popen[bytes], port: int, log_file: Path, timeout: float = 90
) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise if ``process`` exits first
    (with the end of its log) or nothing listens within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0] if isinstance(process.args, list) else process.args} exited "
                f"with code {process.returncode}; see {log_file}:\n{log_file.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop_tree(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10
) -> None:
    """Signal a process and all its descendants; SIGKILL whatever is left after ``grace`` s."""
    try:
        procs = [psutil.Process(process.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        _signal(proc, sig)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    process.wait(timeout=10)


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
