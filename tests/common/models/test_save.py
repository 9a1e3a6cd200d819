import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.models.save import load_tabular_model, save_model
from common.models.tabular import build_tabular_model
from common.models.text import LoraSettings, TextClassifier, encode_texts, load_text_classifier
from common.models.weights import load_trainable_state, trainable_state

TEXTS = ["the movie was great", "awful plot", "good acting, bad story", "fun"]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random trainable weights (LoRA B starts at 0: an untrained adapter would be a no-op)."""
    rng = np.random.default_rng(0)
    state = trainable_state(model)
    load_trainable_state(
        model, {k: rng.normal(0, 0.2, v.shape).astype(v.dtype) for k, v in state.items()}
    )
    return model.eval()


@torch.no_grad()
def _logits(model: torch.nn.Module, dataset) -> torch.Tensor:
    return model.eval()(*dataset.tensors[:-1])


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_tabular_reload_predicts_the_same(tmp_path, kind):
    model = _perturbed(build_tabular_model(kind, 6, 3, hidden=5))
    save_model(model, tmp_path)
    loaded = load_tabular_model(tmp_path)
    assert (loaded.kind, loaded.num_features, loaded.num_classes, loaded.hidden) == (kind, 6, 3, 5)
    x = torch.randn(10, 6)
    assert torch.equal(model(x), loaded(x))


def test_full_model_reloads_with_plain_from_pretrained(tiny_bert, tmp_path):
    model, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu")
    _perturbed(model)
    save_model(model, tmp_path, tokenizer)
    reloaded = TextClassifier(AutoModelForSequenceClassification.from_pretrained(tmp_path))
    dataset, _ = encode_texts(AutoTokenizer.from_pretrained(tmp_path), TEXTS, [0, 1, 0, 1], 16)
    assert torch.equal(_logits(model, dataset), _logits(reloaded, dataset))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("pooler_init", ["pretrained", "identity"])
def test_lora_reloads_as_adapter_and_as_merged_model(tiny_bert, tmp_path, pooler_init):
    model, tokenizer = load_text_classifier(
        str(tiny_bert), 2, lora=LoraSettings(r=4), device="cpu", pooler_init=pooler_init
    )
    _perturbed(model)
    save_model(model, tmp_path, tokenizer)
    dataset, _ = encode_texts(tokenizer, TEXTS, [0, 1, 0, 1], 16)
    expected = _logits(model, dataset)

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    adapter = TextClassifier(PeftModel.from_pretrained(base, tmp_path))
    assert torch.allclose(_logits(adapter, dataset), expected, atol=1e-6)

    merged = TextClassifier(AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged"))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, dataset), expected, atol=1e-5)
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "merged")("fun")["input_ids"]
        == tokenizer("fun")["input_ids"]
    )
    # the adapter holds only the small trained part
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < (
        tmp_path / "merged" / "model.safetensors"
    ).stat().st_size / 3


def test_saving_something_else_is_refused(tmp_path):
    with pytest.raises(TypeError, match="TextClassifier or TabularClassifier"):
        save_model(torch.nn.Linear(2, 2), tmp_path)


def test_identity_pooler_is_fixed_and_does_not_travel(tiny_bert):
    model, _ = load_text_classifier(
        str(tiny_bert), 2, lora=LoraSettings(r=4), device="cpu", pooler_init="identity"
    )
    pooler = [p for n, p in model.named_parameters() if "pooler" in n and n.endswith("weight")]
    assert pooler and all(not p.requires_grad for p in pooler)
    active = [p for p in pooler if torch.equal(p, torch.eye(p.shape[0]))]
    assert active, "the pooler in use must be the identity"
    assert not any("pooler" in k for k in trainable_state(model))
    with pytest.raises(ValueError, match="pooler_init"):
        load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu", pooler_init="zero")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)])
def test_token_classifier_reloads_with_the_same_predictions(tiny_bert, tmp_path, lora):
    from transformers import AutoModelForTokenClassification

    from common.models.tokens import encode_tagged_words

    tags = ["O", "B-person", "I-person"]
    model, tokenizer = load_text_classifier(
        str(tiny_bert), 3, lora=lora, device="cpu", task="tokens", label_names=tags
    )
    _perturbed(model)
    save_model(model, tmp_path, tokenizer)
    sentences = [["the", "patient", "was", "fine"], ["i", "love", "heart"]]
    dataset = encode_tagged_words(tokenizer, sentences, [np.zeros(4, int), np.zeros(3, int)], 16)
    expected = _logits(model, dataset)
    assert expected.shape[-1] == 3
    plain = tmp_path / "merged" if lora else tmp_path
    reloaded = AutoModelForTokenClassification.from_pretrained(plain)
    assert reloaded.config.id2label == dict(enumerate(tags))
    logits = _logits(TextClassifier(reloaded), dataset)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))  # the same tags predicted
    if not lora:
        assert torch.equal(logits, expected)
    else:
        base = AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=3)
        adapter = TextClassifier(PeftModel.from_pretrained(base, tmp_path))
        assert torch.allclose(_logits(adapter, dataset), expected, atol=1e-6)
