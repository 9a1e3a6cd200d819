"""A site's own CSV / JSON Lines data file (common/data/site_file.py)."""

import json

import numpy as np
import pytest

from common.data.registry import load_dataset
from common.data.site_file import DataError, load_site_file, write_site_file


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_tabular_round_trip(tmp_path, suffix):
    train, _ = load_dataset("heart-disease")
    data = train.subset(np.arange(0, 736, 7))
    path = tmp_path / f"site{suffix}"
    write_site_file(data, path)
    back = load_site_file(
        path, label_column="label", feature_columns=data.feature_names, class_names=data.class_names
    )
    assert back.kind == "tabular" and back.class_names == ["no disease", "disease"]
    np.testing.assert_array_equal(back.labels, data.labels)
    np.testing.assert_array_equal(back.features, data.features)
    assert back.feature_names == data.feature_names


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_text_round_trip_keeps_quotes_commas_and_newlines(tmp_path, suffix):
    train, _ = load_dataset("drug-reviews")
    data = train.subset(np.arange(40))
    assert any("," in t and "'" in t for t in data.texts)
    path = tmp_path / f"site{suffix}"
    write_site_file(data, path)
    back = load_site_file(
        path, label_column="label", text_column="text", class_names=data.class_names
    )
    assert back.texts == data.texts
    np.testing.assert_array_equal(back.labels, data.labels)


def test_json_array_file_is_accepted(tmp_path):
    path = tmp_path / "site.json"
    path.write_text(json.dumps([{"y": "spam", "t": "win now"}, {"y": "ham", "t": "hi mum"}]))
    data = load_site_file(path, label_column="y", text_column="t")
    assert data.class_names == ["ham", "spam"] and data.labels.tolist() == [1, 0]


def test_default_features_are_the_other_numeric_columns(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("age,name,label,bp\n50,ann,2,120\n61,bob,10,135.5\n70,cy,2,140\n")
    data = load_site_file(path, label_column="label")
    assert data.feature_names == ["age", "bp"]
    assert data.class_names == ["2", "10"]  # numeric labels sort as numbers
    assert data.labels.tolist() == [0, 1, 0]
    np.testing.assert_allclose(data.features, [[50, 120], [61, 135.5], [70, 140]])


def test_labels_may_be_class_indices(tmp_path):
    path = tmp_path / "site.jsonl"
    path.write_text('{"x": 1.5, "y": 1}\n{"x": 2.0, "y": "no"}\n')
    data = load_site_file(path, label_column="y", class_names=["no", "yes"])
    assert data.labels.tolist() == [1, 0]


def test_labels_outside_the_declared_classes_are_named(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("x,y\n1,yes\n2,maybe\n3,7\n4,no\n")
    with pytest.raises(
        DataError,
        match=r"values \['7', 'maybe'\] .*declared classes "
        r"\['no', 'yes'\]",
    ):
        load_site_file(path, label_column="y", class_names=["no", "yes"])


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load_site_file(path, **({"label_column": "y"} | kwargs))
    return str(error.value)


def test_missing_file(tmp_path):
    assert f"site data file not found: {tmp_path / 'nope.csv'}" in _error(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty (no header, no rows)"),
        ("x,y\n", "has no data rows"),
    ],
)
def test_empty_csv(tmp_path, content, message):
    path = tmp_path / "site.csv"
    path.write_text(content)
    assert message in _error(path)


def test_empty_jsonl(tmp_path):
    path = tmp_path / "site.jsonl"
    path.write_text("")
    assert "has no data rows" in _error(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("site.csv", "x,y\n1,2\n3,4,5,6\n", "could not read {path} as CSV"),
        ("site.jsonl", '{"x": 1, "y": 0}\n{"x": \n', "could not read {path} as JSON Lines"),
        ("site.csv", b"\xff\xfe\x00garbage\x81", "could not read {path} as CSV"),
        ("site.jsonl", '{"x": 1, "y": 0}\n[1, 0]\n', "line 2 is not a JSON object"),
        ("site.parquet", "x", "the suffix must be one of .csv, .jsonl, .json"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert message.format(path=path) in _error(path)


def test_missing_column_names_the_column_the_file_and_what_exists(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("age,outcome\n1,0\n")
    message = _error(path, label_column="label")
    assert "['label']" in message and str(path) in message and "['age', 'outcome']" in message


def test_non_numeric_and_missing_features_are_counted(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("age,bp,y\n50,120,0\nfifty,,1\n61,,0\n70,130,1\n")
    message = _error(path, feature_columns=["age", "bp"])
    assert "'age': 1 row(s) (data rows 2)" in message
    assert "'bp': 2 row(s) (data rows 2, 3)" in message


def test_empty_texts_are_counted(tmp_path):
    path = tmp_path / "site.jsonl"
    lines = [{"t": "fine", "y": 0}, {"t": "   ", "y": 1}, {"t": None, "y": 0}, {"t": "ok", "y": 1}]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    assert "text column 't'" in (message := _error(path, text_column="t"))
    assert "2 row(s) (data rows 2, 3)" in message


def test_missing_labels_are_counted(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("x,y\n1,a\n2,\n")
    assert "label column 'y'" in (message := _error(path)) and "1 row(s) (data rows 2)" in message


def test_text_and_class_named_na_are_kept(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("t,y\nNA,NA\nnull,ok\n")
    data = load_site_file(path, label_column="y", text_column="t")
    assert data.texts == ["NA", "null"] and data.class_names == ["NA", "ok"]


def test_columns_that_are_not_label_or_features_are_kept_for_group_counts(tmp_path):
    path = tmp_path / "site.csv"
    path.write_text("age,chol,sex,label\n50,200,Male,1\n61,180,Female,0\n")
    data = load_site_file(path, label_column="label", feature_columns=["age", "chol"])
    assert list(data.columns) == ["sex"] and list(data.columns["sex"]) == ["Male", "Female"]
    assert data.feature_names == ["age", "chol"]  # sex never reaches the model


def test_token_tagged_round_trip_and_errors(tmp_path):
    from common.data.conll import bio_tags, tagged_data

    tags = bio_tags(["person"])
    data = tagged_data([["Ann", "Lee", "said"], ["ok"]], [np.array([1, 2, 0]), np.array([0])], tags)
    path = tmp_path / "site.conll"
    write_site_file(data, path)
    assert path.read_text() == "Ann\tB-person\nLee\tI-person\nsaid\tO\n\nok\tO\n\n"
    back = load_site_file(path, label_column="label", class_names=tags)
    assert back.kind == "tokens" and back.tokens == data.tokens
    assert [t.tolist() for t in back.tags] == [[1, 2, 0], [0]]
    with pytest.raises(DataError, match="needs the tag set"):
        load_site_file(path, label_column="label")
    with pytest.raises(DataError, match="unknown tag 'B-person'"):
        load_site_file(path, label_column="label", class_names=bio_tags(["place"]))
    with pytest.raises(DataError, match="use the suffix .conll"):
        write_site_file(data, tmp_path / "site.csv")
