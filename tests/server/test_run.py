"""server/run.py: the run summary's per-site account (spent, left, when and why it stopped)."""

from server.run import site_summaries
from server.strategy import RoundRecord


def reply(status: str, spent: float, *, reason: str = "", clamped=(), sigma=1.0, q=0.1) -> dict:
    return {
        "status": status,
        "reason": reason,
        "clamped": list(clamped),
        "epsilon-spent": spent,
        "epsilon-budget": 3.0,
        "epsilon-left": 3.0 - spent,
        "delta": 1e-4,
        "noise-multiplier": sigma if status == "trained" else 0.0,
        "sample-rate": q,
    }


def test_a_site_that_ran_out_is_summarised_with_the_round_and_reason():
    out_of_budget = "budget exhausted: 0.4 left"
    rounds = {
        0: RoundRecord(0),
        1: RoundRecord(1, sites={"A": reply("trained", 1.5, clamped=["x 2 -> 1 (cap)"])}),
        2: RoundRecord(2, sites={"A": reply("trained", 2.6, clamped=["x 2 -> 1 (cap)"])}),
        3: RoundRecord(3, sites={"A": reply("budget exhausted", 2.6, reason=out_of_budget)}),
        4: RoundRecord(4, sites={"A": reply("budget exhausted", 2.6, reason="later")}),
    }
    (summary,) = site_summaries(rounds).values()
    assert summary == {
        "rounds-trained": 2,
        "last-trained-round": 2,
        "stopped-round": 3,
        "stop-reason": out_of_budget,  # the first refusal, not a later one
        "clamped": ["x 2 -> 1 (cap)"],
        "epsilon-spent": 2.6,
        "epsilon-budget": 3.0,
        "epsilon-left": 3.0 - 2.6,
        "delta": 1e-4,
        "noise-multiplier": 1.0,  # of its last trained round
        "sample-rate": 0.1,
        "status": "budget exhausted",
        "last-round": 4,
    }


def test_a_site_that_trains_again_is_not_stopped_and_eval_only_entries_are_skipped():
    rounds = {
        1: RoundRecord(1, sites={"A": reply("invalid request", 0.0, reason="bad"), "B": {}}),
        2: RoundRecord(2, sites={"A": reply("trained", 1.0, sigma=2.0)}),
    }
    summaries = site_summaries(rounds)
    assert set(summaries) == {"A"}
    assert summaries["A"]["stopped-round"] is None and summaries["A"]["stop-reason"] is None
    assert (summaries["A"]["rounds-trained"], summaries["A"]["noise-multiplier"]) == (1, 2.0)


def test_resume_refuses_a_changed_configuration_and_names_the_change():
    import pytest

    from common.config import RunSettings
    from server.checkpoint import CheckpointError
    from server.run import _check_same_run, _resumable_settings

    settings = RunSettings(num_server_rounds=5)
    _check_same_run(_resumable_settings(settings), settings)
    with pytest.raises(CheckpointError, match=r"learning_rate: 0.05 -> 0.1"):
        _check_same_run(
            _resumable_settings(settings), RunSettings(num_server_rounds=5, learning_rate=0.1)
        )


def test_a_checkpoint_from_before_a_new_key_resumes_when_the_key_keeps_its_default():
    import pytest

    from common.config import RunSettings
    from server.checkpoint import CheckpointError
    from server.run import _check_same_run, _resumable_settings

    older = _resumable_settings(RunSettings())
    del older["audit"]  # written before the key existed: the run had its default (off)
    _check_same_run(older, RunSettings())
    with pytest.raises(CheckpointError, match="audit"):
        _check_same_run(older, RunSettings(audit=True))


def test_an_ner_run_refuses_the_audit_and_group_counts_before_anything_trains(tmp_path):
    import pytest

    from common.config import ConfigError, RunSettings
    from server.run import FederatedRun

    for extra in ({"audit": True}, {"sensitive_column": "sex"}):
        settings = RunSettings(
            dataset="wnut16-ner", model="text", results_dir=str(tmp_path), **extra
        )
        with pytest.raises(ConfigError, match="token-tagged"):
            FederatedRun(settings, "ner", run_id=1)
