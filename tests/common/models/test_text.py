import numpy as np
import pytest
import torch

from common.config import RunSettings
from common.data.types import LabeledData
from common.models.text import LoraSettings, encode_texts, load_text_classifier
from common.models.weights import trainable_state
from common.task import build_model

TEXTS = ["the movie was great", "awful plot", "good acting, bad story", "fun"]


def test_full_fine_tuning_trains_everything(tiny_bert):
    model, tokenizer = load_text_classifier(str(tiny_bert), 3, lora=None, device="cpu")
    assert all(p.requires_grad for p in model.parameters())
    dataset, _ = encode_texts(tokenizer, TEXTS, [0, 1, 2, 0], max_length=16)
    assert model(*dataset.tensors[:-1]).shape == (4, 3)


def test_lora_trains_only_adapters_and_head(tiny_bert):
    model, _ = load_text_classifier(str(tiny_bert), 2, lora=LoraSettings(r=4), device="cpu")
    keys = list(trainable_state(model))
    lora_keys = [k for k in keys if ".lora_A." in k or ".lora_B." in k]
    head_keys = [k for k in keys if ".classifier." in k]
    assert len(lora_keys) == 2 * 2 * 2  # layers x (query, value) x (A, B)
    assert sorted(k.rsplit(".", 1)[-1] for k in head_keys) == ["bias", "weight"]
    assert len(keys) == len(lora_keys) + len(head_keys)
    assert all(".query." in k or ".value." in k for k in lora_keys)


def test_same_seed_same_initial_model(tiny_bert):
    a = trainable_state(
        load_text_classifier(str(tiny_bert), 2, lora=LoraSettings(), device="cpu")[0]
    )
    b = trainable_state(
        load_text_classifier(str(tiny_bert), 2, lora=LoraSettings(), device="cpu")[0]
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_missing_lora_target_lists_candidates(tiny_bert):
    with pytest.raises(ValueError, match=r"\['qkv'\].*candidates.*'key', 'query', 'value'"):
        load_text_classifier(
            str(tiny_bert), 2, lora=LoraSettings(target_modules=("qkv",)), device="cpu"
        )


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_unloadable_path_is_named(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(OSError, match=f"'{path}'.*local directory with config.json"):
        load_text_classifier(str(path), 2, lora=None, device="cpu")


def test_encode_texts_columns_and_truncation(tiny_bert):
    _, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu")
    texts = ["good", "bad " * 20, "the film was fun"]
    dataset, truncated = encode_texts(tokenizer, texts, np.array([1, 0, 1]), max_length=8)
    input_ids, mask, token_types, positions, labels = dataset.tensors
    assert truncated == 1
    assert input_ids.shape == (3, 8)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # [CLS] good [SEP] + padding
    assert torch.equal(positions, torch.arange(8).repeat(3, 1))
    assert token_types.sum() == 0
    assert labels.tolist() == [1, 0, 1]
    short, none_cut = encode_texts(tokenizer, ["good", "bad"], [1, 0], max_length=64)
    assert none_cut == 0 and short.tensors[0].shape == (2, 3)  # padded to the longest only


def test_encode_texts_rejects_empty_texts(tiny_bert):
    _, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu")
    with pytest.raises(ValueError, match="2 of 4 texts are empty"):
        encode_texts(tokenizer, ["good", "", "  ", "bad"], [0, 1, 0, 1], max_length=8)


def test_a_tokenizer_from_another_model_is_refused(tiny_bert, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_bert, mixed)
    tokenizer = AutoTokenizer.from_pretrained(mixed)
    tokenizer.add_tokens([f"newword{i}" for i in range(5)])  # ids past the embedding table
    tokenizer.save_pretrained(mixed)
    with pytest.raises(ValueError, match=r"tokenizer/model mismatch.*tokens but the model"):
        load_text_classifier(str(mixed), 2, lora=None, device="cpu")


@pytest.mark.parametrize(("dp", "lora", "frozen"), [(True, False, True), (False, False, False)])
def test_dp_full_fine_tuning_freezes_the_word_embeddings(tiny_bert, dp, lora, frozen):
    settings = RunSettings(
        model="text", model_name_or_path=str(tiny_bert), finetune="lora" if lora else "full", dp=dp
    )
    data = LabeledData("text", np.array([0, 1]), ["a", "b"], texts=["good film", "bad film"])
    model, _ = build_model(settings, data, "cpu")
    table = model.model.get_input_embeddings().weight
    assert table.requires_grad is not frozen
    state = trainable_state(model)
    assert ("model.bert.embeddings.word_embeddings.weight" in state) is not frozen
    assert "model.bert.embeddings.position_embeddings.weight" in state  # the rest still trains
    assert len(state) == sum(1 for p in model.parameters() if p.requires_grad)


def test_loading_shows_no_progress_bar_and_restores_the_settings(tiny_bert, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu")
    assert "Loading weights" not in "".join(capfd.readouterr())
    assert hf_logging.is_progress_bar_enabled()
