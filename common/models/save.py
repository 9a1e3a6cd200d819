"""Saving a trained model in the formats its ecosystem loads, and loading tabular models back.

Layouts written by ``save_model(model, out_dir, tokenizer)``:
- full fine-tuning: ``out_dir`` is a Hugging Face checkpoint (+ tokenizer):
  ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` (a token classifier:
  ``AutoModelForTokenClassification``, its tag names in ``config.id2label``).
- LoRA: ``out_dir`` holds the adapter + head (``PeftModel.from_pretrained(base, out_dir)``, with
  ``base`` loaded from the original path) and the tokenizer; ``out_dir/merged`` holds the
  adapters merged into the base weights, a plain checkpoint (+ tokenizer) for ``from_pretrained``.
- tabular: ``out_dir/tabular_model.pt``, read by ``load_tabular_model``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from common.models.tabular import TabularClassifier
from common.models.text import TextClassifier

TABULAR_FILE = "tabular_model.pt"
MERGED_DIR = "merged"


def save_model(
    model: nn.Module, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Save ``model`` (a TextClassifier or TabularClassifier) under ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TabularClassifier):
        spec = {
            "kind": model.kind,
            "num_features": model.num_features,
            "num_classes": model.num_classes,
            "hidden": model.hidden,
        }
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"spec": spec, "state_dict": state}, out / TABULAR_FILE)
        return
    if not isinstance(model, TextClassifier):
        raise TypeError(
            f"save_model takes a TextClassifier or TabularClassifier, got {type(model)}"
        )
    hf = model.model
    if isinstance(hf, PeftModel):
        hf.save_pretrained(out)
        merged = copy.deepcopy(hf).merge_and_unload()
        merged.save_pretrained(out / MERGED_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(out / MERGED_DIR)
    else:
        hf.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def load_tabular_model(path: str | Path) -> TabularClassifier:
    """Rebuild a tabular model saved by ``save_model`` (``path``: the directory or the .pt file)."""
    file = Path(path)
    if file.is_dir():
        file = file / TABULAR_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no saved tabular model at {file}")
    saved = torch.load(file, map_location="cpu", weights_only=True)
    model = TabularClassifier(**saved["spec"])
    model.load_state_dict(saved["state_dict"])
    return model
