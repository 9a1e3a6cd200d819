"""Processes the launchers start: wait until one listens, stop one with all its descendants."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil


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
