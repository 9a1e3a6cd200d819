"""End to end through Flower's simulation engine: frozen-encoder head mode (the real
all-MiniLM-L6-v2, mean + L2 pooling from its sentence-transformers files) with DP-SGD on the
head, 2 sites holding 400 rotten-tomatoes snippets each, 2 rounds; epsilon checked against
dp-accounting; the saved model reloads and predicts as the run's final server evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from common.data.registry import load_dataset
from common.models.text import TextClassifier, encode_texts
from simulations.run import run_simulation
from tests.reference_accountants import reference_pld

PER_SITE, TEST = 400, 300


@pytest.mark.slow
def test_dp_head_on_frozen_minilm_through_flower(tmp_path: Path) -> None:
    pool, test = load_dataset("rotten-tomatoes", 0)
    order = np.random.default_rng(0).permutation(len(pool))
    sites = []
    for i in range(2):
        rows = order[i * PER_SITE : (i + 1) * PER_SITE]
        file = tmp_path / f"site-{i}.csv"
        with file.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows((pool.texts[r], pool.class_names[pool.labels[r]]) for r in rows)
        sites.append(
            f'[site.{i}]\ndata-file = "{file}"\ntext-column = "text"\n'
            f'class-names = "{",".join(pool.class_names)}"\n'
        )
    config = tmp_path / "head.toml"
    config.write_text("".join(sites))
    overrides = {
        "dataset": "rotten-tomatoes",
        "model": "text",
        "finetune": "head",
        "partitioner": "iid",
        "max-length": 48,
        "num-server-rounds": 2,
        "local-steps": 10,
        "batch-size": 200,  # q = 0.5
        "optimizer": "adam",
        "learning-rate": 0.03,
        "noise-multiplier": 1.5,  # fixed: calibration with PLD is slow on busy cores
        "max-grad-norm": 1.0,
        "server-eval-max-records": TEST,
        "min-train-nodes": 2,
        "min-evaluate-nodes": 2,
        "run-name": "e2e-head",
    }
    folder = run_simulation(config, overrides, tmp_path / "results", num_supernodes=2)

    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    history: dict[str, list[tuple[float, float, int]]] = {}
    for record in rounds[1:]:
        assert record["trained-sites"] == 2
        for site, m in record["sites"].items():
            assert m["status"] == "trained" and m["dp"] == 1 and m["steps"] == 10
            assert m["sample-rate"] == 0.5 and m["num-examples"] < PER_SITE
            history.setdefault(site, []).append((1.5, 0.5, 10))
            assert m["epsilon-spent"] == pytest.approx(
                reference_pld(history[site], m["delta"]), rel=0.01
            )
    final = rounds[-1]["server-eval"]["accuracy"]
    assert final > 0.65  # chance is 0.5; frozen MiniLM features separate sentiment
    # only the head travelled: 384 x 2 weights + 2 biases
    model_dir = folder / "model"
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert (loaded.config.pooling, loaded.config.normalize) == ("mean", True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    _, test_held = load_dataset("rotten-tomatoes", 0)
    keep = np.sort(np.random.default_rng(0).permutation(len(test_held))[:TEST])
    held = test_held.subset(keep)
    data, _ = encode_texts(tokenizer, held.texts, held.labels, 48)
    with torch.no_grad():
        predicted = TextClassifier(loaded).eval()(*data.tensors[:-1]).argmax(-1)
    correct = int((predicted == data.tensors[-1]).sum())
    assert correct == round(final * TEST)  # the same predictions as the run's final evaluation
