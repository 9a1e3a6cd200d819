"""client/site_wire.py: requests and replies round-trip through Flower's RecordDict protobuf;
every bound and type is checked before a record is used."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client import site_wire as wire

LIMITS = wire.WireLimits(max_frame_bytes=2**20, max_records=6, max_items=10, max_text=100)


def _content(**arrays: np.ndarray) -> RecordDict:
    arrays = arrays or {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 3, "noise-multiplier": 1.5, "dp": True}),
        }
    )


def _payload(data: bytes) -> bytes:
    assert data[:4] == wire.MAGIC
    assert int.from_bytes(data[4:8], "big") == len(data) - 8
    return data[8:]


def test_a_request_round_trips_with_its_types() -> None:
    run_config = {"dataset": "heart-disease", "num-server-rounds": 3, "dp": True, "lr": 0.05}
    sent = wire.Request("train", 2**40, run_config, _content())
    got = wire.decode_request(_payload(wire.encode_request(sent)), LIMITS)
    assert (got.kind, got.run_id, got.run_config) == ("train", 2**40, run_config)
    assert [type(v) for v in got.run_config.values()] == [str, int, bool, float]
    np.testing.assert_array_equal(got.content["arrays"]["w"].numpy(), np.arange(6).reshape(2, 3))
    assert got.content["arrays"]["w"].numpy().dtype == np.float32
    assert dict(got.content["config"]) == {"server-round": 3, "noise-multiplier": 1.5, "dp": True}


def test_a_reply_round_trips_and_an_error_carries_its_code() -> None:
    content = RecordDict(
        {
            "metrics": MetricRecord({"status": 0, "epsilon-spent": 0.25}),
            "decision": ConfigRecord({"site": "a", "clamped": ["max-grad-norm 5 -> 1"]}),
        }
    )
    got = wire.decode_reply(_payload(wire.encode_reply(wire.Reply(content))), LIMITS)
    assert got.ok and dict(got.content["metrics"]) == {"status": 0, "epsilon-spent": 0.25}
    assert dict(got.content["decision"])["clamped"] == ["max-grad-norm 5 -> 1"]
    error = wire.decode_reply(_payload(wire.error_reply(wire.REFUSED, "no budget")), LIMITS)
    assert (error.ok, error.error, error.reason) == (False, "refused", "no budget")
    with pytest.raises(wire.WireError, match="unknown records"):
        bad = RecordDict({"raw-records": ConfigRecord({"x": 1})})
        wire.decode_reply(_payload(wire.encode_reply(wire.Reply(bad))), LIMITS)


def _request_payload(content: RecordDict, run_config: dict | None = None) -> bytes:
    return _payload(wire.encode_request(wire.Request("train", 1, run_config or {}, content)))


@pytest.mark.parametrize(
    ("content", "code", "says"),
    [
        (  # 11 config keys > max_items 10
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(np.zeros(1))}),
                    "config": ConfigRecord({f"k{i}": i for i in range(11)}),
                }
            ),
            wire.TOO_LARGE,
            "11 items, more than 10",
        ),
        (
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(np.zeros(1))}),
                    "config": ConfigRecord({"name": "x" * 101}),
                }
            ),
            wire.TOO_LARGE,
            r"101 characters \(limit 100\)",
        ),
        (_content(w=np.array(["a", "b"])), wire.MALFORMED, "dtype '<U1' is not a numeric dtype"),
    ],
)
def test_limits_and_dtypes_are_checked(content: RecordDict, code: str, says: str) -> None:
    with pytest.raises(wire.WireError, match=says) as err:
        wire.decode_request(_request_payload(content), LIMITS)
    assert err.value.code == code


def _array(dtype: str, shape: tuple[int, ...], data: bytes) -> RecordDict:
    fake = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    return RecordDict({"arrays": ArrayRecord({"w": fake}), "config": ConfigRecord({})})


def test_an_array_must_be_what_it_declares() -> None:
    real = Array(np.zeros((2, 2), np.float32)).data
    cases = {
        "declared float32 (4,)": _array("float32", (4,), real),  # header says (2, 2)
        "declared float64 (2, 2)": _array("float64", (2, 2), real),
        "136 bytes, 144 for float32 (2, 2)": _array("float32", (2, 2), real[:-8]),  # data cut short
        "not an .npy array": _array("float32", (2,), b"\x00" * 8),
    }
    for says, content in cases.items():
        with pytest.raises(wire.WireError, match=says.replace("(", r"\(").replace(")", r"\)")):
            wire.decode_request(_request_payload(content), LIMITS)
    # an object array (pickle to load) is never accepted, whatever the header claims
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(wire.WireError, match="'object' is not a numeric dtype"):
        wire.decode_request(_request_payload(_array("object", (1,), buffer.getvalue())), LIMITS)
    with pytest.raises(wire.WireError, match=r"data is object"):
        wire.decode_request(_request_payload(_array("float64", (1,), buffer.getvalue())), LIMITS)


def test_the_header_must_hold_exactly_its_typed_keys() -> None:
    records = RecordDict(
        {
            wire.REQUEST: ConfigRecord({"kind": "train", "run-id": True}),  # bool is not an int
            wire.RUN_CONFIG: ConfigRecord({}),
        }
    )
    payload = wire.recorddict_to_proto(records).SerializeToString()
    with pytest.raises(wire.WireError, match="'run-id'] is a bool, not a int"):
        wire.decode_request(payload, LIMITS)
    records[wire.REQUEST] = ConfigRecord({"kind": "train", "run-id": 1, "path": "/etc"})
    payload = wire.recorddict_to_proto(records).SerializeToString()
    with pytest.raises(wire.WireError, match=r"holds \['kind', 'path', 'run-id'\]"):
        wire.decode_request(payload, LIMITS)


def test_too_many_records_are_refused_before_conversion() -> None:
    records = RecordDict({f"r{i}": ConfigRecord({}) for i in range(7)})
    payload = wire.recorddict_to_proto(records).SerializeToString()
    with pytest.raises(wire.WireError, match="7 records, more than the limit of 6"):
        wire.decode_request(payload, LIMITS)


def test_read_frame_checks_the_length_before_reading_the_payload() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(wire.HEADER.pack(wire.MAGIC, LIMITS.max_frame_bytes + 1))
        with pytest.raises(wire.WireError, match="exceeds the limit") as err:
            wire.read_frame(right, LIMITS)
        assert err.value.code == wire.TOO_LARGE
        left.sendall(wire.frame(b"abc"))
        assert wire.read_frame(right, LIMITS) == b"abc"
        left.sendall(wire.frame(b"abcdef")[:10])
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.WireError, match="after 2 of 6 bytes"):
            wire.read_frame(right, LIMITS)


def test_limits_must_fit_the_length_prefix() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        wire.WireLimits(max_frame_bytes=2**32)
