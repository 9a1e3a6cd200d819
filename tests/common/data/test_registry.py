"""The named real datasets and their fixed train-pool / test split (common/data/registry.py)."""

import numpy as np
import pytest

from common.data.registry import DATASETS, load_dataset


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def _both(name: str, key: str) -> dict[str, int]:
    train, test = load_dataset(name)
    return _counts(np.concatenate([train.columns[key], test.columns[key]]))


def test_heart_disease_has_920_patients_from_four_hospitals():
    train, test = load_dataset("heart-disease")
    assert (len(train), len(test)) == (736, 184)
    assert _both("heart-disease", "dataset") == {
        "Cleveland": 304,
        "Hungary": 293,
        "Switzerland": 123,
        "VA Long Beach": 200,
    }
    assert set(test.columns["dataset"]) == {"Cleveland", "Hungary", "Switzerland", "VA Long Beach"}
    assert train.class_names == ["no disease", "disease"]
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [411, 509]
    assert _both("heart-disease", "sex") == {"Female": 194, "Male": 726}


def test_heart_disease_features_are_encoded_on_the_training_pool():
    train, test = load_dataset("heart-disease")
    assert train.kind == "tabular" and train.features.dtype == np.float32
    assert train.features.shape == (736, 35) and test.features.shape == (184, 35)
    assert np.isfinite(train.features).all() and np.isfinite(test.features).all()
    assert "dataset" not in " ".join(train.feature_names)  # the hospital is never a feature
    age = train.feature_names.index("age")
    assert abs(train.features[:, age].mean()) < 1e-5
    assert abs(train.features[:, age].std() - 1) < 1e-5
    # Every Swiss record has cholesterol 0 = not measured, so the indicator is set for all of them.
    chol_missing = train.feature_names.index("chol=missing")
    swiss = train.columns["dataset"] == "Switzerland"
    assert train.features[swiss, chol_missing].min() == 1.0
    one_hot = [i for i, n in enumerate(train.feature_names) if n.startswith("thal=")]
    assert (train.features[:, one_hot].sum(axis=1) == 1).all()


def test_split_is_fixed_by_the_seed():
    a_train, _ = load_dataset("heart-disease", seed=0)
    b_train, _ = load_dataset("heart-disease", seed=0)
    c_train, _ = load_dataset("heart-disease", seed=1)
    np.testing.assert_array_equal(a_train.features, b_train.features)
    assert a_train.features.shape == c_train.features.shape
    assert not np.array_equal(a_train.features, c_train.features)


def test_rotten_tomatoes_drops_plot_summaries():
    train, test = load_dataset("rotten-tomatoes")
    assert train.kind == "text" and train.class_names == ["rotten", "fresh"]
    assert len(train) + len(test) == 12_808
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [5_405, 7_403]
    assert len(test) == 2_562
    assert all(t.strip() for t in train.texts + test.texts)
    assert len(_both("rotten-tomatoes", "movie_name")) == 508


def test_breast_cancer():
    train, test = load_dataset("breast-cancer")
    assert (len(train), len(test), train.features.shape[1]) == (455, 114, 30)
    assert train.class_names == ["malignant", "benign"]
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [212, 357]


def test_drug_reviews():
    train, test = load_dataset("drug-reviews")
    assert len(train) + len(test) == 979
    assert train.class_names == ["negative", "neutral", "positive"]
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [256, 90, 633]
    assert not any("&#039;" in t or t.startswith('"') for t in train.texts)
    assert _both("drug-reviews", "condition")["Birth Control"] == 193


def test_credit_default():
    train, test = load_dataset("credit-default")
    assert (len(train), len(test), train.features.shape[1]) == (24_000, 6_000, 32)
    assert np.bincount(np.concatenate([train.labels, test.labels])).tolist() == [23_364, 6_636]
    assert _both("credit-default", "sex") == {"female": 18_112, "male": 11_888}


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(ValueError, match="known datasets: heart-disease, rotten-tomatoes"):
        load_dataset("mnist")
    assert {"heart-disease", "rotten-tomatoes", "breast-cancer"} <= set(DATASETS)


def test_wnut16_ner_has_2394_tagged_tweets_split_by_holding_an_entity():
    from common.data.partition import partition
    from common.data.split import split_train_validation

    train, test = load_dataset("wnut16-ner")
    assert (len(train), len(test)) == (1915, 479)
    assert train.kind == "tokens" and train.num_classes == 21 and train.class_names[0] == "O"
    everything = train.tags + test.tags
    assert sum(len(t) for t in everything) == 46_469
    tags = np.concatenate(everything)
    assert int((tags == train.class_names.index("B-person")).sum()) == 449
    assert int((tags == train.class_names.index("I-other")).sum()) == 320
    # 918 tweets hold an entity; the split keeps their share (stratified)
    assert (int(train.labels.sum()), int(test.labels.sum())) == (734, 184)
    assert train.tokens[0] and len(train.tokens[0]) == len(train.tags[0])
    site = partition(train, num_partitions=4, partition_id=1, scheme="dirichlet", alpha=0.5)
    fit, validation = split_train_validation(site, 0.2, seed=0)
    assert len(fit) + len(validation) == len(site) and validation.kind == "tokens"
