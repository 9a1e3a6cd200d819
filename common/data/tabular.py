"""Deterministic encoding of a table into a float32 feature matrix.

Statistics (medians, means, standard deviations) are fitted on the training rows only and applied
unchanged to the test rows. Which columns get a missing-value indicator and which categories exist
are fixed by the schema, never inferred from the rows, so the feature layout is the same for any
split.

Encoding per column kind:
- numeric: missing values replaced by the training median, then standardized (mean 0, std 1 on the
  training rows); listed in ``may_be_missing`` → also a 0/1 column ``<col>=missing``.
- categorical: one 0/1 column ``<col>=<category>`` per declared category (in the declared order);
  listed in ``may_be_missing`` → also ``<col>=missing``. An undeclared category is an error.
- passthrough: used as is (already 0/1 or on a sensible scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TabularSchema:
    """Which columns are features and how each is encoded."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)
    may_be_missing: list[str] = field(default_factory=list)


def encode_tabular(
    train: pd.DataFrame, test: pd.DataFrame, schema: TabularSchema
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fit on ``train`` and encode both: (train_features, test_features, feature_names)."""
    train_blocks: list[np.ndarray] = []
    test_blocks: list[np.ndarray] = []
    names: list[str] = []

    def add(name: str, train_values: np.ndarray, test_values: np.ndarray) -> None:
        names.append(name)
        train_blocks.append(train_values)
        test_blocks.append(test_values)

    for col in schema.numeric:
        fit = pd.to_numeric(train[col]).astype(float)
        median = float(fit.median())
        filled = fit.fillna(median)
        mean, std = float(filled.mean()), float(filled.std(ddof=0)) or 1.0
        other = pd.to_numeric(test[col]).astype(float)
        add(
            col,
            ((filled - mean) / std).to_numpy(),
            ((other.fillna(median) - mean) / std).to_numpy(),
        )
        if col in schema.may_be_missing:
            add(f"{col}=missing", fit.isna().to_numpy(float), other.isna().to_numpy(float))

    for col, categories in schema.categorical.items():
        train_text = _as_categories(train, col, categories)
        test_text = _as_categories(test, col, categories)
        for category in categories:
            add(
                f"{col}={category}",
                (train_text == category).to_numpy(float),
                (test_text == category).to_numpy(float),
            )
        if col in schema.may_be_missing:
            add(
                f"{col}=missing",
                train_text.isna().to_numpy(float),
                test_text.isna().to_numpy(float),
            )

    for col in schema.passthrough:
        add(
            col, pd.to_numeric(train[col]).to_numpy(float), pd.to_numeric(test[col]).to_numpy(float)
        )

    return _stack(train_blocks, len(train)), _stack(test_blocks, len(test)), names


def _as_categories(frame: pd.DataFrame, col: str, categories: list[str]) -> pd.Series:
    """The column as strings (missing stays missing); error on an undeclared category."""
    values = frame[col].map(lambda v: v if pd.isna(v) else str(v))
    unknown = sorted(set(values.dropna()) - set(categories))
    if unknown:
        raise ValueError(
            f"column {col!r} has undeclared categories {unknown}; declared: {categories}"
        )
    return values


def _stack(blocks: list[np.ndarray], n: int) -> np.ndarray:
    if not blocks:
        return np.zeros((n, 0), dtype=np.float32)
    return np.column_stack(blocks).astype(np.float32)
