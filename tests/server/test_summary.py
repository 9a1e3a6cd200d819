"""server/summary.py: the run summary's per-site account (spent, left, when and why it stopped),
its privacy statement and the summary of the rounds."""

from common.config import RunSettings
from server.records import RoundRecord
from server.summary import privacy_statement, run_summary, site_summaries


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


def test_the_privacy_statement_names_each_protection_of_the_run():
    assert privacy_statement(RunSettings()) == "sample-level DP-SGD (Opacus) at each site"
    both = privacy_statement(
        RunSettings(dp=False, client_dp="client-fixed", secure_aggregation=True)
    )
    assert both == (
        "NON-PRIVATE BASELINE (dp=false): no sample-level differential privacy; "
        "client-level DP-FedAvg (client-fixed; see client-level-dp); "
        "secure aggregation (SecAgg+): the server saw only the sum"
    )


def test_the_summary_counts_trained_rounds_and_shows_the_last_one():
    rounds = {
        0: RoundRecord(0, server_eval={"accuracy": 0.4, "loss": 0.7}),
        1: RoundRecord(1, sites={"A": reply("trained", 1.0)}, trained_sites=1),
        2: RoundRecord(2, sites={"A": reply("trained", 2.0)}, trained_sites=1, rejected=["B: x"]),
        3: RoundRecord(3, sites={"A": reply("budget exhausted", 2.0)}),  # nobody trained
    }
    identity = {
        "run-name": "demo",
        "run-id": 5,
        "flower-run-ids": [5],
        "resumed": [],
        "run-key": "demo@5",
    }
    summary = run_summary(
        RunSettings(num_server_rounds=4), rounds, identity=identity, model_sha256="ab"
    )
    assert (summary["rounds-completed"], summary["rounds-planned"]) == (2, 4)
    assert summary["stopped-early"] is None and summary["run-key"] == "demo@5"
    assert summary["final-round"] == rounds[2].to_json(True)
    assert summary["rejected-updates"] == ["round 2: B: x"]
    assert summary["sites"]["A"]["stopped-round"] == 3
    assert summary["client-level-dp"] == {"mode": "off"}
    assert "entity-report" not in summary and summary["config"]["num_server_rounds"] == 4
    assert set(summary["versions"]) == {"python", "flwr", "torch", "opacus", "transformers"}
    stopped = run_summary(
        RunSettings(),
        {0: RoundRecord(0)},
        identity=identity,
        model_sha256="ab",
        stopped_early="round 1: only 0 site(s) could train",
        entity_report={"PER": {"f1-score": 0.5}},
    )
    assert stopped["rounds-completed"] == 0  # the last round is then the initial model's
    assert stopped["final-round"] == RoundRecord(0).to_json(True)
    assert stopped["stopped-early"] == "round 1: only 0 site(s) could train"
    assert stopped["entity-report"] == {"PER": {"f1-score": 0.5}}
    none = run_summary(RunSettings(), {}, identity=identity, model_sha256="ab")
    assert none["final-round"] is None
