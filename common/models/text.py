"""Hugging Face sequence and token classifiers (full fine-tuning, LoRA or a head on a frozen
encoder), pooled the way the checkpoint was trained; encoding of texts.

Over 300 lines because loading is one path with its checks (local files only, LoRA targets,
tokenizer fits the model, pooling from the checkpoint): a reader follows from_pretrained to a
trainable model in one file.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from torch.utils.data import TensorDataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import logging as hf_logging

from common.models.pooled import (
    POOLINGS,
    PooledEncoderConfig,
    PooledEncoderForSequenceClassification,
)

# Saved pooled classifiers load with plain ``AutoModelForSequenceClassification.from_pretrained``
# once this module is imported; ``register_for_auto_class`` writes ``auto_map`` and copies
# common/models/pooled.py next to the weights, so ``trust_remote_code=True`` loads them anywhere.
AutoConfig.register(PooledEncoderConfig.model_type, PooledEncoderConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    PooledEncoderConfig, PooledEncoderForSequenceClassification, exist_ok=True
)
PooledEncoderConfig.register_for_auto_class()
PooledEncoderForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

# "pooler": the architecture's own head (BERT: tanh(W h_CLS + b)); "mean"/"cls": see pooled.py
POOLING_CHOICES = ("auto", "pooler", *POOLINGS)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA: each target Linear W becomes W + (alpha / r) * B @ A; rank-r A, B train, W is frozen.

    r: adapter rank; alpha: scaling numerator; dropout: dropout on the adapter input;
    target_modules: names (or name suffixes) of the Linear modules to adapt, e.g.
    ("query", "value").
    The classification head is trained in full (peft ``modules_to_save``).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module, e.g. ('query', 'value')")


class TextClassifier(nn.Module):
    """``logits = model(input_ids, attention_mask, token_type_ids, position_ids)``: [B, C] for a
    sequence classifier, [B, T, C] for a token classifier.

    Wraps a Hugging Face sequence or token classifier (plain or peft LoRA) so that it is called
    with positional tensors, the form ``encode_texts`` (``encode_tagged_words``) produces.
    Explicit ``position_ids`` and ``token_type_ids`` (one row per example) let Opacus compute
    per-sample gradients of the embedding tables in full fine-tuning; arguments the model does
    not accept are dropped.
    """

    def __init__(self, model: PreTrainedModel | PeftModel) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        accepted = inspect.signature(base.forward).parameters
        self._optional = tuple(n for n in ("token_type_ids", "position_ids") if n in accepted)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.model, PeftModel)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"token_type_ids": token_type_ids, "position_ids": position_ids}
        extra = {n: given[n] for n in self._optional if given[n] is not None}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def _unloadable(name_or_path: str, reason: str) -> OSError:
    return OSError(
        f"cannot load a model from {name_or_path!r} ({reason}); it must be a local directory "
        "with config.json and weights (model.safetensors or pytorch_model.bin) and tokenizer "
        "files, or a Hugging Face hub name reachable from this machine"
    )


def _check_local(name_or_path: str) -> None:
    """Fail fast (no hub retries) when ``name_or_path`` is meant as a local directory."""
    path = Path(name_or_path).expanduser()
    meant_local = (
        path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    )
    if path.exists() or meant_local:
        if not path.is_dir():
            raise _unloadable(name_or_path, "no such directory")
        if not (path / "config.json").is_file():
            raise _unloadable(name_or_path, "no config.json in that directory")


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of the Linear modules in ``model`` (LoRA target candidates)."""
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    )


def _check_lora_targets(model: nn.Module, targets: Sequence[str], name_or_path: str) -> None:
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} match no Linear module of {name_or_path!r}; "
            f"candidates: {linear_module_names(model)}"
        )


# task -> (Hugging Face auto class, peft task type): one load path for both
TASKS = {
    "sequence": (AutoModelForSequenceClassification, TaskType.SEQ_CLS),
    "tokens": (AutoModelForTokenClassification, TaskType.TOKEN_CLS),
}


def load_text_classifier(
    name_or_path: str,
    num_labels: int,
    *,
    lora: LoraSettings | None,
    device: torch.device | str,
    seed: int = 0,
    pooler_init: str = "pretrained",
    task: str = "sequence",
    label_names: Sequence[str] | None = None,
    freeze_word_embeddings: bool = False,
    pooling: str = "pooler",
    normalize: bool = False,
    freeze_encoder: bool = False,
) -> tuple[TextClassifier, PreTrainedTokenizerBase]:
    """Load a pretrained encoder with a fresh ``num_labels``-way head, plus its tokenizer.

    task: "sequence" (one label per text: AutoModelForSequenceClassification) or "tokens" (one
        label per token: AutoModelForTokenClassification; needs a fast tokenizer for word_ids).
    label_names: optional name of each label, saved in the config (id2label / label2id).

    lora: None trains every parameter (full fine-tuning); LoraSettings trains adapters + head only.
    seed: seeds the weights that are newly initialised (head, LoRA A matrices), so that every
        site and the server build the same starting model from the same path.
    pooler_init: "pretrained" keeps BERT's pooler tanh(W h_CLS + b); "identity" sets W = I, b = 0
        and freezes it (pooled = tanh(h_CLS)). Sentence-embedding checkpoints (e.g.
        all-MiniLM-L6-v2) never trained the pooler: its outputs barely vary between inputs (std
        0.06 vs 0.37 for h_CLS on rotten-tomatoes), which a DP-noised head cannot learn from in
        few steps. With LoRA the identity pooler is saved with the adapter.
    freeze_word_embeddings: keep the word-embedding table (MiniLM: 11.7M of 22.7M parameters)
        at its pretrained values in full fine-tuning: it neither trains nor travels (LoRA
        freezes it anyway). Under DP-SGD this costs no privacy: fewer parameters are released.
    pooling: how a sequence classifier reads the encoder: "pooler" (the architecture's own
        Hugging Face head), "mean" or "cls" (PooledEncoderForSequenceClassification); see
        ``resolve_pooling`` for the checkpoint's own choice. normalize: L2-normalise the pooled
        vector ("mean"/"cls" only).
    freeze_encoder: train the classification head only (frozen-encoder "head" mode; no LoRA).
    """
    if pooling not in ("pooler", *POOLINGS):
        raise ValueError(f"pooling must be one of {('pooler', *POOLINGS)}, got {pooling!r}")
    if pooling != "pooler" and (task != "sequence" or pooler_init != "pretrained"):
        raise ValueError(
            f"pooling={pooling!r} applies to sequence classification without pooler-init"
        )
    if normalize and pooling == "pooler":
        raise ValueError("normalize applies to pooling 'mean' or 'cls', not 'pooler'")
    if freeze_encoder and lora is not None:
        raise ValueError("a frozen encoder trains the head only: pass lora=None")
    if pooler_init not in POOLER_INITS:
        raise ValueError(f"pooler_init must be one of {POOLER_INITS}, got {pooler_init!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(f"{len(label_names)} label names for {num_labels} labels")
    auto_class, task_type = TASKS[task]
    names = (
        {}
        if label_names is None
        else {
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }
    )
    _check_local(name_or_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()  # the head is new by design: no "MISSING" report
            hf_logging.disable_progress_bar()  # no "Loading weights" bar per site and round
            try:
                if pooling == "pooler":
                    model = auto_class.from_pretrained(
                        name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True, **names
                    )
                else:
                    model = _pooled_classifier(name_or_path, num_labels, pooling, normalize, names)
            finally:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
        except (OSError, ValueError) as err:
            raise _unloadable(name_or_path, f"{type(err).__name__}: {err}") from err
        check_tokenizer_fits(tokenizer, model, name_or_path)
        if task == "tokens" and not tokenizer.is_fast:
            raise ValueError(
                f"token classification needs a fast tokenizer (word_ids() aligns tags to "
                f"sub-tokens); {name_or_path!r} has {type(tokenizer).__name__}"
            )
        pooler = _pooler_dense(model) if pooler_init == "identity" else None
        if pooler is not None:
            with torch.no_grad():
                pooler.weight.copy_(torch.eye(*pooler.weight.shape))
                pooler.bias.zero_()
            pooler.requires_grad_(False)
        if freeze_word_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        if lora is not None:
            _check_lora_targets(model, lora.target_modules, name_or_path)
            config = LoraConfig(
                task_type=task_type,
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                # saved with the adapter (frozen below): the identity pooler is not in the base
                modules_to_save=["pooler"] if pooler is not None else None,
            )
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
                model = get_peft_model(model, config)
            for name, param in model.named_parameters():
                if ".pooler." in f".{name}":
                    param.requires_grad_(False)  # fixed identity: it never travels
    if freeze_encoder:
        head = head_module(model)
        for param in model.parameters():
            param.requires_grad_(False)
        head.requires_grad_(True)
    return TextClassifier(model).to(device), tokenizer


def _pooled_classifier(
    name_or_path: str, num_labels: int, pooling: str, normalize: bool, names: dict
) -> PooledEncoderForSequenceClassification:
    """The pretrained encoder under a fresh mean/CLS-pooled head (seeded by the caller)."""
    encoder = AutoModel.from_pretrained(name_or_path)
    config = PooledEncoderConfig(
        encoder=encoder.config,
        pooling=pooling,
        normalize=normalize,
        num_labels=num_labels,
        **names,
    )
    model = PooledEncoderForSequenceClassification(config)
    missing, _ = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
    if missing:  # only the unused pooler may be left out
        raise ValueError(f"encoder weights of {name_or_path!r} miss {missing[:5]}")
    return model


def head_module(model: nn.Module) -> nn.Module:
    """The classification head of a Hugging Face classifier (``classifier`` or ``score``)."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(model).__name__} has no classification head named {HEAD_NAMES}")


HEAD_NAMES = ("classifier", "score")


def resolve_pooling(name_or_path: str, pooling: str) -> tuple[str, bool]:
    """(pooling, normalize) for ``pooling`` ("auto" = what the checkpoint was trained with).

    A sentence-transformers checkpoint says so in ``modules.json``: its Pooling module's
    ``1_Pooling/config.json`` (mean or CLS token) and a Normalize module (L2 norm); the packaged
    all-MiniLM-L6-v2 gives ("mean", True). Any other checkpoint: ("pooler", False), the
    architecture's own Hugging Face head. An explicit choice is returned with normalize False.
    """
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}")
    if pooling != "auto":
        return pooling, False
    root = Path(name_or_path).expanduser()
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return "pooler", False
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in kinds:
        return "pooler", False
    config_file = root / str(kinds["Pooling"].get("path", "")) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("pooling_mode_mean_tokens"):
        mode = "mean"
    elif config.get("pooling_mode_cls_token"):
        mode = "cls"
    else:
        raise ValueError(
            f"{config_file}: the checkpoint's pooling {config} is neither mean nor CLS; set "
            "pooling='mean', 'cls' or 'pooler' explicitly"
        )
    return mode, "Normalize" in kinds


POOLER_INITS = ("pretrained", "identity")


def check_tokenizer_fits(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, name_or_path: str
) -> None:
    """A tokenizer whose ids exceed the model's embedding table (a tokenizer from another
    checkpoint) would fail, or silently misread text, at the first batch: refuse it now."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer/model mismatch in {name_or_path!r}: the tokenizer has {len(tokenizer)} "
            f"tokens but the model's embedding table has {vocab} rows; use the tokenizer saved "
            "with this model"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and tokenizer.model_max_length < 10**9 and tokenizer.model_max_length > positions:
        raise ValueError(
            f"tokenizer/model mismatch in {name_or_path!r}: the tokenizer allows "
            f"{tokenizer.model_max_length} tokens but the model has {positions} positions"
        )


def _pooler_dense(model: nn.Module) -> nn.Linear:
    """BERT's pooler Linear layer (ValueError if the architecture has none)."""
    for name, module in model.named_modules():
        if name.endswith("pooler.dense") and isinstance(module, nn.Linear):
            return module
    raise ValueError("pooler_init='identity' needs a BERT-style model with a pooler.dense layer")


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    max_length: int,
) -> tuple[TensorDataset, int]:
    """Tokenize ``texts`` into TensorDataset(input_ids, attention_mask, token_type_ids,
    position_ids, labels), padded to the longest text (at most ``max_length`` tokens).

    Returns the dataset and how many texts were longer than ``max_length`` and cut.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no texts to encode")
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        raise ValueError(f"{empty} of {len(texts)} texts are empty; drop or fill them first")
    full_lengths = [len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]]
    truncated = sum(n > max_length for n in full_lengths)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    input_ids = enc["input_ids"]
    n, length = input_ids.shape
    token_type_ids = enc.get("token_type_ids", torch.zeros_like(input_ids))
    position_ids = torch.arange(length).repeat(n, 1)
    label_tensor = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    dataset = TensorDataset(
        input_ids, enc["attention_mask"], token_type_ids, position_ids, label_tensor
    )
    return dataset, truncated
