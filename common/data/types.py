"""The one in-memory form of a labelled dataset that every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("tabular", "text", "tokens")


@dataclass(frozen=True, eq=False)
class LabeledData:
    """Labelled records of one dataset (or one site's share of it). Compared and hashed by
    identity (it holds arrays), so loaded datasets can key per-process caches.

    kind: "tabular" (``features`` is a float32 matrix n x d), "text" (``texts`` holds n strings)
        or "tokens" (token classification: ``tokens`` holds n word lists, ``tags`` n int64 arrays,
        one tag index per word).
    labels: int64 class indices in [0, num_classes); for "tokens" one stratum per sentence
        instead, 1 if it holds an entity (any tag but "O") else 0: what splits and partitioners
        stratify by (a sentence has no single class). The model's targets are ``tags``.
    class_names: human-readable name of each class index (for "tokens": the tag set, e.g. BIO).
    feature_names: column names of ``features`` (tabular only).
    columns: extra per-record attributes kept for partitioning or fairness (e.g. hospital, sex);
        never fed to the model.
    """

    kind: str
    labels: np.ndarray
    class_names: list[str]
    features: np.ndarray | None = None
    texts: list[str] | None = None
    feature_names: list[str] = field(default_factory=list)
    tokens: list[list[str]] | None = None
    tags: list[np.ndarray] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"LabeledData.kind must be one of {KINDS}, got {self.kind!r}")
        n = len(self.labels)
        if self.kind == "tabular":
            if self.features is None or self.features.ndim != 2 or len(self.features) != n:
                raise ValueError(
                    "tabular LabeledData needs a 2-D features matrix with one row per label"
                )
        elif self.kind == "tokens":
            if (
                self.tokens is None
                or self.tags is None
                or not len(self.tokens) == len(self.tags) == n
            ):
                raise ValueError(
                    "tokens LabeledData needs one word list and one tag array per label"
                )
            if any(len(w) != len(t) for w, t in zip(self.tokens, self.tags, strict=True)):
                raise ValueError("tokens LabeledData needs exactly one tag per word")
        elif self.texts is None or len(self.texts) != n:
            raise ValueError("text LabeledData needs one text per label")
        for name, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} records")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabeledData:
        """The records at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabeledData(
            kind=self.kind,
            labels=self.labels[idx],
            class_names=self.class_names,
            features=None if self.features is None else self.features[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            feature_names=self.feature_names,
            tokens=None if self.tokens is None else [self.tokens[i] for i in idx],
            tags=None if self.tags is None else [self.tags[i] for i in idx],
            columns={k: v[idx] for k, v in self.columns.items()},
        )
