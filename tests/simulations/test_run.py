"""The simulation launcher: bad input fails before anything starts; a failed run leaves nothing."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from common.config import ConfigError
from simulations.run import SimulationError, load_simulation_config, run_simulation

CONFIG = Path(__file__).resolve().parents[2] / "simulations" / "configs" / "heart-disease.toml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"target-epsilon": 0.0}, "target-epsilon must be a finite number > 0"),
        ({"target-delta": 1.0}, "target-delta must be in"),
        ({"dataset": "no-such-data"}, "unknown dataset 'no-such-data'"),
        ({"partitioner": "random"}, "partitioner must be one of"),
        ({"num-server-round": 3}, "unknown keys ['num-server-round']"),
    ],
)
def test_bad_settings_fail_before_anything_starts(tmp_path: Path, override, message) -> None:
    with pytest.raises((ConfigError, ValueError), match=re.escape(message)):
        run_simulation(CONFIG, override, tmp_path / "results", stream=io.StringIO())
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_simulation_config_rejects_unknown_tables(tmp_path: Path) -> None:
    bad = tmp_path / "sim.toml"
    bad.write_text("[simulation]\nnum-supernodes = 2\n[federation]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown tables"):
        load_simulation_config(bad)
    bad.write_text("[simulation]\nnum-super-nodes = 2\n")
    with pytest.raises(ConfigError, match="num-super-nodes"):
        load_simulation_config(bad)


@pytest.mark.slow
def test_a_failing_run_is_reported_and_leaves_no_results(tmp_path: Path) -> None:
    # Every site points at a data file that does not exist: all sites fail in round 1.
    sites = tmp_path / "sites.toml"
    sites.write_text(
        "".join(f'[site.{i}]\ndata-file = "{tmp_path}/missing-{i}.csv"\n' for i in range(4))
    )
    results = tmp_path / "results"
    log = io.StringIO()
    with pytest.raises(SimulationError, match="did not complete"):
        run_simulation(
            CONFIG, {"sites-file": str(sites), "run-name": "broken"}, results, stream=log
        )
    assert not (results / "broken").exists()
    assert not (results / "broken.partial").exists()
    assert "missing-" in log.getvalue()  # the site's specific error reached the coordinator
