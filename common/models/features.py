"""Frozen-encoder ("head" mode) features: encode once, cache on disk, train the head alone.

With the encoder public and frozen, a party may run it once over its records (nothing is
released: no privacy cost) and train only the classification head on the cached features x,
exactly what the head reads in the full model: the pooled (maybe L2-normalised) vector of a
sequence classifier, every token's hidden state [T, H] of a token classifier. So the head on x
gives the full model's logits, W x + b, and DP-SGD on the head clips and noises only W, b.

The cache file is keyed by sha256 over (the model files, the model's head-input definition:
class, pooling, normalize; the token ids, masks and max-length of the records); any change
re-encodes. Files live under ``$FEDPRIV_CACHE/features/`` and are written atomically. They are
derived from private records (an embedding can be inverted towards its text), so the folder is
0700 and each file 0600, owned by the user that encoded them (the site service's).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.models.text import HEAD_NAMES, TextClassifier, head_module

FORMAT = 1  # bump when what is cached changes meaning


class FeatureHead(nn.Module):
    """``logits = head(x)`` on cached features x. It holds the TextClassifier's own head module
    (shared parameters) under the same names (``model.classifier.weight``, ...), so its
    trainable state is exactly the full model's and travels the same way."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        if model.is_lora:
            raise ValueError("a feature head needs a frozen, plain (non-LoRA) encoder")
        head = head_module(model.model)
        self.head_name = next(n for n in HEAD_NAMES if getattr(model.model, n, None) is head)
        self.model = nn.Module()
        self.model.add_module(self.head_name, getattr(model.model, self.head_name))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.head_name)(features)


@lru_cache(maxsize=8)
def _files_digest(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((Path(root) / name).read_bytes()).digest())
    return digest.hexdigest()


def model_files_digest(name_or_path: str) -> str:
    """sha256 over every file of a local model directory (names and contents; hidden files
    skipped); recomputed only when a file's size or mtime changes. A hub name hashes as itself."""
    root = Path(name_or_path).expanduser()
    if not root.is_dir():
        return hashlib.sha256(name_or_path.encode()).hexdigest()
    stamp = tuple(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    return _files_digest(str(root), stamp)


def feature_key(
    model: TextClassifier, tensors: TensorDataset, model_files: str, max_length: int
) -> str:
    """The cache key of ``tensors``' features under ``model`` (see the module docstring)."""
    config = model.model.config
    head_input = {
        "format": FORMAT,
        "model-files": model_files,
        "class": type(model.model).__name__,
        "pooling": getattr(config, "pooling", "pooler"),
        "normalize": bool(getattr(config, "normalize", False)),
        "max-length": max_length,
    }
    digest = hashlib.sha256(json.dumps(head_input, sort_keys=True).encode())
    for t in tensors.tensors[:-1]:  # the inputs (ids, masks, types, positions), not the labels
        digest.update(str(tuple(t.shape)).encode() + t.dtype.__repr__().encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_features(
    model: TextClassifier, tensors: TensorDataset, device: torch.device | str, batch_size: int = 128
) -> torch.Tensor:
    """What the head reads for every record (its input, captured in eval mode): [n, H] or
    [n, T, H], on the CPU. Records run in batches of similar length, each cut to its longest
    record (padding is masked, positions explicit: the same features, less compute); token
    features are padded back to T with zeros (those positions are never scored)."""
    head = head_module(model.model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].cpu()))
    inputs = tensors.tensors[:-1]  # input_ids, attention_mask, (token_type_ids, position_ids)
    lengths = inputs[1].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    width = inputs[0].shape[1]
    right_padded = bool((inputs[1] == (torch.arange(width) < lengths[:, None])).all())
    was_training = model.training
    model.to(device).eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            cut = max(int(lengths[rows].max()), 1) if right_padded else width
            model(*(t[rows, :cut].to(device) for t in inputs))
    finally:
        hook.remove()
        model.train(was_training)
    pieces = [
        nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) if c.dim() == 3 else c for c in captured
    ]
    features = torch.empty((len(order), *pieces[0].shape[1:]), dtype=pieces[0].dtype)
    features[order] = torch.cat(pieces)
    return features


def cached_features(
    model: TextClassifier,
    tensors: TensorDataset,
    *,
    model_files: str,
    max_length: int,
    cache: Path,
    device: torch.device | str,
) -> TensorDataset:
    """TensorDataset(features, labels) for ``tensors`` (inputs..., labels): read from
    ``cache`` when encoded before with the same key, else encoded once and written there.
    Attributes of ``tensors`` (``words_cut``, ``sentences_cut``, ``tag_weights``) are kept."""
    file = cache / f"{feature_key(model, tensors, model_files, max_length)}.pt"
    labels = tensors.tensors[-1]
    features = None
    if file.is_file():
        try:
            features = torch.load(file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            features = None  # unreadable (a partial copy): encode again
        if features is not None and len(features) != len(labels):
            features = None
    if features is None:
        features = encode_features(model, tensors, device)
        _write_private(features, cache, file)
    out = TensorDataset(features, labels)
    for name in ("words_cut", "sentences_cut", "tag_weights"):
        if hasattr(tensors, name):
            setattr(out, name, getattr(tensors, name))
    return out


def _write_private(features: torch.Tensor, cache: Path, file: Path) -> None:
    """Write ``features`` to ``file`` atomically, readable by this user only (folder 0700)."""
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cache.stat().st_uid == os.getuid():
        os.chmod(cache, 0o700)  # a folder left 0755 by an older version
    partial = file.with_suffix(f".{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a partial file left by a killed run keeps its old mode
    with os.fdopen(descriptor, "wb") as handle:
        torch.save(features, handle)
    os.replace(partial, file)
