"""server/checkpoint.py: the server's state after a round, written atomically, read back whole."""

import numpy as np
import pytest

from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.results import CHECKPOINT_FILE
from server.strategy import RoundRecord


def checkpoint(completed_round: int = 2) -> Checkpoint:
    return Checkpoint(
        completed_round=completed_round,
        arrays={"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)},
        rounds={
            0: RoundRecord(0, server_eval={"accuracy": 0.5, "loss": 0.7}),
            2: RoundRecord(
                2,
                sites={"A": {"status": "trained", "epsilon-spent": 1.5, "clamped": ["x"]}},
                failures=["B: no reply"],
                dropped=["B"],
                trained_sites=1,
            ),
        },
        run_key="run@7",
        settings={"num-server-rounds": 4, "model": "mlp"},
        flower_run_ids=[7, 9],
        started=123.5,
    )


def test_a_checkpoint_reads_back_equal(tmp_path):
    saved = checkpoint()
    assert save_checkpoint(tmp_path, saved) == tmp_path / CHECKPOINT_FILE
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    assert set(loaded.arrays) == set(saved.arrays)
    for key, array in saved.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[key], array)
        assert loaded.arrays[key].dtype == array.dtype
    assert (loaded.completed_round, loaded.rounds, loaded.run_key) == (2, saved.rounds, "run@7")
    assert (loaded.settings, loaded.flower_run_ids, loaded.started) == (
        saved.settings,
        [7, 9],
        123.5,
    )


def test_a_new_checkpoint_replaces_the_old_and_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path, checkpoint(1))
    save_checkpoint(tmp_path, checkpoint(2))
    assert load_checkpoint(tmp_path).completed_round == 2
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_no_checkpoint_is_none_and_a_damaged_one_is_an_error(tmp_path):
    assert load_checkpoint(tmp_path) is None
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path)
