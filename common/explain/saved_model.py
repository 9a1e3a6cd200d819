"""Load the model a run shipped, from its saved folder only (never an in-memory variant).

Layouts (``common.models.save``): tabular ``tabular_model.pt``; full fine-tuning a Hugging Face
checkpoint (``config.json``); LoRA an adapter (``adapter_config.json``) plus ``merged/``, the
adapters merged into the base weights, which is what is loaded here (no base model needed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from common.models.save import MERGED_DIR, TABULAR_FILE, load_tabular_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class NotAModelFolder(ValueError):
    """The folder is not a fedpriv result's ``model/`` folder (the message says what is missing)."""


@dataclass
class SavedModel:
    """A loaded final model. kind: "tabular" or "text"; ``model(inputs)`` returns logits.

    tabular: ``model`` maps a float32 (B, num_features) batch to (B, C) logits.
    text: ``model`` is the plain ``AutoModelForSequenceClassification``; ``tokenizer`` its own.
    class_names: the classes' names where the folder records them (else "class <i>").
    path: the folder the weights were read from; sha256: of its weight file.
    """

    kind: str
    model: nn.Module
    class_names: list[str]
    path: Path
    sha256: str
    num_features: int = 0
    tokenizer: PreTrainedTokenizerBase | None = None


def load_saved_model(folder: str | Path) -> SavedModel:
    """The final model saved in ``folder`` (``results/<run>/model``), in eval mode on the CPU."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAModelFolder(f"model folder {folder} does not exist (or is not a directory)")
    if (folder / TABULAR_FILE).is_file():
        model = load_tabular_model(folder / TABULAR_FILE).eval()
        names = [f"class {i}" for i in range(model.num_classes)]
        return SavedModel(
            "tabular", model, names, folder, _sha256(folder / TABULAR_FILE), model.num_features
        )
    checkpoint = folder / MERGED_DIR if (folder / "adapter_config.json").is_file() else folder
    if not (checkpoint / "config.json").is_file():
        if (folder / "model").is_dir():
            raise NotAModelFolder(
                f"{folder} is a results folder: pass its model folder, {folder / 'model'}"
            )
        raise NotAModelFolder(
            f"{folder} is not a fedpriv model folder: it has no {TABULAR_FILE} (tabular), no "
            f"config.json (full fine-tuning) and no adapter_config.json with {MERGED_DIR}/ "
            "(LoRA); pass the model/ folder of a finished run, e.g. results/<run>/model"
        )
    return _load_text(checkpoint)


def _load_text(checkpoint: Path) -> SavedModel:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint)
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise NotAModelFolder(
            f"{checkpoint} holds a {architectures or 'model without architectures'}: only "
            "sequence classifiers (one label per text) and tabular models are explained"
        )
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (checkpoint / p).is_file()]
    if not weights:
        raise NotAModelFolder(f"{checkpoint} has config.json but no model weights")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as err:
        raise NotAModelFolder(f"{checkpoint} has no usable tokenizer ({err})") from err
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the run's log
    try:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    names = [str(config.id2label.get(i, f"class {i}")) for i in range(config.num_labels)]
    # transformers' default id2label ("LABEL_0") names nothing: say "class 0" instead
    names = [f"class {i}" if re.fullmatch(r"LABEL_\d+", n) else n for i, n in enumerate(names)]
    return SavedModel(
        "text", model, names, checkpoint, _sha256(checkpoint / weights[0]), tokenizer=tokenizer
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
