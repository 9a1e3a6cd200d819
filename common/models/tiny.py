"""A tiny random BERT saved like a hub checkpoint, for tests and smoke runs without a hub."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "the a an and or not is was are be it this that of to in on for with as at by from good "
    "bad great awful fine film movie story acting plot patient pain dose drug side effect "
    "effects doctor hospital heart better worse worst best love hate boring fun slow fast "
    "very really too much more less no yes i you he she we they my your its"
).split()


def save_tiny_bert(
    out_dir: str | Path, *, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Write a random BERT encoder (``hidden`` units, ``layers`` layers, 2 heads) and a
    word-piece tokenizer to ``out_dir``; load it with ``from_pretrained(out_dir)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = _SPECIAL + _WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
