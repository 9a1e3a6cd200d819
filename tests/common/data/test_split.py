"""A site's train/validation split (split.py)."""

import numpy as np
import pytest

from common.data.split import split_train_validation
from tests.common.data.test_partition import _ids, _toy


def test_validation_split_is_stratified_and_disjoint():
    data = _toy(100, classes=2)
    train, val = split_train_validation(data, 0.2, seed=0)
    assert (len(train), len(val)) == (80, 20)
    assert np.bincount(val.labels).tolist() == [10, 10]
    assert sorted(np.concatenate([_ids(train), _ids(val)]).tolist()) == list(range(100))
    again, _ = split_train_validation(data, 0.2, seed=0)
    np.testing.assert_array_equal(_ids(train), _ids(again))


def test_validation_split_of_tiny_or_unstratifiable_data():
    train, val = split_train_validation(_toy(2, classes=2), 0.2, seed=0)
    assert (len(train), len(val)) == (1, 1)
    # a class with a single record cannot be stratified: plain random split, both non-empty
    odd = _toy(12, classes=2).subset(np.array([0, 2, 4, 6, 8, 10, 1]))
    train, val = split_train_validation(odd, 0.3, seed=0)
    assert (len(train), len(val)) == (5, 2)
    with pytest.raises(ValueError, match="cannot split 1 record"):
        split_train_validation(_toy(4).subset(np.array([0])), 0.2, seed=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        split_train_validation(_toy(), 1.0, seed=0)
