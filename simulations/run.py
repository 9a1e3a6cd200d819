"""Simulate a federation of sites on this machine with Flower's simulation engine (Ray).

    python -m simulations.run --config simulations/configs/demo.toml

The config TOML holds ``[simulation]`` (num-supernodes, client-resources-num-cpus/-gpus),
``[run]`` (run-config overrides, keys as in pyproject ``[tool.flwr.app.config]``), optional
``[site.N]`` tables (each simulated site's own policy and data) and optional ``[[phase]]``
tables (runs in order, each a share of the epsilon, e.g. linear probe then LoRA:
simulations/phases.py). Settings are validated before anything starts; a private SuperLink is
started and always stopped (error and Ctrl-C included).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunSettings, load_sites_file
from common.data.assets import fetch
from common.task import model_source
from simulations.phases import (
    Phase,
    check_phase_tables,
    plan_phases,
    shared_site_policies,
    total_epsilon,
)
from simulations.processes import flower_command
from simulations.superlink import CONNECTION, LocalSuperLink

APP_DIR = Path(__file__).resolve().parents[1]
# Flower's simulation federation options (Ray backend): per-site resources decide how many sites
# run at once (Ray's CPUs / client-resources-num-cpus); init-args-num-cpus/-gpus cap what Ray
# may use of the machine (README "Many sites").
SIMULATION_KEYS = (
    "num-supernodes",
    "client-resources-num-cpus",
    "client-resources-num-gpus",
    "init-args-num-cpus",
    "init-args-num-gpus",
)


_DUPLICATE_LOG = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:")


class SimulationError(RuntimeError):
    """The simulated run did not complete."""


def load_simulation_config(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(simulation options, run-config overrides, [[phase]] tables) of a simulation config."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"simulation config {path} cannot be read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"simulation config {path} is not valid TOML: {err}") from err
    unknown = set(raw) - {"simulation", "run", "site", "phase"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown tables {sorted(unknown)} (use simulation, run, site, phase)"
        )
    sim = dict(raw.get("simulation", {}))
    bad = set(sim) - set(SIMULATION_KEYS)
    if bad:
        raise ConfigError(
            f"{path} [simulation]: unknown keys {sorted(bad)}; known {SIMULATION_KEYS}"
        )
    run = dict(raw.get("run", {}))
    if "site" in raw:
        load_sites_file(path)  # validate now, not inside a simulated site
        run["sites-file"] = str(path.resolve())
    phases = check_phase_tables(raw["phase"], str(path)) if "phase" in raw else []
    return sim, run, phases


def run_simulation(
    config: Path | None,
    overrides: dict[str, Any],
    results_dir: Path,
    num_supernodes: int | None = None,
    stream: Any = sys.stdout,
) -> Path:
    """Run one simulated federation (or its phases, in order); return its (last phase's)
    results folder. Raises on failure."""
    sim, run, phases = load_simulation_config(config) if config else ({}, {}, [])
    run.update(overrides)
    if num_supernodes is not None:
        sim["num-supernodes"] = num_supernodes
    sim.setdefault("num-supernodes", 4)
    sim.setdefault("client-resources-num-cpus", 1)
    stem = config.stem if config else "simulation"
    run.setdefault("run-name", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run["results-dir"] = str(results_dir.resolve())
    if phases:
        return _run_phases(sim, run, phases, results_dir.resolve(), stream)
    settings, final = _checked(run)
    _prefetch(settings)
    return _run_checked(sim, run, final, stream)


def _checked(run: dict[str, Any]) -> tuple[RunSettings, Path]:
    """The run's settings (pyproject defaults + ``run``) and its results folder, which must not
    exist yet."""
    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    settings = RunSettings.from_run_config({**defaults["config"], **run})
    final = Path(settings.results_dir).resolve() / settings.run_name
    if final.exists():
        raise ConfigError(f"results folder {final} already exists; choose another run-name")
    return settings, final


def _run_checked(sim: dict[str, Any], run: dict[str, Any], final: Path, stream: Any) -> Path:
    try:
        _run(sim, run, stream)
    except BaseException:
        # A ServerApp killed mid-run cannot clean up after itself: never leave a partial folder.
        shutil.rmtree(final.with_name(final.name + ".partial"), ignore_errors=True)
        raise
    if not final.is_dir():
        raise SimulationError(f"the run completed but wrote no results folder at {final}")
    return final


def _run_phases(
    sim: dict[str, Any],
    base: dict[str, Any],
    tables: list[dict[str, Any]],
    results_dir: Path,
    stream: Any,
) -> Path:
    """Run the phases in order (simulations/phases.py), every one checked before the first
    starts; the sites' shared ledgers and policies live in <results>/ledgers/<run-name>/."""
    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    shared = results_dir / "ledgers" / str(base["run-name"])
    phases = plan_phases(tables, base, defaults["config"], shared / "sites.toml")
    checked = [_checked(phase.run_config) for phase in phases]
    total = total_epsilon(base, defaults["config"])
    policies = shared_site_policies(
        str(base.get("sites-file", "")), int(sim["num-supernodes"]), shared, total
    )
    shared.mkdir(parents=True, exist_ok=True, mode=0o700)
    sites_file = shared / "sites.toml"  # may hold the sites' split keys: owner only
    sites_file.touch(mode=0o600)
    sites_file.write_text(policies)
    load_sites_file(sites_file)  # what every site will read
    for settings, _ in checked:
        _prefetch(settings)
    folders: list[tuple[Phase, Path]] = []
    for number, (phase, (settings, final)) in enumerate(zip(phases, checked, strict=True), 1):
        stream.write(
            f"fedpriv: phase {number}/{len(phases)} {phase.name!r}: epsilon share "
            f"{phase.epsilon_share:g} -> target-epsilon {settings.target_epsilon:g} of "
            f"{total:g} (finetune={settings.finetune_mode}"
            + (f", head from {settings.init_head_from}" if settings.init_head_from else "")
            + ")\n"
        )
        stream.flush()
        folders.append((phase, _run_checked(sim, phase.run_config, final, stream)))
    stream.write(f"fedpriv: {len(phases)} phases done; shared site ledgers in {shared}\n")
    for phase, folder in folders:
        stream.write(f"fedpriv: phase {phase.name!r} results: {folder}\n")
    return folders[-1][1]


def _run(sim: dict[str, Any], run: dict[str, Any], stream: Any) -> None:
    """Start a private SuperLink, `flwr run` the app on it, check the run's final status."""
    with (
        tempfile.TemporaryDirectory(prefix="fedpriv-sim-") as tmp,
        LocalSuperLink(Path(tmp)) as link,
    ):
        overrides_file = Path(tmp) / "run-config.toml"
        overrides_file.write_text(_toml(run))
        federation = " ".join(f"{k}={sim[k]}" for k in SIMULATION_KEYS if k in sim)
        command = [
            flower_command("flwr"),
            "run",
            str(APP_DIR),
            CONNECTION,
            "--stream",
            "--federation-config",
            federation,
            "--run-config",
            str(overrides_file),
        ]
        with subprocess.Popen(
            command,
            env=link.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if _DUPLICATE_LOG.match(line):
                    continue  # flwr echoes each ServerApp log line once more, plain
                stream.write(line)
                stream.flush()
        runs = json.loads(link.flwr("ls", CONNECTION, "--format", "json", timeout=60).stdout)
        statuses = [r["status"] for r in runs.get("runs", [])]
        if statuses != ["finished:completed"]:
            raise SimulationError(
                f"the run did not complete (status {statuses or 'unknown'}); see the log above "
                f"and {link.log_file}"
            )


def _prefetch(settings: RunSettings) -> None:
    """Fetch data and model once, before sites start (they would otherwise queue on the lock)."""
    from common.data.registry import load_dataset

    load_dataset(settings.dataset, settings.seed)
    if settings.model == "text" and not settings.model_name_or_path:
        fetch("all-minilm-l6-v2")
        model_source(settings)


def _toml(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    parsed = tomllib.loads("\n".join(items))
    return dict(parsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="simulation config TOML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override in TOML syntax, e.g. --set num-server-rounds=5 --set dp=false",
    )
    parser.add_argument("--num-supernodes", type=int)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        folder = run_simulation(
            args.config, _parse_overrides(args.set), args.results_dir, args.num_supernodes
        )
    except (ConfigError, SimulationError, ValueError, FileExistsError) as err:
        print(f"fedpriv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "fedpriv: interrupted; the local SuperLink and its processes were stopped",
            file=sys.stderr,
        )
        return 130
    print(f"\nResults: {folder}")
    print((folder / "summary.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
