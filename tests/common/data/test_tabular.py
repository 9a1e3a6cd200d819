"""Deterministic tabular encoding (common/data/tabular.py)."""

import numpy as np
import pandas as pd
import pytest

from common.data.tabular import TabularSchema, encode_tabular

SCHEMA = TabularSchema(
    numeric=["x"], categorical={"c": ["a", "b"]}, passthrough=["flag"], may_be_missing=["x", "c"]
)


def test_statistics_come_from_the_training_rows_only():
    train = pd.DataFrame({"x": [1.0, 3.0, np.nan], "c": ["a", None, "b"], "flag": [0, 1, 1]})
    test = pd.DataFrame({"x": [np.nan, 5.0], "c": ["b", "a"], "flag": [1, 0]})
    x_train, x_test, names = encode_tabular(train, test, SCHEMA)
    assert names == ["x", "x=missing", "c=a", "c=b", "c=missing", "flag"]
    # median 2 fills the gap; mean 2, std sqrt(2/3) on the filled training column
    std = np.sqrt(2 / 3)
    np.testing.assert_allclose(x_train[:, 0], [-1 / std, 1 / std, 0], rtol=1e-6)
    np.testing.assert_allclose(x_test[:, 0], [0, 3 / std], rtol=1e-6)
    np.testing.assert_array_equal(x_train[:, 1:5], [[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]])
    np.testing.assert_array_equal(x_test[:, 1:], [[1, 0, 1, 0, 1], [0, 1, 0, 0, 0]])


def test_undeclared_category_is_an_error():
    frame = pd.DataFrame({"x": [1.0], "c": ["z"], "flag": [0]})
    with pytest.raises(ValueError, match=r"column 'c' has undeclared categories \['z'\]"):
        encode_tabular(frame, frame, SCHEMA)
