"""simulations/processes.py: Flower's executables are found beside the running interpreter, so
``.venv/bin/python -m simulations.run`` works without activating the virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import simulations.processes as processes
from simulations.processes import flower_command, flower_path

VENV_BIN = Path(sys.executable).parent  # the suite runs on the venv's python
BARE_PATH = os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())


def _executable(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("name", ["flower-superlink", "flower-supernode", "flwr"])
def test_flowers_executables_are_found_beside_the_interpreter_without_path(name, monkeypatch):
    assert (VENV_BIN / name).is_file(), "the suite runs on the venv that has Flower"
    monkeypatch.setenv("PATH", BARE_PATH)  # not activated: the venv's bin is not on PATH
    assert flower_command(name) == str(VENV_BIN / name)


def test_path_is_the_fallback_and_a_missing_executable_is_named(tmp_path, monkeypatch):
    python_dir, on_path = tmp_path / "python-bin", tmp_path / "on-path"
    python_dir.mkdir()
    on_path.mkdir()
    monkeypatch.setattr(processes.sys, "executable", str(python_dir / "python3"))
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(FileNotFoundError, match=r"Flower's `flwr` is neither beside this Python"):
        flower_command("flwr")
    flwr = _executable(on_path, "flwr")
    assert flower_command("flwr") == str(flwr)
    beside = _executable(python_dir, "flwr")  # beside the interpreter wins over PATH
    assert flower_command("flwr") == str(beside)
    # the folder Flower's own processes find its other executables in comes first
    assert flower_path("/usr/bin").split(os.pathsep) == [str(python_dir), "/usr/bin"]
    assert flower_path(None) == str(python_dir)


def test_a_local_superlink_starts_and_answers_without_an_activated_venv(tmp_path):
    """The SuperLink starts flower-superexec by name: its PATH must hold Flower's folder."""
    script = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        import psutil
        from simulations.superlink import CONNECTION, LocalSuperLink

        with LocalSuperLink(Path({str(tmp_path)!r})) as link:
            out = link.flwr("ls", CONNECTION, "--format", "json", timeout=60)
            assert json.loads(out.stdout)["success"], out.stdout + out.stderr
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                children = psutil.Process(link.process.pid).children(recursive=True)
                if any("flower-superexec" in " ".join(c.cmdline()) for c in children):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("no flower-superexec under the SuperLink")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = BARE_PATH
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
