import math

import numpy as np
import pytest
import torch
import transformers
from torch.utils.data import TensorDataset

from client import training
from client.training import DpSgdSettings, train_locally
from common.evaluation import evaluate
from common.models.tabular import build_tabular_model
from common.models.text import LoraSettings, encode_texts, load_text_classifier
from common.models.tiny import save_tiny_bert
from common.models.weights import trainable_state
from common.privacy.sampling import steps_per_epoch

transformers.logging.set_verbosity_error()
WORDS = "the movie film was great awful good bad fun boring acting plot story very really".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _blobs(n: int, seed: int = 0) -> TensorDataset:
    """Two well separated Gaussian blobs in 4-D: a linearly separable problem."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    features = torch.randn(n, 4, generator=g) * 0.5 + (labels[:, None] * 2.0 - 1.0)
    return TensorDataset(features, labels)


def _texts(tokenizer, n: int, seed: int = 0) -> TensorDataset:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(n)]
    return encode_texts(tokenizer, texts, rng.integers(0, 2, size=n), max_length=16)[0]


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not np.array_equal(before[k], after[k])}


@pytest.mark.parametrize("dp", [None, DpSgdSettings(1.0, 1.0)])
def test_counted_steps_are_the_planned_steps(dp):
    model = build_tabular_model("mlp", 4, 2)
    result = train_locally(
        model, _blobs(50), batch_size=8, epochs=3, learning_rate=0.1, dp=dp, device="cpu", seed=0
    )
    assert result.num_steps == steps_per_epoch(50, 8) * 3 == 21
    assert (result.dp, result.num_examples, result.sample_rate) == (dp is not None, 50, 1 / 7)
    assert (result.noise_multiplier, result.max_grad_norm) == ((1.0, 1.0) if dp else (0.0, 0.0))
    assert math.isfinite(result.loss) and result.seconds > 0


def test_dp_sgd_learns_a_separable_problem():
    train, test = _blobs(400, seed=0), _blobs(200, seed=1)
    model = build_tabular_model("logreg", 4, 2)
    result = train_locally(
        model,
        train,
        batch_size=32,
        epochs=3,
        learning_rate=0.5,
        dp=DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0),
        device="cpu",
        seed=0,
    )
    assert result.num_steps == 3 * 13
    assert evaluate(model, test, device="cpu").accuracy > 0.8


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_dp_step_without_noise_or_clipping_is_the_plain_step(mode):
    data = _blobs(24)
    plain, private = build_tabular_model("mlp", 4, 2), build_tabular_model("mlp", 4, 2)
    private.load_state_dict(plain.state_dict())
    kwargs = dict(batch_size=24, epochs=1, learning_rate=0.5, device="cpu", seed=0)  # q = 1
    train_locally(plain, data, dp=None, **kwargs)
    result = train_locally(
        private, data, dp=DpSgdSettings(0.0, 1e6), grad_sample_mode=mode, **kwargs
    )
    assert result.num_steps == 1
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(private.state_dict()[key], value, atol=1e-5, rtol=0)


def test_ghost_clipping_equals_per_example_clipping():
    data = _blobs(64)
    models = [build_tabular_model("mlp", 4, 2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model, mode in zip(models, ["hooks", "ghost"], strict=True):
        train_locally(
            model,
            data,
            batch_size=16,
            epochs=2,
            learning_rate=0.5,
            dp=DpSgdSettings(1.0, 0.1),
            device="cpu",
            seed=3,
            grad_sample_mode=mode,
        )
    for key, value in models[0].state_dict().items():
        torch.testing.assert_close(models[1].state_dict()[key], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_full_bert_fine_tuning_under_opacus(tiny_bert, mode):
    model, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=None, device="cpu")
    keys = list(model.state_dict())
    before = trainable_state(model)
    result = train_locally(
        model,
        _texts(tokenizer, 32),
        batch_size=8,
        epochs=1,
        learning_rate=0.05,
        dp=DpSgdSettings(1.0, 1.0),
        device="cpu",
        seed=0,
        grad_sample_mode=mode,
    )
    assert result.num_steps == 4 and math.isfinite(result.loss)
    assert _changed(before, trainable_state(model)) == set(before)  # embeddings included
    assert list(model.state_dict()) == keys  # no Opacus wrapper left behind
    assert not any(vars(p) for p in model.parameters() if vars(p) != {"_is_hf_initialized": True})
    assert not any(hasattr(m, "activations") for m in model.modules())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_lora_dp_training_moves_only_adapters_and_head(tiny_bert, mode):
    model, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=LoraSettings(r=4), device="cpu")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = trainable_state(model)
    train_locally(
        model,
        _texts(tokenizer, 32),
        batch_size=8,
        epochs=1,
        learning_rate=0.05,
        dp=DpSgdSettings(1.0, 1.0),
        device="cpu",
        seed=0,
        grad_sample_mode=mode,
    )
    assert _changed(before, trainable_state(model)) == set(before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_empty_poisson_batches_are_noise_only_releases(tiny_bert):
    # q = 1/20: about a third of the 60 batches are empty; transformers cannot run those.
    model, tokenizer = load_text_classifier(str(tiny_bert), 2, lora=LoraSettings(r=2), device="cpu")
    before = trainable_state(model)
    result = train_locally(
        model,
        _texts(tokenizer, 20),
        batch_size=1,
        epochs=3,
        learning_rate=0.05,
        dp=DpSgdSettings(1.0, 1.0),
        device="cpu",
        seed=0,
    )
    assert result.num_steps == 60 and math.isfinite(result.loss)
    assert _changed(before, trainable_state(model)) == set(before)


def test_every_step_adds_noise_of_the_right_size_empty_batches_too(monkeypatch):
    # n = 10, B = 1 -> q = 0.1; sigma = 1, C = 2, lr = 1: each step moves each weight by
    # N(0, (sigma*C)^2) / (q*n) = N(0, 4); zero inputs give zero gradients, so after 10 steps
    # the weights are pure noise with std 2*sqrt(10), whether a batch was empty or not.
    calls = []
    noise_only_step = training._noise_only_step
    monkeypatch.setattr(
        training, "_noise_only_step", lambda *a: calls.append(1) or noise_only_step(*a)
    )
    model = torch.nn.Linear(1, 20_000, bias=False)  # logits over 20,000 classes
    torch.nn.init.zeros_(model.weight)
    data = TensorDataset(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    train_locally(
        model,
        data,
        batch_size=1,
        epochs=1,
        learning_rate=1.0,
        dp=DpSgdSettings(1.0, 2.0),
        device="cpu",
        seed=0,
        grad_sample_mode="hooks",
    )
    assert 1 <= len(calls) <= 9  # some batches were empty, some not
    assert model.weight.std().item() == pytest.approx(2.0 * math.sqrt(10), rel=0.02)


def test_auto_clips_large_models_by_bookkeeping_and_small_ones_by_hooks():
    large = build_tabular_model("mlp", 20_000, 2)  # 1.28M parameters
    small = build_tabular_model("mlp", 4, 2)
    pick = training._pick_grad_sample_mode
    assert pick("auto", large, list(large.parameters())) == "bookkeeping"
    assert pick("auto", small, list(small.parameters())) == "hooks"
    tied = torch.nn.Sequential(large, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    tied[2].weight = tied[1].weight  # book-keeping cannot clip shared weights: ghost does
    assert pick("auto", tied, list(tied.parameters())) == "ghost"
    assert pick("ghost", large, list(large.parameters())) == "ghost"


def test_bad_arguments_are_refused():
    model, data = build_tabular_model("logreg", 4, 2), _blobs(8)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        train_locally(
            model,
            data,
            batch_size=4,
            epochs=1,
            learning_rate=0.1,
            dp=DpSgdSettings(1, 1),
            device="cpu",
            seed=0,
            grad_sample_mode="fast",
        )
    with pytest.raises(ValueError, match="empty dataset"):
        train_locally(
            model,
            _blobs(0),
            batch_size=4,
            epochs=1,
            learning_rate=0.1,
            dp=None,
            device="cpu",
            seed=0,
        )
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        DpSgdSettings(noise_multiplier=1.0, max_grad_norm=0.0)


@pytest.mark.parametrize(
    ("mode", "dp"), [("hooks", True), ("ghost", True), ("bookkeeping", True), ("hooks", False)]
)
def test_physical_batches_give_the_same_update_as_the_logical_batch(mode, dp):
    """BatchMemoryManager (DP) / gradient accumulation (non-DP): chunks of 5 of an expected
    batch of 16 take the same steps, with the same Poisson draws and noise, to the same model."""
    data = _blobs(64)
    models = [build_tabular_model("mlp", 4, 2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    results = []
    for model, physical in zip(models, [None, 5], strict=True):
        results.append(
            train_locally(
                model,
                data,
                batch_size=16,
                epochs=2,
                learning_rate=0.5,
                dp=DpSgdSettings(1.0, 0.1) if dp else None,
                device="cpu",
                seed=7,
                grad_sample_mode=mode,
                max_physical_batch_size=physical,
            )
        )
    assert results[0].num_steps == results[1].num_steps == 2 * steps_per_epoch(64, 16)
    assert results[1].grad_sample_mode == (mode if dp else "")
    assert results[1].loss == pytest.approx(results[0].loss, rel=1e-5)
    for key, value in models[0].state_dict().items():
        torch.testing.assert_close(models[1].state_dict()[key], value, atol=1e-5, rtol=0)


def test_physical_batches_bound_what_the_model_sees(monkeypatch):
    seen: list[int] = []
    model = build_tabular_model("mlp", 4, 2)
    forward = model.forward

    def spy(x):
        seen.append(len(x))
        return forward(x)

    monkeypatch.setattr(model, "forward", spy)
    result = train_locally(
        model,
        _blobs(96),
        batch_size=48,
        epochs=1,
        learning_rate=0.1,
        dp=DpSgdSettings(1.0, 1.0),
        device="cpu",
        seed=1,
        max_physical_batch_size=8,
    )
    assert result.num_steps == 2
    assert max(seen) <= 8 and sum(seen) > 48  # two logical batches of ~48, run 8 at a time


def _tagged(tokenizer, n: int, seed: int = 0):
    from common.models.tokens import encode_tagged_words

    rng = np.random.default_rng(seed)
    sentences = [list(rng.choice(WORDS, size=rng.integers(1, 8))) for _ in range(n)]
    tags = [rng.integers(0, 5, size=len(s)) for s in sentences]
    return encode_tagged_words(tokenizer, sentences, tags, max_length=16)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bookkeeping"])
def test_dp_token_step_without_noise_or_clipping_is_the_plain_step(tiny_bert, mode):
    plain, tokenizer = load_text_classifier(
        str(tiny_bert), 5, lora=None, device="cpu", task="tokens"
    )
    private, _ = load_text_classifier(str(tiny_bert), 5, lora=None, device="cpu", task="tokens")
    for module in [*plain.modules(), *private.modules()]:
        if isinstance(module, torch.nn.Dropout):  # the plain loader shuffles: other masks
            module.p = 0.0
    data = _tagged(tokenizer, 12)
    assert data.tensors[-1].dim() == 2
    kwargs = dict(batch_size=12, epochs=1, learning_rate=0.5, device="cpu", seed=0)  # q = 1
    train_locally(plain, data, dp=None, **kwargs)
    result = train_locally(
        private, data, dp=DpSgdSettings(0.0, 1e6), grad_sample_mode=mode, **kwargs
    )
    assert result.num_steps == 1 and math.isfinite(result.loss)
    before = trainable_state(
        load_text_classifier(str(tiny_bert), 5, lora=None, device="cpu", task="tokens")[0]
    )
    after_plain, after_private = trainable_state(plain), trainable_state(private)
    assert _changed(before, after_plain) == set(before)  # every parameter moved
    for key, value in after_plain.items():
        np.testing.assert_allclose(after_private[key], value, atol=1e-5, rtol=0, err_msg=key)


def test_ghost_clipping_equals_per_example_clipping_for_tokens(tiny_bert):
    models = [
        load_text_classifier(str(tiny_bert), 5, lora=LoraSettings(r=4), device="cpu", task="tokens")
        for _ in range(2)
    ]
    data = _tagged(models[0][1], 16)
    for (model, _), mode in zip(models, ["hooks", "ghost"], strict=True):
        train_locally(
            model,
            data,
            batch_size=8,
            epochs=1,
            learning_rate=0.5,
            dp=DpSgdSettings(1.0, 0.05),  # clipping active
            device="cpu",
            seed=3,
            grad_sample_mode=mode,
        )
    a, b = trainable_state(models[0][0]), trainable_state(models[1][0])
    for key, value in a.items():
        np.testing.assert_allclose(b[key], value, atol=1e-5, rtol=0, err_msg=key)


def test_dataset_tag_weights_choose_the_weighted_token_loss():
    data = TensorDataset(torch.randn(4, 3, 2), torch.zeros(4, 3, dtype=torch.long))
    assert training.make_criterion(data).weight is None
    data.tag_weights = [0.2, 1.0]
    torch.testing.assert_close(training.make_criterion(data).weight, torch.tensor([0.2, 1.0]))


@pytest.mark.parametrize("task", ["sequence", "tokens"])
def test_head_mode_dp_step_without_noise_or_clipping_is_the_plain_step(tiny_bert, tmp_path, task):
    from common.models.features import FeatureHead, cached_features

    models = [
        load_text_classifier(
            str(tiny_bert),
            5,
            lora=None,
            device="cpu",
            task=task,
            freeze_encoder=True,
            **({"pooling": "mean", "normalize": True} if task == "sequence" else {}),
        )
        for _ in range(2)
    ]
    tokenizer = models[0][1]
    if task == "tokens":
        data = _tagged(tokenizer, 12)
        data.tag_weights = [0.3, 1.0, 1.0, 1.0, 2.0]
    else:
        data, _ = encode_texts(
            tokenizer,
            [" ".join(WORDS[i : i + 3]) for i in range(12)],
            [i % 5 for i in range(12)],
            16,
        )
    features = cached_features(
        models[0][0], data, model_files="tiny", max_length=16, cache=tmp_path, device="cpu"
    )
    heads = [FeatureHead(m) for m, _ in models]
    kwargs = dict(batch_size=12, epochs=1, learning_rate=0.5, device="cpu", seed=0)  # q = 1
    before = trainable_state(models[0][0])
    train_locally(heads[0], features, dp=None, **kwargs)
    result = train_locally(heads[1], features, dp=DpSgdSettings(0.0, 1e6), **kwargs)
    assert result.num_steps == 1
    after_plain, after_private = trainable_state(models[0][0]), trainable_state(models[1][0])
    assert set(after_plain) == {"model.classifier.weight", "model.classifier.bias"}
    assert _changed(before, after_plain) == set(before)
    for key, value in after_plain.items():
        np.testing.assert_allclose(after_private[key], value, atol=1e-6, rtol=0, err_msg=key)
