"""server/progress.py: the one-line progress report of a round."""

from server.progress import format_round
from server.records import RoundRecord


def site(spent: float, budget: float, delta: float, status: str = "trained") -> dict:
    return {
        "epsilon-spent": spent,
        "epsilon-budget": budget,
        "epsilon-left": budget - spent,
        "delta": delta,
        "status": status,
    }


def full_record() -> RoundRecord:
    return RoundRecord(
        server_round=2,
        sites={
            "Hungary": site(7.95, 8.0, 2e-4, "budget exhausted"),
            "Cleveland": {**site(2.1234, 8.0, 3.3e-4), "eval-accuracy": 0.8},
            "eval-only": {"eval-accuracy": 0.5},
        },
        train={"train-loss": 0.43219},
        federated_eval={"eval-accuracy": 0.80123, "eval-loss": 0.5},
        server_eval={"accuracy": 0.8125, "loss": 0.4321},
        failures=["node-7: timeout", "node-9: killed"],
        trained_sites=1,
    )


def test_dp_line_shows_round_losses_each_sites_spend_and_failures():
    line = format_round(full_record(), num_rounds=5, dp=True)
    assert line == (
        "round 2/5 | train loss 0.4322 | server acc 0.8125 loss 0.4321 | federated acc 0.8012"
        " | Cleveland: eps 2.123/8.000 left 5.877 (delta 3.3e-04)"
        " | Hungary: eps 7.950/8.000 left 0.050 (delta 2.0e-04) BUDGET EXHAUSTED"
        " | 2 failed"
    )


def test_non_private_run_says_so_for_every_site_and_shows_no_epsilon():
    line = format_round(full_record(), num_rounds=5, dp=False)
    assert "Cleveland: NON-PRIVATE" in line
    assert "Hungary: NON-PRIVATE" in line
    assert "eps" not in line
    assert "eval-only" not in line
    assert line.startswith("round 2/5 | ")
    assert line.endswith(" | 2 failed")


def test_sites_without_a_training_reply_are_not_listed():
    rec = RoundRecord(server_round=1, sites={"A": {"eval-accuracy": 0.1}})
    assert format_round(rec, num_rounds=1, dp=True) == "round 1/1"


def test_bare_round_has_no_empty_sections_and_no_failure_count():
    rec = RoundRecord(server_round=3, sites={"B": site(0.5, 1.0, 1e-5)})
    assert format_round(rec, num_rounds=10, dp=True) == (
        "round 3/10 | B: eps 0.500/1.000 left 0.500 (delta 1.0e-05)"
    )


def test_one_failure_is_counted():
    rec = RoundRecord(server_round=1, failures=["node-1: boom"])
    assert format_round(rec, num_rounds=2, dp=False) == "round 1/2 | 1 failed"


def test_client_level_epsilon_is_its_own_labelled_figure_and_rejected_sites_show_no_metrics():
    rec = full_record()
    rec.sites["Broken"] = {"status": "rejected", "num-examples": -3}  # no epsilon keys at all
    rec.client_dp = {"epsilon": 1.23456, "delta": 1e-5, "noise-multiplier": 1.1, "sample-rate": 0.4}
    line = format_round(rec, num_rounds=5, dp=True)
    assert " | Broken: REJECTED | " in line
    assert " | client-level eps 1.235 (delta 1.0e-05, z 1.100, q 0.40) | 2 failed" in line


def test_many_sites_are_summarised_on_one_short_line():
    sites = {f"site-{i}": site(0.1 * i, 8.0, 1e-5) for i in range(1, 100)}
    sites["site-0"] = site(7.99, 8.0, 1e-5, "budget exhausted")
    rec = RoundRecord(server_round=4, sites=sites, train={"train-loss": 0.5})
    line = format_round(rec, num_rounds=10, dp=True)
    assert line == (
        "round 4/10 | train loss 0.5000 | 100 sites: 99 trained, 1 did not train"
        " | eps spent min 0.100 median 5.050 max 9.900"
    )
    assert "site-" not in format_round(rec, num_rounds=10, dp=False)


def test_rejected_sites_are_counted_apart_and_left_out_of_the_epsilon_figures():
    sites = {f"site-{i}": site(1.0, 8.0, 1e-5) for i in range(10)}
    sites["site-9"] = {"status": "rejected", "epsilon-spent": "junk"}
    rec = RoundRecord(server_round=1, sites=sites)
    line = format_round(rec, num_rounds=2, dp=True)
    assert line.endswith(
        "10 sites: 9 trained, 1 REJECTED | eps spent min 1.000 median 1.000 max 1.000"
    )
