"""Partitioning a training pool among sites (partition.py)."""

import numpy as np
import pytest

from common.data.partition import natural_partition_values, partition
from common.data.registry import load_dataset
from common.data.types import LabeledData


def _toy(n: int = 200, classes: int = 3) -> LabeledData:
    """Records whose feature is their own id, so a partition says exactly which records it holds."""
    ids = np.arange(n)
    return LabeledData(
        kind="tabular",
        labels=(ids % classes).astype(np.int64),
        class_names=[str(c) for c in range(classes)],
        features=ids.reshape(-1, 1).astype(np.float32),
        columns={"site": np.array(["b", "a", "c", "a"])[ids % 4]},
    )


def _ids(part: LabeledData) -> np.ndarray:
    return part.features[:, 0].astype(int)


def _all(data: LabeledData, k: int, **kwargs) -> list[LabeledData]:
    return [partition(data, num_partitions=k, partition_id=i, **kwargs) for i in range(k)]


@pytest.mark.parametrize(
    ("scheme", "kwargs"), [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("natural", {"by": "site"})]
)
def test_every_record_is_in_exactly_one_partition(scheme, kwargs):
    data = _toy()
    k = 3 if scheme == "natural" else 5
    parts = _all(data, k, scheme=scheme, seed=7, **kwargs)
    ids = np.concatenate([_ids(p) for p in parts])
    assert sorted(ids.tolist()) == list(range(len(data)))


def test_iid_partitions_are_shuffled_and_equal_sized():
    parts = _all(_toy(), 3, scheme="iid", seed=0)
    assert [len(p) for p in parts] == [67, 67, 66]
    assert not np.array_equal(_ids(parts[0]), np.arange(67))  # shuffled, not the first 67


def test_dirichlet_is_deterministic_for_a_seed_and_skews_labels():
    data = _toy(600)
    first = _all(data, 4, scheme="dirichlet", alpha=0.1, seed=3)
    again = _all(data, 4, scheme="dirichlet", alpha=0.1, seed=3)
    other = _all(data, 4, scheme="dirichlet", alpha=0.1, seed=4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(_ids(a), _ids(b))
    assert any(not np.array_equal(_ids(a), _ids(c)) for a, c in zip(first, other, strict=True))
    # With alpha 0.1 some site holds (almost) a single class; IID shares would be ~1/3 each.
    shares = [np.bincount(p.labels, minlength=3) / len(p) for p in first]
    assert max(s.max() for s in shares) > 0.8


def test_natural_partitions_of_heart_disease_are_the_hospitals():
    train, _ = load_dataset("heart-disease")
    assert natural_partition_values(train, "dataset") == [
        "Cleveland",
        "Hungary",
        "Switzerland",
        "VA Long Beach",
    ]
    parts = _all(train, 4, scheme="natural", by="dataset")
    hospitals = [set(p.columns["dataset"]) for p in parts]
    assert hospitals == [{"Cleveland"}, {"Hungary"}, {"Switzerland"}, {"VA Long Beach"}]
    expected = [int((train.columns["dataset"] == h).sum()) for (h,) in map(tuple, hospitals)]
    assert [len(p) for p in parts] == expected and sum(expected) == len(train)
    # Switzerland is almost all "disease": natural sites are label-skewed as well.
    assert parts[2].labels.mean() > 0.9


def test_natural_needs_one_partition_per_value():
    train, _ = load_dataset("heart-disease")
    with pytest.raises(ValueError, match=r"gives 4 partitions .*set num_partitions to 4"):
        partition(train, num_partitions=3, partition_id=0, scheme="natural", by="dataset")
    with pytest.raises(
        ValueError,
        match=r"'hospital' is not one of the data's columns "
        r"\['dataset', 'sex'\]",
    ):
        partition(train, num_partitions=4, partition_id=0, scheme="natural", by="hospital")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "shards"}, "known schemes: iid, dirichlet, natural"),
        ({"scheme": "iid", "partition_id": 5}, "partition_id must be in"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "iid", "num_partitions": 500}, "cannot split 200 records into 500"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    arguments = {"num_partitions": 5, "partition_id": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        partition(_toy(), **arguments)


def test_impossible_dirichlet_draw_is_explained():
    with pytest.raises(ValueError, match="use a larger alpha"):
        partition(_toy(40), num_partitions=10, partition_id=0, scheme="dirichlet", alpha=0.01)
