import numpy as np
import pytest
import torch

from common.models.tabular import build_tabular_model
from common.models.text import LoraSettings, load_text_classifier
from common.models.tiny import save_tiny_bert
from common.models.weights import load_trainable_state, state_nbytes, trainable_state


def test_round_trip_copies_values_and_returns_copies():
    source, target = build_tabular_model("mlp", 4, 2), build_tabular_model("mlp", 4, 2)
    state = trainable_state(source)
    assert list(state) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    load_trainable_state(target, state)
    x = torch.randn(8, 4)
    assert torch.equal(source(x), target(x))
    state["net.0.bias"][:] = 123.0  # the arrays are copies, not views of the parameters
    assert not torch.any(source.net[0].bias == 123.0)


def test_opacus_prefix_is_removed():
    from opacus import GradSampleModule

    wrapped = GradSampleModule(build_tabular_model("logreg", 4, 2))
    assert list(trainable_state(wrapped)) == ["net.0.weight", "net.0.bias"]


def test_missing_and_unexpected_keys_are_named():
    model = build_tabular_model("mlp", 4, 2)
    state = trainable_state(model)
    state["net.9.weight"] = state.pop("net.2.weight")
    with pytest.raises(
        ValueError, match=r"missing \['net.2.weight'\].*unexpected \['net.9.weight'\]"
    ):
        load_trainable_state(model, state)


def test_shape_mismatch_and_nan_are_named_and_nothing_changes():
    model = build_tabular_model("mlp", 4, 2)
    before = trainable_state(model)
    bad = dict(before, **{"net.2.bias": np.zeros(3, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"net.2.bias: got \(3,\), model has \(2,\)"):
        load_trainable_state(model, bad)
    bad = dict(before, **{"net.0.bias": np.full(64, np.nan, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"NaN or infinity: \['net.0.bias'\]"):
        load_trainable_state(model, bad)
    after = trainable_state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_lora_state_on_minilm_sized_bert_is_small(tmp_path):
    # MiniLM shape (hidden 384, 6 layers); the vocabulary does not change the LoRA state.
    path = save_tiny_bert(tmp_path, hidden=384, layers=6)
    model, _ = load_text_classifier(str(path), 2, lora=LoraSettings(r=8), device="cpu")
    nbytes = state_nbytes(trainable_state(model))
    # 6 layers x (query, value) x (A: 8x384 + B: 384x8) + head (2x384 + 2), float32
    assert nbytes == (6 * 2 * 2 * 8 * 384 + 2 * 384 + 2) * 4 == 297_992
    full = sum(p.numel() for p in model.parameters()) * 4
    print(f"LoRA r=8 trainable_state: {nbytes / 1e6:.3f} MB of {full / 1e6:.1f} MB")


def test_weights_digest_sees_every_bit_name_and_dtype():
    from common.models.weights import weights_digest

    state = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    same = {"b": state["b"].copy(), "a": state["a"].copy()}  # order does not matter
    assert weights_digest(state) == weights_digest(same)
    flipped = {**state, "a": state["a"].copy()}
    flipped["a"].view(np.uint32)[0] ^= 1  # one bit
    renamed = {"c": state["a"], "b": state["b"]}
    widened = {**state, "a": state["a"].astype(np.float64)}
    digests = {weights_digest(s) for s in (state, flipped, renamed, widened)}
    assert len(digests) == 4
