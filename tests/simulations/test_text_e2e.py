"""End to end through Flower's simulation engine: DP fine-tuning of a (tiny random) BERT for
sequence classification (rotten-tomatoes) and token classification / NER (wnut16-ner), 2 sites,
2 rounds, LoRA; epsilon checked against dp-accounting, the saved model reloaded."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import transformers

from common.entities import entity_scores, summed_counts
from common.models.tiny import save_tiny_bert
from simulations.run import run_simulation
from tests.reference_accountants import reference_pld

TASKS = {
    "sequence": {"dataset": "rotten-tomatoes", "max-length": 32},
    "tokens": {"dataset": "wnut16-ner", "max-length": 48},
}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sequence", "tokens"])
def test_dp_text_classification_through_flower(tmp_path: Path, task: str) -> None:
    tiny = save_tiny_bert(tmp_path / "tiny-bert")
    overrides = TASKS[task] | {
        "model": "text",
        "model-name-or-path": str(tiny),
        "partitioner": "iid",
        "finetune": "lora",
        "lora-r": 4,
        "num-server-rounds": 2,
        "local-steps": 2,
        "batch-size": 16,
        "learning-rate": 0.05,
        "target-epsilon": 8.0,
        # a fixed sigma: calibrating a small sigma with PLD costs ~30 s per site on 2 busy cores
        "noise-multiplier": 1.0,
        "server-eval-max-records": 120,
        "min-train-nodes": 2,
        "min-evaluate-nodes": 2,
        "run-name": f"e2e-{task}",
    }
    log = io.StringIO()
    folder = run_simulation(None, overrides, tmp_path / "results", num_supernodes=2, stream=log)

    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    history: dict[str, list[tuple[float, float, int]]] = {}
    for record in rounds[1:]:
        assert record["trained-sites"] == 2
        for site, m in record["sites"].items():
            assert m["status"] == "trained" and m["dp"] == 1 and m["steps"] == 2
            assert m["noise-multiplier"] == 1.0
            history.setdefault(site, []).append(
                (m["noise-multiplier"], m["sample-rate"], m["steps"])
            )
            expected = reference_pld(history[site], m["delta"])
            assert m["epsilon-spent"] == pytest.approx(expected, rel=0.01)
            assert 0 < m["epsilon-spent"] <= 8.0 and m["delta"] < 1 / m["num-examples"]
    final = rounds[-1]
    assert 0.0 <= final["server-eval"]["accuracy"] <= 1.0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds-completed"] == 2

    if task == "tokens":
        server = final["server-eval"]
        assert {"entity-f1", "entity-precision", "entity-recall", "entity-macro-f1"} <= set(server)
        # federated entity F1 = F1 of the per-site counts summed (no averaging of scores)
        sites = [m for m in final["sites"].values()]
        assert all("eval-entity-tp/person" in m for m in sites)
        recomputed = entity_scores(summed_counts(sites))
        assert final["federated-eval"]["eval-entity-f1"] == pytest.approx(recomputed["entity-f1"])
        report = summary["entity-report"]
        assert {"person", "geo-loc", "micro avg", "macro avg"} <= set(report)
        assert report["micro avg"]["f1-score"] == pytest.approx(server["entity-f1"])
        assert "server entity F1" in log.getvalue()
        auto = transformers.AutoModelForTokenClassification
    else:
        assert "entity-report" not in summary
        assert not any("entity" in k for k in final["server-eval"])
        auto = transformers.AutoModelForSequenceClassification
    merged = auto.from_pretrained(folder / "model" / "merged")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "model" / "merged")
    with torch.no_grad():
        logits = merged(**tokenizer(["the film was fun"], return_tensors="pt")).logits
    assert logits.shape[-1] == (21 if task == "tokens" else 2)
