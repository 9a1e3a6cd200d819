"""Start a run from a trained classification head (``init-head-from``): linear probe, then
fine-tune (LP-FT, Kumar et al. 2022).

The server reads only the head's parameters (``classifier.*`` / ``score.*``) from a model
directory an earlier fedpriv run saved (common/models/save.py) and copies them into its model
before the initial trainable state is taken: round 1's global model is that head plus fresh,
seeded LoRA adapters (or the public encoder, in full fine-tuning). The encoder is never read from
that directory: every site loads the public base model itself. The head is itself a DP release
of the earlier run (post-processing costs nothing; its epsilon is in the sites' ledgers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from peft import PeftModel
from safetensors import safe_open

from common.config import ConfigError
from common.models.save import MERGED_DIR
from common.models.text import HEAD_NAMES, TextClassifier
from common.models.weights import load_trainable_state, trainable_state, weights_digest

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# encoder config fields that must agree for a head to read the same vector
ENCODER_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


def load_initial_head(model: TextClassifier, directory: str | Path) -> dict[str, Any]:
    """Copy the head saved in ``directory`` into ``model``'s trainable head; return what the
    run's summary records: ``from`` (the directory read), ``sha256`` (``weights_digest`` of the
    head under its head-mode names, ``model.<key>``: a head run's directory gives that run's
    ``model-sha256``) and ``parameters`` (the keys read).

    Raises ConfigError, changing nothing, if the directory has no weights, or its architecture,
    head input (pooling, L2 norm), encoder or head shapes (class count) differ from ``model``'s.
    """
    source = _model_directory(Path(directory).expanduser())
    saved_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    base = model.model.get_base_model() if isinstance(model.model, PeftModel) else model.model
    _check_same_base(saved_config, base.config.to_dict(), type(base).__name__, source)
    targets = _head_targets(model)
    saved = _read_tensors(source, sorted(targets.values()))
    state = trainable_state(model)
    for name, key in targets.items():
        have, want = saved[key].shape, state[name].shape
        if have != want:
            raise ConfigError(
                f"init-head-from {source}: its head differs from this run's: {key} has shape "
                f"{tuple(have)}, this run's {tuple(want)} (head outputs = classes: saved "
                f"{have[0]}, this run {want[0]}); start from a head trained on the same labels"
            )
        state[name] = saved[key].astype(state[name].dtype, copy=False)
    load_trainable_state(model, state)  # checks finiteness; changes nothing on error
    head = {f"model.{key}": saved[key] for key in targets.values()}
    return {"from": str(source), "sha256": weights_digest(head), "parameters": sorted(saved)}


def _model_directory(path: Path) -> Path:
    """The plain checkpoint under ``path``: itself, or a LoRA run's ``merged/``."""
    if not path.is_dir():
        raise ConfigError(f"init-head-from {path}: no such directory (a results model folder)")
    if (path / "adapter_config.json").is_file() and (path / MERGED_DIR).is_dir():
        path = path / MERGED_DIR  # a LoRA run: its head sits in the merged checkpoint
    if not (path / "config.json").is_file():
        raise ConfigError(f"init-head-from {path}: no config.json (not a saved text model)")
    if not ((path / WEIGHTS_FILE).is_file() or (path / WEIGHTS_INDEX).is_file()):
        raise ConfigError(
            f"init-head-from {path}: no weights ({WEIGHTS_FILE}); point at the model/ folder "
            "of a finished run"
        )
    return path


def _encoder_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The encoder's architecture fields and the head's input: (pooling, normalize)."""
    encoder = config.get("encoder") if isinstance(config.get("encoder"), dict) else config
    pooled = isinstance(config.get("encoder"), dict)
    head_input = (config.get("pooling"), bool(config.get("normalize"))) if pooled else "pooler"
    return {**{k: encoder.get(k) for k in ENCODER_FIELDS}, "head input": head_input}


def _check_same_base(
    saved: dict[str, Any], ours: dict[str, Any], architecture: str, source: Path
) -> None:
    saved_arch = saved.get("architectures") or []
    if architecture not in saved_arch:
        raise ConfigError(
            f"init-head-from {source}: a {saved_arch} model, this run builds {architecture} "
            "(same task and pooling needed)"
        )
    have, want = _encoder_fields(saved), _encoder_fields(ours)
    differ = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if differ:
        details = ", ".join(f"{k}: saved {a!r}, this run {b!r}" for k, (a, b) in differ.items())
        raise ConfigError(
            f"init-head-from {source}: its base encoder differs from this run's base model "
            f"({details}); use the same model-name-or-path in both runs"
        )


def _head_targets(model: TextClassifier) -> dict[str, str]:
    """This model's trainable head parameters -> their keys in a saved plain checkpoint, e.g.
    ``model.base_model.model.classifier.modules_to_save.default.weight`` (LoRA) or
    ``model.classifier.weight`` (full) -> ``classifier.weight``."""
    adapters = set(model.model.peft_config) if isinstance(model.model, PeftModel) else set()
    targets: dict[str, str] = {}
    for name in trainable_state(model):
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p in HEAD_NAMES), None)
        if at is None:
            continue
        rest = parts[at + 1 :]
        if rest[:1] == ["modules_to_save"] and rest[1:2] and rest[1] in adapters:
            rest = rest[2:]  # peft's trainable copy of the head
        targets[name] = ".".join([parts[at], *rest])
    if not targets:
        raise ConfigError(f"init-head-from: this run's model has no trainable head {HEAD_NAMES}")
    return targets


def _read_tensors(source: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Only ``keys`` from the checkpoint's safetensors file(s): the encoder is never read."""
    if (source / WEIGHTS_INDEX).is_file():
        index = json.loads((source / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        files = {k: source / index["weight_map"][k] for k in keys if k in index["weight_map"]}
    else:
        files = {k: source / WEIGHTS_FILE for k in keys}
    out: dict[str, np.ndarray] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="np") as weights:
            present = set(weights.keys())
            out |= {
                k: weights.get_tensor(k) for k, f in files.items() if f == file and k in present
            }
    missing = [k for k in keys if k not in out]
    if missing:
        raise ConfigError(
            f"init-head-from {source}: the saved model has no head parameters {missing} "
            f"(this run's head); start from a model with the same head"
        )
    return out
