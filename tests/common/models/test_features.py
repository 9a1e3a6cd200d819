import pytest
import torch

from common.models.features import FeatureHead, cached_features, model_files_digest
from common.models.text import encode_texts, load_text_classifier
from common.models.tiny import save_tiny_bert
from common.models.tokens import encode_tagged_words

TEXTS = ["the movie was great", "awful plot", "good acting, bad story, too slow", "fun", "no"]
LABELS = [1, 0, 0, 1, 0]


class EncoderCalls:
    """Counts forward calls of the frozen encoder inside a TextClassifier."""

    def __init__(self, model) -> None:
        self.count = 0
        model.model.base_model.register_forward_pre_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1


def _head_model(path, pooling="mean", task="sequence", labels=2):
    kwargs = {"pooling": pooling, "normalize": pooling != "pooler"} if task == "sequence" else {}
    return load_text_classifier(
        str(path), labels, lora=None, device="cpu", freeze_encoder=True, task=task, **kwargs
    )


def _features(model, data, path, cache, max_length=16):
    return cached_features(
        model,
        data,
        model_files=model_files_digest(str(path)),
        max_length=max_length,
        cache=cache,
        device="cpu",
    )


def test_features_are_encoded_once_and_reused(tiny_bert, tmp_path):
    model, tokenizer = _head_model(tiny_bert)
    calls = EncoderCalls(model)
    data, _ = encode_texts(tokenizer, TEXTS, LABELS, 16)
    first = _features(model, data, tiny_bert, tmp_path)
    assert calls.count == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    again, _ = _head_model(tiny_bert)  # a fresh process's model: the disk cache serves it
    calls_again = EncoderCalls(again)
    second = _features(again, data, tiny_bert, tmp_path)
    assert calls_again.count == 0
    assert torch.equal(first.tensors[0], second.tensors[0])
    assert torch.equal(second.tensors[1], torch.tensor(LABELS))


def test_head_on_features_gives_the_full_models_logits(tiny_bert, tmp_path):
    for pooling in ("mean", "cls", "pooler"):
        model, tokenizer = _head_model(tiny_bert, pooling)
        data, _ = encode_texts(tokenizer, TEXTS, LABELS, 16)
        features = _features(model, data, tiny_bert, tmp_path)
        head = FeatureHead(model)
        assert (
            [n for n, p in head.named_parameters() if p.requires_grad]
            == [n for n, p in model.named_parameters() if p.requires_grad]
            == ["model.classifier.weight", "model.classifier.bias"]
        )
        with torch.no_grad():
            torch.testing.assert_close(
                head(features.tensors[0]), model.eval()(*data.tensors[:-1]), atol=1e-6, rtol=0
            )


def test_token_features_keep_every_token_and_what_was_cut(tiny_bert, tmp_path):
    model, tokenizer = _head_model(tiny_bert, task="tokens", labels=3)
    data = encode_tagged_words(
        tokenizer, [["good", "film"], ["bad", "plot", "no"]], [[1, 0], [2, 0, 1]], 16
    )
    features = _features(model, data, tiny_bert, tmp_path)
    assert features.tensors[0].shape == (*data.tensors[0].shape, 32)  # [n, T, H]
    assert features.words_cut == data.words_cut
    with torch.no_grad():
        torch.testing.assert_close(
            FeatureHead(model)(features.tensors[0]),
            model.eval()(*data.tensors[:-1]),
            atol=1e-6,
            rtol=0,
        )


@pytest.mark.parametrize("change", ["model-files", "pooling", "max-length", "data"])
def test_cache_is_invalidated_by_what_the_features_depend_on(tmp_path, change):
    path = save_tiny_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    model, tokenizer = _head_model(path)
    data, _ = encode_texts(tokenizer, TEXTS, LABELS, 16)
    _features(model, data, path, cache)
    max_length, texts = 16, TEXTS
    if change == "model-files":
        save_tiny_bert(path, seed=1)  # other weights, same names
        model, tokenizer = _head_model(path)
    elif change == "pooling":
        model, tokenizer = _head_model(path, "cls")
    elif change == "max-length":
        max_length = 4
    else:
        texts = [*TEXTS[:-1], "yes"]
    data, _ = encode_texts(tokenizer, texts, LABELS, max_length)
    calls = EncoderCalls(model)
    _features(model, data, path, cache, max_length)
    assert calls.count == 1 and len(list(cache.glob("*.pt"))) == 2


def test_features_of_private_records_are_readable_by_their_owner_only(tiny_bert, tmp_path):
    import stat

    cache = tmp_path / "features"
    cache.mkdir(mode=0o755)  # left world-readable by an older version
    model, tokenizer = _head_model(tiny_bert)
    data, _ = encode_texts(tokenizer, TEXTS, LABELS, 16)
    _features(model, data, tiny_bert, cache)
    (file,) = cache.glob("*.pt")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not list(cache.glob("*.partial"))
