"""server/checkpoint.py: the server's state after a round, written atomically, read back whole."""

import numpy as np
import pytest

from common.config import RunSettings
from server.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_same_run,
    load_checkpoint,
    resumable_settings,
    save_checkpoint,
)
from server.records import RoundRecord
from server.results import CHECKPOINT_FILE


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


def test_resume_refuses_a_changed_configuration_and_names_the_change():
    settings = RunSettings(num_server_rounds=5)
    check_same_run(resumable_settings(settings), settings)
    with pytest.raises(CheckpointError, match=r"learning_rate: 0.05 -> 0.1"):
        check_same_run(
            resumable_settings(settings), RunSettings(num_server_rounds=5, learning_rate=0.1)
        )


def test_a_checkpoint_from_before_a_new_key_resumes_when_the_key_keeps_its_default():
    older = resumable_settings(RunSettings())
    del older["audit"]  # written before the key existed: the run had its default (off)
    check_same_run(older, RunSettings())
    with pytest.raises(CheckpointError, match="audit"):
        check_same_run(older, RunSettings(audit=True))


def test_resume_reads_the_checkpoint_only_under_the_same_configuration(tmp_path):
    from server.checkpoint import resume_checkpoint

    assert resume_checkpoint(tmp_path, RunSettings()) is None
    saved = checkpoint()
    saved.settings = resumable_settings(RunSettings(num_server_rounds=4))
    save_checkpoint(tmp_path, saved)
    assert resume_checkpoint(tmp_path, RunSettings(num_server_rounds=4)).run_key == "run@7"
    with pytest.raises(CheckpointError, match=r"num_server_rounds: 4 -> 5"):
        resume_checkpoint(tmp_path, RunSettings(num_server_rounds=5))


def test_the_model_is_resumed_only_if_it_is_the_one_recorded_after_its_round():
    from common.models.weights import weights_digest
    from server.checkpoint import check_model

    saved = checkpoint(2)
    with pytest.raises(CheckpointError, match=r"not the model recorded after round 2 \(none\)"):
        check_model(saved)
    digest = weights_digest(saved.arrays)
    saved.rounds[2].model_sha256 = digest
    assert check_model(saved) == digest
    saved.arrays["b"] = saved.arrays["b"] + 1e-7  # one weight changed
    with pytest.raises(CheckpointError, match=f"after round 2 \\({digest[:12]}\\)"):
        check_model(saved)


def test_a_resumed_run_keeps_its_key_start_and_history_and_adds_its_flower_run():
    from server.checkpoint import RunIdentity

    new = RunIdentity.of("demo", 3, None)
    assert (new.run_key, new.flower_run_ids, new.resumed) == ("demo@3", [3], [])
    saved = checkpoint()
    saved.resumed = [{"flower-run-id": 9, "after-round": 1, "model-sha256": "ab"}]
    later = RunIdentity.of("demo", 11, saved)
    assert (later.run_key, later.flower_run_ids, later.started) == ("run@7", [7, 9, 11], 123.5)
    assert later.to_json() == {
        "run-name": "demo",
        "run-id": 11,
        "flower-run-ids": [7, 9, 11],
        "resumed": saved.resumed,
        "run-key": "run@7",
    }
    written = later.checkpoint(3, saved.arrays, saved.rounds, RunSettings(resume=True))
    assert (written.completed_round, written.run_key, written.flower_run_ids) == (
        3,
        "run@7",
        [7, 9, 11],
    )
    assert "resume" not in written.settings and written.settings["num_server_rounds"] == 3
