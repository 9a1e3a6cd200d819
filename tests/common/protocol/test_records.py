import numpy as np

from common.protocol import records


def test_arrays_round_trip_with_their_names_dtypes_and_shapes() -> None:
    state = {
        "encoder.weight": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
        "classifier.bias": np.array([0.5, -1.0], dtype=np.float64),
        "steps": np.array([7], dtype=np.int64),
    }
    back = records.from_array_record(records.to_array_record(state))
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_every_status_code_has_one_name_and_only_trained_is_zero() -> None:
    codes = [
        records.TRAINED,
        records.BUDGET_EXHAUSTED,
        records.ROUND_LIMIT,
        records.INVALID_REQUEST,
        records.NON_PRIVATE_REFUSED,
        records.SITE_UNAVAILABLE,
        records.REPLAYED,
        records.RELEASE_REFUSED,
    ]
    assert len(set(codes)) == len(codes) and set(records.STATUS_NAMES) == set(codes)
    assert records.TRAINED == 0 and records.STATUS_NAMES[records.TRAINED] == "trained"
    assert len(set(records.STATUS_NAMES.values())) == len(codes)


def test_train_reply_keys_are_unique_and_carry_no_per_record_value() -> None:
    keys = records.TRAIN_METRIC_KEYS
    assert len(set(keys)) == len(keys)
    assert not {"train-loss", "truncated-texts", "labels"} & set(keys)
