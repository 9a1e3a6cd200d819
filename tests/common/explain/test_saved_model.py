"""common/explain/saved_model.py: what is explained is the model saved in the folder."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from common.explain.saved_model import NotAModelFolder, load_saved_model
from common.models.save import save_model
from common.models.tabular import TabularClassifier
from common.models.text import LoraSettings, load_text_classifier
from common.models.tiny import save_tiny_bert


def test_a_lora_run_is_explained_through_its_merged_checkpoint(tmp_path):
    base = save_tiny_bert(tmp_path / "tiny")
    model, tokenizer = load_text_classifier(str(base), 2, lora=LoraSettings(), device="cpu")
    with torch.no_grad():  # trained adapters: B != 0, so merging changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_model(model, tmp_path / "model", tokenizer)
    saved = load_saved_model(tmp_path / "model")
    assert saved.kind == "text" and saved.path == tmp_path / "model" / "merged"
    enc = tokenizer(["a great film", "the worst plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(enc["input_ids"], enc["attention_mask"])
        got = saved.model(**enc).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert saved.class_names == ["class 0", "class 1"]
    assert len(saved.sha256) == 64


def test_tabular_folder_and_its_digest_follow_the_file(tmp_path):
    model = TabularClassifier("mlp", 4, 3, hidden=8)
    save_model(model, tmp_path / "model")
    saved = load_saved_model(tmp_path / "model")
    assert (saved.kind, saved.num_features, saved.class_names) == (
        "tabular",
        4,
        ["class 0", "class 1", "class 2"],
    )
    x = torch.randn(5, 4)
    assert torch.equal(saved.model(x), model(x))
    with torch.no_grad():
        model.net[0].bias.add_(1.0)
    save_model(model, tmp_path / "model")
    assert load_saved_model(tmp_path / "model").sha256 != saved.sha256


def test_folders_that_are_not_fedpriv_models_are_refused(tmp_path):
    with pytest.raises(NotAModelFolder, match="does not exist"):
        load_saved_model(tmp_path / "missing")
    with pytest.raises(NotAModelFolder, match="is not a fedpriv model folder"):
        load_saved_model(tmp_path)
    save_model(TabularClassifier("logreg", 2, 2), tmp_path / "run" / "model")
    with pytest.raises(NotAModelFolder, match="is a results folder: pass its model folder"):
        load_saved_model(tmp_path / "run")
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    BertForTokenClassification(config).save_pretrained(tmp_path / "ner")
    with pytest.raises(NotAModelFolder, match="only sequence classifiers"):
        load_saved_model(tmp_path / "ner")
