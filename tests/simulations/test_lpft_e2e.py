"""End to end through Flower's simulation engine: linear probe, then LoRA ([[phase]] tables) on a
tiny random BERT, 2 sites, 1 round per phase. Phase 2 starts from phase 1's head (its summary
says so, with phase 1's model digest), and in the sites' shared ledgers every record's epsilon
composed over both phases (dp-accounting RDP over the rows) is <= the total target and more
than phase 1 alone.

Marked long (skipped unless --run-long; ~140 s): tests/simulations/test_phases.py composes both
phases through the real site gate and tests/server/test_initial_head.py checks the head start."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from common.models.tiny import save_tiny_bert
from common.privacy.ledger import PrivacyLedger
from simulations.run import run_simulation
from tests.reference_accountants import ledger_rdp

TOTAL = 4.0
PHASES = """
[[phase]]
name = "head"
finetune = "head"
local-steps = 5
batch-size = 1024
learning-rate = 0.03
optimizer = "adam"
epsilon-share = 0.5

[[phase]]
name = "lora"
finetune = "lora"
local-steps = 2
batch-size = 32
learning-rate = 0.001
optimizer = "adam"
epsilon-share = 0.5
"""


@pytest.mark.slow
@pytest.mark.long
def test_linear_probe_then_lora_composes_both_phases_in_the_shared_ledgers(tmp_path: Path):
    tiny = save_tiny_bert(tmp_path / "tiny-bert")
    config = tmp_path / "lpft.toml"
    config.write_text(
        "[simulation]\nnum-supernodes = 2\n[run]\n"
        + "".join(
            f"{k} = {json.dumps(v)}\n"
            for k, v in {
                "dataset": "rotten-tomatoes",
                "partitioner": "iid",
                "model": "text",
                "model-name-or-path": str(tiny),
                "lora-r": 4,
                "max-length": 32,
                "num-server-rounds": 1,
                "target-epsilon": TOTAL,
                "accountant": "rdp",  # calibration with PLD is slow on busy cores
                "evaluate-with-train": True,
                "server-eval-max-records": 100,
                "min-train-nodes": 2,
                "min-evaluate-nodes": 2,
            }.items()
        )
        + PHASES
    )
    log = io.StringIO()
    results = tmp_path / "results"
    last = run_simulation(config, {"run-name": "lpft"}, results, stream=log)

    head_dir, lora_dir = results / "lpft-head", results / "lpft-lora"
    assert last == lora_dir and head_dir.is_dir()
    text = log.getvalue()
    assert "phase 1/2 'head': epsilon share 0.5 -> target-epsilon 2 of 4" in text
    assert "phase 2/2 'lora': epsilon share 0.5" in text
    assert f"phase 'head' results: {head_dir}" in text
    first = json.loads((head_dir / "summary.json").read_text())
    second = json.loads((lora_dir / "summary.json").read_text())
    assert first["initial-head"] is None
    assert second["initial-head"]["from"] == str(head_dir / "model")
    assert second["initial-head"]["sha256"] == first["model-sha256"]  # phase 1's final head
    assert second["config"]["target_epsilon"] == first["config"]["target_epsilon"] == 2.0
    assert second["run-key"] != first["run-key"]  # each phase its own plan

    ledgers = sorted((results / "ledgers" / "lpft").glob("site-*.sqlite"))
    assert [p.name for p in ledgers] == ["site-0.sqlite", "site-1.sqlite"]
    for path in ledgers:
        with PrivacyLedger(path, read_only=True) as ledger:
            rows = ledger.rows()
        assert all(r.epsilon_budget == TOTAL for r in rows)  # checked against the total
        training = [r for r in rows if r.purpose == "dp-sgd"]
        assert {r.run_id.split("@")[0] for r in training} == {"lpft-head", "lpft-lora"}
        for key in {r.fingerprint for r in rows}:
            mine = [r for r in rows if r.fingerprint == key]
            assert ledger_rdp(mine) <= TOTAL + 1e-9
        (key,) = {r.fingerprint for r in training}  # the site's training records
        head_only = [r for r in training if r.run_id.startswith("lpft-head@")]
        both = ledger_rdp(training)
        assert ledger_rdp(head_only) == pytest.approx(2.0, rel=0.02)
        assert ledger_rdp(head_only) < both <= TOTAL
    # the sites reported the composed epsilon of both phases
    final = second["sites"]
    assert len(final) == 2
    assert all(2.0 < s["epsilon-spent"] <= TOTAL for s in final.values())
