"""server/explanations.py: the coordinator's explanations of a saved final model on its own
held-out records, in the report, DP run next to a baseline."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.save import save_model
from common.models.tabular import build_tabular_model
from common.models.text import LoraSettings, load_text_classifier
from common.models.tiny import save_tiny_bert
from server.explanations import (
    COMPARISON_FILE,
    EXPLANATIONS_FILE,
    explain_run,
    load_or_explain,
    server_records,
)
from server.report import FIGURES_DIR, write_report
from server.results import RunResults


def _folder(root: Path, name: str, settings: RunSettings, model, tokenizer=None) -> Path:
    """A finished results folder holding ``model`` saved the way a run saves it."""
    results = RunResults(root, name)
    results.write_rounds([{"round": 0, "sites": {}, "dropped": []}])
    save_model(model, results.model_dir, tokenizer)
    summary = {"run-name": name, "config": asdict(settings), "sites": {}}
    return results.finish(summary)


def _heart_model(kind: str, epochs: int, noise: float) -> torch.nn.Module:
    """A heart-disease classifier trained centrally for a moment (``noise``: Gaussian noise
    added to each step's gradient, a stand-in for a noisier run)."""
    pool, _ = load_dataset("heart-disease", 0)
    x, y = torch.as_tensor(pool.features), torch.as_tensor(pool.labels)
    torch.manual_seed(0)
    model = build_tabular_model(kind, x.shape[1], 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.grad += noise * torch.randn_like(p)
        optimizer.step()
    return model.eval()


def test_heart_disease_report_explains_both_runs_and_their_rank_agreement(tmp_path):
    settings = RunSettings(dataset="heart-disease", model="mlp", server_eval_max_records=80)
    dp = _folder(tmp_path, "dp", settings, _heart_model("mlp", 60, noise=0.3))
    plain = RunSettings(dataset="heart-disease", dp=False, server_eval_max_records=80)
    baseline = _folder(tmp_path, "non-dp", plain, _heart_model("mlp", 60, 0))
    report = write_report(dp, baseline=baseline).read_text()

    doc = json.loads((dp / EXPLANATIONS_FILE).read_text())
    test = server_records(asdict(settings))
    assert doc["kind"] == "tabular" and doc["records-explained"] == len(test) == 80
    assert doc["features"] == test.feature_names and doc["class-names"] == test.class_names
    assert doc["additivity-max-error"] < 1e-6
    values = [r["mean-abs-shap"] for r in doc["global-importance"]]
    assert values == sorted(values, reverse=True) and values[0] > 0
    for record in doc["records"][:5]:  # per record: expected value + sum(SHAP) = probability
        assert abs(record["expected-value"] + sum(record["shap"]) - record["probability"]) < 1e-6
        assert record["label"] in test.class_names and isinstance(record["correct"], bool)
    assert not (baseline / EXPLANATIONS_FILE).exists()  # the baseline folder is left as it was

    comparison = json.loads((dp / COMPARISON_FILE).read_text())
    other = load_or_explain(baseline, write=False)
    a = {r["feature"]: r["mean-abs-shap"] for r in doc["global-importance"]}
    b = {r["feature"]: r["mean-abs-shap"] for r in other["global-importance"]}
    keys = sorted(a)
    assert comparison["items-compared"] == len(keys) == 35
    rho = spearmanr([a[k] for k in keys], [b[k] for k in keys]).statistic
    assert comparison["spearman"] == pytest.approx(rho)
    tau = kendalltau([a[k] for k in keys], [b[k] for k in keys]).statistic
    assert comparison["kendall"] == pytest.approx(tau)
    assert comparison["runs"] == ["DP", "non-DP baseline"]

    assert "Explanations: why the final model decides" in report
    assert (dp / FIGURES_DIR / "explanations.png").read_bytes().startswith(b"\x89PNG")
    assert "<img alt='explanations'" in report
    assert f"Spearman rho {rho:.3f}" in report
    assert doc["global-importance"][0]["feature"] in report
    assert "server-eval split of heart-disease" in report


def test_explanations_follow_the_saved_model_not_a_stale_file(tmp_path):
    settings = RunSettings(dataset="heart-disease", model="logreg", server_eval_max_records=30)
    folder = _folder(tmp_path, "run", settings, _heart_model("logreg", 5, 0))
    first = load_or_explain(folder)
    assert first["records-explained"] == 30
    assert load_or_explain(folder) == first  # reused while the model is the same
    save_model(_heart_model("logreg", 40, 0), folder / "model")  # the shipped model changed
    second = load_or_explain(folder)
    assert second["model"]["sha256"] != first["model"]["sha256"]
    assert json.loads((folder / EXPLANATIONS_FILE).read_text()) == second


def test_text_report_highlights_tokens_of_correct_and_wrong_predictions(tmp_path):
    base = save_tiny_bert(tmp_path / "tiny")
    model, tokenizer = load_text_classifier(str(base), 2, lora=LoraSettings(), device="cpu")
    settings = RunSettings(
        dataset="rotten-tomatoes", model="text", server_eval_max_records=40, max_length=32
    )
    folder = _folder(tmp_path / "results", "text", settings, model, tokenizer)
    report = write_report(folder).read_text()
    doc = json.loads((folder / EXPLANATIONS_FILE).read_text())
    assert doc["kind"] == "text" and doc["records-predicted"] == 40
    assert doc["model"]["path"].endswith("model/merged")  # LoRA: the merged checkpoint
    assert doc["class-names"] == ["rotten", "fresh"]
    assert sum(doc["sample"].values()) == len(doc["records"]) > 0
    for r in doc["records"]:
        assert abs(sum(r["attributions"]) - r["output-difference"] - r["delta"]) < 1e-4
    assert "towards 'rotten'" in report or "towards 'fresh'" in report
    spans = re.findall(r"<span class='tok' title='([+-][0-9.]+)'", report)
    assert len(spans) == sum(len(r["tokens"]) for r in doc["records"])
    assert (folder / FIGURES_DIR / "explanations.png").is_file()


def test_a_folder_without_a_model_gets_a_report_without_explanations(tmp_path):
    results = RunResults(tmp_path, "bare")
    results.write_rounds([{"round": 0, "sites": {}, "dropped": []}])
    folder = results.finish({"run-name": "bare", "config": asdict(RunSettings()), "sites": {}})
    report = write_report(folder).read_text()
    assert "not explained (no saved model" in report
    assert not (folder / EXPLANATIONS_FILE).exists()


def test_server_records_cap_like_the_server_side_evaluation():
    full = server_records(asdict(RunSettings(dataset="heart-disease")))
    capped = server_records(
        asdict(RunSettings(dataset="heart-disease", server_eval_max_records=50))
    )
    keep = np.sort(np.random.default_rng(0).permutation(len(full))[:50])
    assert np.array_equal(capped.features, full.features[keep])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_runs_the_coordinator_cannot_explain_are_skipped_with_the_reason(tmp_path):
    model = _heart_model("logreg", 1, 0)
    ner = _folder(tmp_path, "ner", RunSettings(dataset="wnut16-ner", model="text"), model)
    assert "NER" in explain_run(ner)["skipped"]
    off = _folder(tmp_path, "off", RunSettings(dataset="heart-disease", server_eval=False), model)
    assert "server-eval is off" in load_or_explain(off)["skipped"]
    assert "not explained (server-eval is off" in write_report(off).read_text()
