"""A site's records split into training and local validation parts (seeded, stratified)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from common.data.types import LabeledData


def split_train_validation(
    data: LabeledData, fraction: float, seed: int
) -> tuple[LabeledData, LabeledData]:
    """(train, validation) with ``fraction`` of the records in validation, both non-empty.

    Stratified by label when every class has at least 2 records and both parts can hold every class;
    otherwise a plain seeded random split.
    """
    n = len(data)
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"cannot split {n} record(s) into non-empty train and validation parts")
    n_val = min(max(1, round(fraction * n)), n - 1)
    counts = np.bincount(data.labels)
    classes = int((counts > 0).sum())
    stratify = (
        data.labels if counts[counts > 0].min() >= 2 and min(n_val, n - n_val) >= classes else None
    )
    train, val = train_test_split(
        np.arange(n), test_size=n_val, random_state=seed, stratify=stratify
    )
    return data.subset(np.sort(train)), data.subset(np.sort(val))
