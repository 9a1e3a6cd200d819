"""A site's records split into training and local validation parts: seeded and stratified (the
researcher's own held-out splits), or keyed per record (a site's split, fixed by the site)."""

from __future__ import annotations

import hashlib
import hmac

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


def keyed_validation_mask(record_keys: list[bytes], fraction: float, key: bytes) -> np.ndarray:
    """True where a record goes to validation: HMAC-SHA256(key, record) read as a number in
    [0, 1) is below ``fraction``.

    Each record's side depends on itself and the site's secret key only, so adding or removing
    records never moves another one (what lets each split's releases compose in parallel), and
    no setting a server chooses (seed, fraction, run) can move any. If one side would be empty,
    the record(s) nearest the cut move over so both sides hold at least one.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(record_keys)
    if n < 2:
        raise ValueError(f"cannot split {n} record(s) into non-empty train and validation parts")
    scores = (
        np.array(
            [
                int.from_bytes(hmac.new(key, r, hashlib.sha256).digest()[:8], "big")
                for r in record_keys
            ],
            dtype=np.float64,
        )
        / 2.0**64
    )
    mask = scores < fraction
    if not mask.any():
        mask[np.argmin(scores)] = True
    if mask.all():
        mask[np.argmax(scores)] = False
    return mask
