"""The model and tensors a run trains, built the same way at the server and at every site.

Text-model libraries (transformers, peft: ~2 s to import) are imported only for text runs: in
deployment every message starts a fresh ClientApp process, and a tabular site never needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.config import ConfigError, RunSettings
from common.data.types import LabeledData
from common.models.tabular import build_tabular_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def model_source(settings: RunSettings) -> str:
    """The pretrained model to load: the configured path or hub name, else the packaged MiniLM."""
    if settings.model_name_or_path:
        return settings.model_name_or_path
    from common.data.assets import minilm_path

    return str(minilm_path())


def check_model_fits(settings: RunSettings, data: LabeledData) -> None:
    """The configured model kind must suit the data kind: the text model for text (sequence
    classification) and tokens (token classification), else tabular."""
    wants_text = settings.model == "text"
    is_text = data.kind in ("text", "tokens")
    if wants_text != is_text:
        fix = "model='text'" if is_text else "model='mlp' or 'logreg'"
        raise ConfigError(f"model {settings.model!r} cannot train on {data.kind} data; use {fix}")
    if data.kind == "tokens" and settings.pooler_init != "pretrained":
        raise ConfigError(
            "pooler-init applies to sequence classification only; a token classifier has no "
            "pooler: use pooler-init='pretrained'"
        )
    if data.kind == "tokens" and (settings.pooling != "auto" or settings.normalize):
        raise ConfigError(
            "pooling and normalize apply to sequence classification only; a token classifier "
            "reads every token: leave pooling='auto' and normalize=false"
        )


def text_pooling(settings: RunSettings, data: LabeledData) -> tuple[str, bool]:
    """(pooling, normalize) the run's sequence classifier uses: ``pooling`` ("auto" = the
    checkpoint's own, e.g. mean + L2 for all-MiniLM-L6-v2; with pooler-init='identity' the
    pooler), L2 norm also when ``normalize``. Token classifiers: ("pooler", False), unused."""
    if data.kind != "text":
        return "pooler", False
    from common.models.text import resolve_pooling

    if settings.pooler_init != "pretrained":
        if settings.pooling not in ("auto", "pooler"):
            raise ConfigError(
                f"pooler-init={settings.pooler_init!r} initialises BERT's pooler: it needs "
                f"pooling='pooler' (or 'auto'), got {settings.pooling!r}"
            )
        return "pooler", False
    try:
        pooling, normalize = resolve_pooling(model_source(settings), settings.pooling)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if pooling == "pooler" and settings.normalize:
        raise ConfigError(
            "normalize needs mean or CLS pooling; this checkpoint has none of its own: set "
            "pooling='mean' or 'cls'"
        )
    return pooling, normalize or settings.normalize


def build_model(
    settings: RunSettings, data: LabeledData, device: torch.device | str
) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
    """A fresh model for ``data``'s shape, identical for every caller with the same settings.

    Tabular: seeded MLP / logistic regression. Text: the pretrained encoder from
    ``model_source`` with a new head (pooled as ``text_pooling`` says), LoRA adapters when
    ``finetune_mode`` is "lora" (seeded the same way), only the head trainable when it is
    "head": a sequence classifier for text data, a token classifier (one tag per word) for
    tokens data.
    Under DP (``dp``) full fine-tuning keeps the word-embedding table frozen unless
    ``freeze-word-embeddings`` is false.
    """
    check_model_fits(settings, data)
    if data.kind in ("text", "tokens"):
        from common.models.text import LoraSettings, load_text_classifier

        mode = settings.finetune_mode
        lora = (
            LoraSettings(
                r=settings.lora_r,
                alpha=settings.lora_alpha,
                dropout=0.0,
                target_modules=settings.lora_targets,
            )
            if mode == "lora"
            else None
        )
        pooling, normalize = text_pooling(settings, data)
        return load_text_classifier(
            model_source(settings),
            data.num_classes,
            lora=lora,
            device=device,
            seed=settings.seed,
            pooler_init=settings.pooler_init,
            freeze_word_embeddings=settings.freeze_word_embeddings
            and settings.dp
            and mode == "full",
            pooling=pooling,
            normalize=normalize,
            freeze_encoder=mode == "head",
            **(
                {"task": "tokens", "label_names": data.class_names} if data.kind == "tokens" else {}
            ),
        )
    assert data.features is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build_tabular_model(settings.model, data.features.shape[1], data.num_classes)
    return model.to(device), None


def to_tensors(
    data: LabeledData, tokenizer: PreTrainedTokenizerBase | None, max_length: int
) -> tuple[TensorDataset, int]:
    """Tensors ``(*inputs, label)`` for training/evaluation, and how many texts were truncated.

    Tokens data: ``label`` is one tag per sub-token ([n, T], -100 where not scored) and the count
    is of sentences cut (``TaggedWordTensors.words_cut`` holds the words lost).
    """
    labels = torch.as_tensor(data.labels, dtype=torch.long)
    if data.kind == "tabular":
        assert data.features is not None
        return TensorDataset(torch.as_tensor(data.features, dtype=torch.float32), labels), 0
    if data.kind == "tokens":
        if tokenizer is None or data.tokens is None or data.tags is None:
            raise ValueError("tokens data needs a tokenizer, words and tags")
        from common.models.tokens import encode_tagged_words

        encoded = encode_tagged_words(tokenizer, data.tokens, data.tags, max_length)
        return encoded, encoded.sentences_cut
    if tokenizer is None or data.texts is None:
        raise ValueError("text data needs a tokenizer")
    from common.models.text import encode_texts

    return encode_texts(tokenizer, data.texts, data.labels, max_length)


def head_features(
    settings: RunSettings, model: nn.Module, tensors: TensorDataset, device: torch.device | str
) -> tuple[nn.Module, TensorDataset]:
    """Head mode (``finetune="head"``): the model's head alone (FeatureHead: same trainable
    names, shared parameters) and the frozen encoder's features of ``tensors``, encoded once
    and cached under ``$FEDPRIV_CACHE/features/`` (common/models/features.py)."""
    from common.data.assets import cache_dir
    from common.models.features import FeatureHead, cached_features, model_files_digest

    features = cached_features(
        model,  # type: ignore[arg-type]
        tensors,
        model_files=model_files_digest(model_source(settings)),
        max_length=settings.max_length,
        cache=cache_dir() / "features",
        device=device,
    )
    return FeatureHead(model), features  # type: ignore[arg-type]


def pick_device() -> torch.device:
    """CUDA when present, else CPU (override with FEDPRIV_DEVICE)."""
    import os

    name = os.environ.get("FEDPRIV_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
