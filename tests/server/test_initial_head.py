"""server/initial_head.py: a run started from a saved head (init-head-from) begins with exactly
that head and the same fresh LoRA adapters as a run without it; what does not fit is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ConfigError, RunSettings
from common.models.save import save_model
from common.models.text import LoraSettings, load_text_classifier
from common.models.tiny import save_tiny_bert
from common.models.weights import trainable_state, weights_digest
from common.protocol.records import from_array_record
from server.initial_head import load_initial_head
from server.run import FederatedRun


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny"))


def _settings(tiny: Path, tmp_path: Path, **extra) -> RunSettings:
    return RunSettings(
        dataset="rotten-tomatoes",
        model="text",
        model_name_or_path=str(tiny),
        server_eval=False,
        partitioner="iid",
        max_length=32,
        lora_r=4,
        results_dir=str(tmp_path / "results"),
        **extra,
    )


def _saved_head(tiny: Path, out: Path, *, classes: int = 2, pooling: str = "pooler") -> dict:
    """A head-mode model with a trained-looking (random, non-initial) head, saved like
    server/run.py ``finish``; returns its trainable state (what a head run's arrays are)."""
    model, tokenizer = load_text_classifier(
        str(tiny), classes, lora=None, device="cpu", pooling=pooling, freeze_encoder=True
    )
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn_like(param) * 3.0 + 1.0)
    save_model(model, out, tokenizer)
    return trainable_state(model)


def _start(settings: RunSettings, name: str, run_id: int) -> tuple[dict, FederatedRun]:
    run = FederatedRun(settings, name, run_id)
    return from_array_record(run.start_weights()), run


@pytest.mark.parametrize(
    ("finetune", "pooling"), [("lora", "auto"), ("lora", "mean"), ("full", "mean")]
)
def test_round_one_starts_from_the_saved_head_and_the_usual_fresh_rest(
    tiny, tmp_path, finetune, pooling
):
    head = _saved_head(tiny, tmp_path / "head-run" / "model", pooling=_pooling(pooling))
    kw = {"finetune": finetune, "pooling": pooling, "seed": 3}
    started, run = _start(
        _settings(tiny, tmp_path, init_head_from=str(tmp_path / "head-run" / "model"), **kw),
        "lpft",
        1,
    )
    fresh, _ = _start(_settings(tiny, tmp_path, **kw), "plain", 2)

    assert started.keys() == fresh.keys()
    head_names = [n for n in started if ".classifier." in n]
    assert len(head_names) == 2  # weight and bias, the only head parameters
    for name in head_names:
        saved = head["model.classifier." + name.rsplit(".", 1)[-1]]
        np.testing.assert_array_equal(started[name], saved)  # bit for bit
        assert not np.array_equal(started[name], fresh[name])
    for name in started.keys() - set(head_names):
        np.testing.assert_array_equal(started[name], fresh[name])  # adapters / encoder: as now
    # the summary's record names the directory and equals the head run's model-sha256
    assert run.initial_head is not None
    assert run.initial_head["from"] == str(tmp_path / "head-run" / "model")
    assert run.initial_head["sha256"] == weights_digest(head)
    assert run.initial_head["parameters"] == ["classifier.bias", "classifier.weight"]


def _pooling(pooling: str) -> str:
    return "pooler" if pooling == "auto" else pooling  # the tiny BERT has no modules.json


def test_a_lora_run_directory_gives_the_head_of_its_merged_checkpoint(tiny, tmp_path):
    model, tokenizer = load_text_classifier(str(tiny), 2, lora=LoraSettings(r=4), device="cpu")
    save_model(model, tmp_path / "lora-run", tokenizer)
    saved = {n: a for n, a in trainable_state(model).items() if ".classifier." in n}
    target, _ = load_text_classifier(str(tiny), 2, lora=LoraSettings(r=4), device="cpu", seed=9)
    record = load_initial_head(target, tmp_path / "lora-run")
    assert record["from"] == str(tmp_path / "lora-run" / "merged")
    got = trainable_state(target)
    for name, array in saved.items():
        np.testing.assert_array_equal(got[name], array)


def _lora_model(tiny: Path, pooling: str = "pooler"):
    model, _ = load_text_classifier(
        str(tiny), 2, lora=LoraSettings(r=4), device="cpu", pooling=pooling
    )
    return model


def test_a_missing_or_empty_directory_is_refused(tiny, tmp_path):
    model = _lora_model(tiny)
    before = trainable_state(model)
    with pytest.raises(ConfigError, match="no such directory"):
        load_initial_head(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_initial_head(model, tmp_path / "empty")
    _saved_head(tiny, tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights"):
        load_initial_head(model, tmp_path / "no-weights")
    after = trainable_state(model)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def test_a_head_for_another_number_of_classes_is_refused(tiny, tmp_path):
    _saved_head(tiny, tmp_path / "three", classes=3)
    model = _lora_model(tiny)
    before = trainable_state(model)
    with pytest.raises(ConfigError, match=r"classes: saved 3, this run 2"):
        load_initial_head(model, tmp_path / "three")
    after = trainable_state(model)
    assert all(np.array_equal(before[n], after[n]) for n in before)  # nothing changed


def test_a_head_of_another_base_encoder_or_pooling_is_refused(tiny, tmp_path):
    other = save_tiny_bert(tmp_path / "other-base", hidden=16)
    _saved_head(other, tmp_path / "other-head")
    with pytest.raises(
        ConfigError, match=r"base encoder differs.*hidden_size: saved 16, this run 32"
    ):
        load_initial_head(_lora_model(tiny), tmp_path / "other-head")
    _saved_head(tiny, tmp_path / "mean-head", pooling="mean")
    with pytest.raises(ConfigError, match="PooledEncoderForSequenceClassification"):
        load_initial_head(_lora_model(tiny), tmp_path / "mean-head")  # a pooler model
    _saved_head(tiny, tmp_path / "cls-head", pooling="cls")
    with pytest.raises(ConfigError, match=r"head input: saved \('cls', False\)"):
        load_initial_head(_lora_model(tiny, pooling="mean"), tmp_path / "cls-head")
