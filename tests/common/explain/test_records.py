"""common/explain/records.py: a user's records read in the form the saved model takes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.data.site_file import DataError
from common.explain.records import read_records
from common.explain.saved_model import load_saved_model
from common.models.save import save_model
from common.models.tabular import TabularClassifier


@pytest.fixture
def saved(tmp_path):
    save_model(TabularClassifier("logreg", 2, 2), tmp_path / "model")
    return load_saved_model(tmp_path / "model")


def test_unlabelled_and_labelled_tables(tmp_path, saved):
    path = tmp_path / "r.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "who": ["a", "b"]}).to_csv(path, index=False)
    plain = read_records(path, saved)
    assert plain.labels is None and plain.feature_names == ["x", "y"]
    assert np.array_equal(plain.features, [[1.0, 3.0], [2.0, 4.0]])
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "label": [1, 0]}).to_csv(path, index=False)
    labelled = read_records(path, saved, label_column="label")
    assert labelled.feature_names == ["x", "y"] and labelled.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="takes 2 features per record; .* gives 3"):
        read_records(path, saved)  # the label column is numeric too: name it


def test_labels_beyond_the_models_classes_and_bad_values(tmp_path, saved):
    path = tmp_path / "r.jsonl"
    path.write_text('{"x": 1, "y": 2, "label": 2}\n{"x": 1, "y": 2, "label": 0}\n')
    with pytest.raises(
        DataError, match=r"values \['2'\] that are neither .* nor a class index 0..1"
    ):
        read_records(path, saved, label_column="label")
    path.write_text('{"x": 1, "y": 2, "label": "sick"}\n')
    with pytest.raises(DataError, match="does not record its classes' names"):
        read_records(path, saved, label_column="label")
    assert read_records(path, saved, label_column="label", class_names=["well", "sick"]).labels[0]
    path.write_text('{"x": 1, "y": "high"}\n')
    with pytest.raises(DataError, match=r"feature column\(s\) \['y'\] .* non-numeric"):
        read_records(path, saved, feature_columns=["x", "y"])
    with pytest.raises(DataError, match="3 class names given, the model has 2 classes"):
        read_records(path, saved, class_names=["a", "b", "c"])
