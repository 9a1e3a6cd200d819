"""server/results.py: the run's results folder, written as <name>.partial, published at the end."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from server.results import CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE, RunResults


def test_writes_into_a_partial_folder_until_finished(tmp_path):
    results = RunResults(tmp_path / "results", "run-1")
    assert results.path == (tmp_path / "results" / "run-1.partial").resolve()
    assert results.path.is_dir()
    assert results.final_path == (tmp_path / "results" / "run-1").resolve()
    assert not results.final_path.exists()
    assert results.model_dir == results.path / "model"


def test_write_rounds_writes_one_json_line_per_round_with_nan_as_null(tmp_path):
    results = RunResults(tmp_path, "run")
    first = {"round": 1, "loss": 0.5, "sites": {"A": {"eps": math.nan}}}
    results.write_rounds([first])
    results.write_rounds(
        [
            first,
            {"round": 2, "loss": math.inf, "acc": np.float32(0.75), "n": np.int64(3), "l": (1, 2)},
        ]
    )
    lines = (results.path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)  # strict JSON: no NaN tokens
    assert "NaN" not in lines[0] and "Infinity" not in lines[1]
    assert first == {"round": 1, "loss": 0.5, "sites": {"A": {"eps": None}}}
    assert second == {"round": 2, "loss": None, "acc": 0.75, "n": 3, "l": [1, 2]}


def test_metrics_can_be_read_while_the_run_goes(tmp_path):
    results = RunResults(tmp_path, "run")
    results.write_rounds([{"round": 1}])
    assert json.loads((results.path / METRICS_FILE).read_text()) == {"round": 1}


def test_finish_publishes_the_folder_and_writes_the_summary(tmp_path, monkeypatch):
    clock = iter([1000.0, 1012.345])
    monkeypatch.setattr("server.results.time", SimpleNamespace(time=lambda: next(clock)))
    results = RunResults(tmp_path, "run")
    results.write_rounds([{"round": 1, "loss": 0.25}])
    (results.path / CHECKPOINT_FILE).write_bytes(b"c")
    results.model_dir.mkdir()
    (results.model_dir / "weights.bin").write_bytes(b"w")

    final = results.finish({"rounds": 1, "final-loss": math.nan})

    assert final == (tmp_path / "run").resolve()
    assert not (tmp_path / "run.partial").exists()
    assert sorted(p.name for p in final.iterdir()) == [METRICS_FILE, "model", SUMMARY_FILE]
    assert (final / "model" / "weights.bin").read_bytes() == b"w"
    summary = json.loads((final / SUMMARY_FILE).read_text())
    assert summary == {"rounds": 1, "final-loss": None, "wall-seconds": 12.35}
    assert json.loads((final / METRICS_FILE).read_text()) == {"round": 1, "loss": 0.25}


def test_abort_removes_the_partial_folder(tmp_path):
    results = RunResults(tmp_path, "run")
    results.write_rounds([{"round": 1}])
    assert results.abort() is False
    assert list(tmp_path.iterdir()) == []
    results.abort()  # twice is harmless


def test_abort_keeps_a_folder_that_can_be_resumed(tmp_path):
    results = RunResults(tmp_path, "run")
    (results.path / CHECKPOINT_FILE).write_bytes(b"c")
    assert results.abort() is True
    assert (results.path / CHECKPOINT_FILE).is_file()


def test_resume_needs_a_checkpoint_and_a_fresh_run_does_not_overwrite_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunResults(tmp_path, "run", resume=True)
    results = RunResults(tmp_path, "run")
    results.write_rounds([{"round": 1}])
    (results.path / CHECKPOINT_FILE).write_bytes(b"c")
    with pytest.raises(FileExistsError, match="resume it"):
        RunResults(tmp_path, "run")
    resumed = RunResults(tmp_path, "run", resume=True)
    assert (resumed.path / METRICS_FILE).is_file()  # kept for the resumed run


def test_existing_final_folder_is_refused_and_nothing_is_created(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / SUMMARY_FILE).write_text("{}")
    with pytest.raises(FileExistsError, match="run-name"):
        RunResults(tmp_path, "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (tmp_path / "run" / SUMMARY_FILE).read_text() == "{}"


def test_stale_partial_folder_of_a_dead_run_is_replaced(tmp_path):
    stale = tmp_path / "run.partial"
    stale.mkdir()
    (stale / METRICS_FILE).write_text('{"round": 9}\n')
    results = RunResults(tmp_path, "run")
    assert results.path == stale.resolve()
    assert list(results.path.iterdir()) == []


def test_results_dir_is_created_with_parents(tmp_path):
    results = RunResults(tmp_path / "a" / "b", "run")
    assert results.path.is_dir()
    assert results.finish({}).parent == (tmp_path / "a" / "b").resolve()
