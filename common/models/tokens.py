"""Encoding of word-tagged sentences for a token classifier: tags aligned to sub-tokens.

A word may become several sub-tokens ("Nov" -> "no", "##v"). Its tag is put on the first one;
the other sub-tokens, the special tokens ([CLS], [SEP]) and padding get ``IGNORE_INDEX`` (-100),
which the loss and the metrics skip (the alignment of Hugging Face's token-classification
recipe, via the fast tokenizer's ``word_ids()``). So each word is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

if TYPE_CHECKING:  # transformers (~2 s to import) stays out of tabular sites' processes
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class TaggedWordTensors(TensorDataset):
    """TensorDataset(input_ids, attention_mask, token_type_ids, position_ids, labels [n, T]) of
    tagged sentences, with what truncation cut: ``sentences_cut`` sentences were longer than the
    max length; ``words_cut`` words lost every sub-token to it (neither trained nor scored)."""

    def __init__(self, *tensors: torch.Tensor, sentences_cut: int, words_cut: int) -> None:
        super().__init__(*tensors)
        self.sentences_cut = sentences_cut
        self.words_cut = words_cut


def align_tags(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Per sub-token label: the word's tag on its first sub-token, IGNORE_INDEX elsewhere."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else int(tags[word]))
        previous = word
    return labels


def encode_tagged_words(
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[Sequence[str]],
    tags: Sequence[np.ndarray],
    max_length: int,
) -> TaggedWordTensors:
    """Tokenize word lists (``is_split_into_words``) padded to the longest sentence (at most
    ``max_length`` sub-tokens) and align one tag per word (see ``align_tags``)."""
    if len(sentences) != len(tags):
        raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences")
    if not sentences:
        raise ValueError("no sentences to encode")
    if not tokenizer.is_fast:
        raise ValueError(
            f"aligning tags to sub-tokens needs a fast tokenizer, got {type(tokenizer).__name__}"
        )
    for i, (words, word_tags) in enumerate(zip(sentences, tags, strict=True)):
        if not words:
            raise ValueError(f"sentence {i} has no words; drop it first")
        if len(words) != len(word_tags):
            raise ValueError(f"sentence {i} has {len(words)} words but {len(word_tags)} tags")
        blank = [k for k, w in enumerate(words) if not w.strip()]
        if blank:
            raise ValueError(f"sentence {i} has empty words at positions {blank[:5]}")
    words = [list(s) for s in sentences]
    full = tokenizer(words, is_split_into_words=True, verbose=False)["input_ids"]
    sentences_cut = sum(len(ids) > max_length for ids in full)
    enc = tokenizer(
        words,
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    input_ids = enc["input_ids"]
    n, length = input_ids.shape
    labels, words_cut = [], 0
    for i in range(n):
        ids = enc.word_ids(i)
        words_cut += len(words[i]) - len({w for w in ids if w is not None})
        labels.append(align_tags(ids, tags[i]))
    token_type_ids = enc.get("token_type_ids", torch.zeros_like(input_ids))
    return TaggedWordTensors(
        input_ids,
        enc["attention_mask"],
        token_type_ids,
        torch.arange(length).repeat(n, 1),
        torch.as_tensor(labels, dtype=torch.long),
        sentences_cut=sentences_cut,
        words_cut=words_cut,
    )
