"""Token-tagged text in the CoNLL layout (one ``token<TAB>tag`` line per word, a blank line
between sentences) read into ``LabeledData(kind="tokens")``, with specific errors.

Tags follow the BIO scheme: ``B-<type>`` opens an entity, ``I-<type>`` continues it, ``O`` is
outside any entity. The tag set and its order are fixed by the declared entity types (``O``
first, then ``B-t``, ``I-t`` for each type t in order), so every site and the server agree on
what tag index k means whatever their files happen to contain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.types import LabeledData

OUTSIDE = "O"


class TaggedFileError(ValueError):
    """A token-tagged file that cannot be used as is; the message says which file and line."""


def bio_tags(entity_types: Sequence[str]) -> list[str]:
    """The BIO tag set of ``entity_types``: ["O", "B-t1", "I-t1", "B-t2", ...]."""
    if not entity_types or len(set(entity_types)) != len(entity_types):
        raise ValueError(f"need distinct entity types, got {list(entity_types)}")
    return [OUTSIDE, *(f"{p}-{t}" for t in entity_types for p in ("B", "I"))]


def entity_types(tag_names: Sequence[str]) -> list[str]:
    """The entity types of a BIO tag set, in tag order (inverse of ``bio_tags``)."""
    return list(dict.fromkeys(t[2:] for t in tag_names if t != OUTSIDE))


def tagged_data(
    sentences: list[list[str]], tags: list[np.ndarray], tag_names: list[str]
) -> LabeledData:
    """LabeledData of sentences with one tag index per word; ``labels`` = 1 if the sentence holds
    an entity (a tag other than "O"), else 0 (the stratum splits and partitioners use)."""
    empty = [i for i, words in enumerate(sentences) if not words]
    if empty:
        raise TaggedFileError(f"{len(empty)} sentence(s) have no words (indices {empty[:5]})")
    outside = tag_names.index(OUTSIDE)
    labels = np.asarray([int((t != outside).any()) for t in tags], dtype=np.int64)
    return LabeledData(
        kind="tokens", labels=labels, class_names=list(tag_names), tokens=sentences, tags=tags
    )


def read_tagged_file(path: str | Path, tag_names: list[str]) -> LabeledData:
    """Read a CoNLL-layout file (``token<TAB>tag`` lines, blank lines between sentences; runs of
    blank lines are one boundary). A line that is not exactly two non-empty tab-separated
    fields, or a tag outside ``tag_names``, is a TaggedFileError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise TaggedFileError(f"token-tagged file not found: {path}")
    index = {name: i for i, name in enumerate(tag_names)}
    sentences: list[list[str]] = []
    tags: list[np.ndarray] = []
    words: list[str] = []
    codes: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                if words:
                    sentences.append(words)
                    tags.append(np.asarray(codes, dtype=np.int64))
                    words, codes = [], []
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise TaggedFileError(
                    f"{path} line {number}: expected 'token<TAB>tag', got {line[:80]!r}"
                )
            tag = fields[1].strip()
            if tag not in index:
                raise TaggedFileError(
                    f"{path} line {number}: unknown tag {tag!r}; the tag set is {tag_names}"
                )
            words.append(fields[0])
            codes.append(index[tag])
    if words:
        sentences.append(words)
        tags.append(np.asarray(codes, dtype=np.int64))
    if not sentences:
        raise TaggedFileError(f"{path} holds no sentences")
    return tagged_data(sentences, tags, tag_names)
