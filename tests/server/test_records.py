"""server/records.py: a round's record and its line of metrics.jsonl."""

import json

from server.records import RoundRecord


def test_a_round_is_written_with_kebab_case_keys_and_the_runs_dp():
    rec = RoundRecord(
        3,
        sites={"Cleveland": {"status": "trained", "epsilon-spent": 1.5}},
        federated_eval={"eval-accuracy": 0.8},
        server_eval={"accuracy": 0.81, "loss": 0.4},
        rejected=["Hungary: norm 9 exceeds the bound 5"],
        client_dp={"epsilon": 2.0},
        trained_sites=1,
        model_sha256="ab12",
        seconds=4.5,
    )
    line = rec.to_json(dp=True)
    assert line == {
        "round": 3,
        "dp": True,
        "trained-sites": 1,
        "train": {},
        "federated-eval": {"eval-accuracy": 0.8},
        "server-eval": {"accuracy": 0.81, "loss": 0.4},
        "sites": {"Cleveland": {"status": "trained", "epsilon-spent": 1.5}},
        "failures": [],
        "dropped": [],
        "rejected": ["Hungary: norm 9 exceeds the bound 5"],
        "client-dp": {"epsilon": 2.0},
        "model-sha256": "ab12",
        "seconds": 4.5,
    }
    assert json.loads(json.dumps(line)) == line
    assert RoundRecord(0).to_json(dp=False)["dp"] is False


def test_records_do_not_share_their_lists():
    first, second = RoundRecord(1), RoundRecord(2)
    first.failures.append("x")
    first.sites["A"] = {}
    assert second.failures == [] and second.sites == {}
