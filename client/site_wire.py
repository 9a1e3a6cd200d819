"""The site service's wire protocol: one length-prefixed frame per request and per reply, each
holding one Flower RecordDict protobuf (``flwr.common.serde``); never pickle, never eval.

    frame   = b"FPS1" | uint32 big-endian payload length | payload (RecordDict protobuf)
    request = {"fedpriv.request": ConfigRecord {kind, run-id},
               "fedpriv.run-config": ConfigRecord (the run's config),
               "arrays": ArrayRecord, "config": ConfigRecord}       (the message's content)
    reply   = {"fedpriv.reply": ConfigRecord {ok, error, reason}, the reply's content records}

Everything is checked in this order, and nothing past a failed check is read: the frame's
magic and length against ``WireLimits`` (before a byte of the payload is read), the protobuf
parse, record and item counts, record names and types, value types, each array's declared
dtype and shape against its .npy header and its byte length (no object dtypes: ``Array.numpy``
is then a plain, pickle-free ``np.load``). A violation raises ``WireError`` with the reason,
which the server sends back as an error reply. Our own framing because Flower's gRPC transport
has no local-socket server to reuse; the records and their serialisation are Flower's.

Over 300 lines because the whole wire format (framing, limits, every key and type a request or
reply may hold) is in one file, to be audited at once.
"""

from __future__ import annotations

import io
import math
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

MAGIC = b"FPS1"
HEADER = struct.Struct(">4sI")  # magic, payload length
REQUEST = "fedpriv.request"
RUN_CONFIG = "fedpriv.run-config"
REPLY = "fedpriv.reply"

# the content records a request of each kind may carry (name -> record type)
REQUEST_CONTENT: dict[str, dict[str, type]] = {
    "train": {"arrays": ArrayRecord, "config": ConfigRecord},
    "evaluate": {"arrays": ArrayRecord, "config": ConfigRecord},
    "status": {},
}
REPLY_CONTENT = {
    "arrays": ArrayRecord,
    "metrics": MetricRecord,
    "decision": ConfigRecord,
    "status": ConfigRecord,
}
# numeric dtypes an array may have (an object dtype would need pickle to load)
ARRAY_DTYPES = frozenset(
    ["bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64"]
    + ["uint8", "uint16", "uint32", "uint64"]
)
INT64 = 2**63
NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}

# error codes of an error reply
MALFORMED = "malformed"  # not a frame, not a RecordDict, wrong records or types
TOO_LARGE = "too-large"  # over a WireLimits bound
UNKNOWN_KIND = "unknown-kind"
REFUSED = "refused"  # the site cannot answer this request (SiteRequestError, ConfigError)
UNAUTHORIZED = "unauthorized"
BUSY = "busy"
INTERNAL = "internal"


class WireError(ValueError):
    """A frame or record the protocol does not allow; ``code`` is one of the error codes."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class WireLimits:
    """Bounds checked before anything is used.

    max_frame_bytes: payload bytes of one frame (256 MiB holds a full MiniLM in float32 ~4x).
    max_records / max_items: records per frame / keys (arrays, config values) per record.
    max_text: characters of one string value (and of a record key).
    """

    max_frame_bytes: int = 256 * 2**20
    max_records: int = 8
    max_items: int = 4096
    max_text: int = 65536

    def __post_init__(self) -> None:
        if not 0 < self.max_frame_bytes < 2**32:
            raise ValueError(f"max_frame_bytes must be in (0, 2^32), got {self.max_frame_bytes}")


@dataclass(frozen=True)
class Request:
    """A message for the site: its kind (train / evaluate / status), run id, run config and
    content (the message's records)."""

    kind: str
    run_id: int
    run_config: dict[str, Any]
    content: RecordDict = field(default_factory=RecordDict)


@dataclass(frozen=True)
class Reply:
    """The site's answer: content on success; else an error code and its reason."""

    content: RecordDict = field(default_factory=RecordDict)
    error: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


# --- frames -----------------------------------------------------------------------------
def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload)) + payload


def read_frame(sock: socket.socket, limits: WireLimits, deadline: float | None = None) -> bytes:
    """One frame's payload; the length is checked against the limit before it is read.
    ``deadline`` (time.monotonic()): the whole frame must have arrived by then."""
    head = _read_exactly(sock, HEADER.size, deadline)
    magic, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise WireError(MALFORMED, f"not a fedpriv-site frame (starts {magic!r}, not {MAGIC!r})")
    if length > limits.max_frame_bytes:
        raise WireError(
            TOO_LARGE, f"frame of {length} bytes exceeds the limit of {limits.max_frame_bytes}"
        )
    return _read_exactly(sock, length, deadline)


def _read_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"frame not complete in time ({got} of {size} bytes)")
            sock.settimeout(left)
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if n == 0:
            raise WireError(MALFORMED, f"connection closed after {got} of {size} bytes (truncated)")
        got += n
    return bytes(buffer)


# --- requests and replies ---------------------------------------------------------------
def encode_request(request: Request) -> bytes:
    records = RecordDict(
        {
            REQUEST: ConfigRecord({"kind": request.kind, "run-id": request.run_id}),
            RUN_CONFIG: ConfigRecord(dict(request.run_config)),
        }
    )
    for name, record in request.content.items():
        records[name] = record
    return frame(_serialize(records))


def decode_request(payload: bytes, limits: WireLimits) -> Request:
    records = _parse(payload, limits)
    header = _config(records, REQUEST, {"kind": str, "run-id": int})
    kind = header["kind"]
    if kind not in REQUEST_CONTENT:
        raise WireError(
            UNKNOWN_KIND,
            f"unknown request kind {kind!r}; this site answers {list(REQUEST_CONTENT)}",
        )
    run_config = dict(_record(records, RUN_CONFIG, ConfigRecord))
    for key, value in run_config.items():
        if not isinstance(value, bool | int | float | str):
            raise WireError(MALFORMED, f"run config {key!r} is a {type(value).__name__}")
    allowed = REQUEST_CONTENT[kind]
    names = set(records) - {REQUEST, RUN_CONFIG}
    if names != set(allowed):
        raise WireError(
            MALFORMED, f"a {kind} request carries {sorted(allowed)}, not {sorted(names)}"
        )
    content = RecordDict({name: _record(records, name, allowed[name]) for name in allowed})
    return Request(kind, header["run-id"], run_config, content)


def encode_reply(reply: Reply) -> bytes:
    records = RecordDict(
        {REPLY: ConfigRecord({"ok": reply.ok, "error": reply.error, "reason": reply.reason})}
    )
    for name, record in reply.content.items():
        records[name] = record
    return frame(_serialize(records))


def error_reply(code: str, reason: str) -> bytes:
    return encode_reply(Reply(error=code, reason=reason[:2000]))


def decode_reply(payload: bytes, limits: WireLimits) -> Reply:
    records = _parse(payload, limits)
    header = _config(records, REPLY, {"ok": bool, "error": str, "reason": str})
    names = set(records) - {REPLY}
    unknown = sorted(names - set(REPLY_CONTENT))
    if unknown:
        raise WireError(MALFORMED, f"a reply carries unknown records {unknown}")
    content = RecordDict({name: _record(records, name, REPLY_CONTENT[name]) for name in names})
    if header["ok"] == bool(header["error"]):
        raise WireError(MALFORMED, "a reply must be either ok or an error with a code")
    return Reply(content, header["error"], header["reason"])


# --- checks -----------------------------------------------------------------------------
def _serialize(records: RecordDict) -> bytes:
    return recorddict_to_proto(records).SerializeToString()


def _parse(payload: bytes, limits: WireLimits) -> RecordDict:
    """The payload as a RecordDict, counts, keys and arrays checked before conversion."""
    if len(payload) > limits.max_frame_bytes:
        raise WireError(TOO_LARGE, f"payload of {len(payload)} bytes exceeds the limit")
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise WireError(MALFORMED, f"not a RecordDict protobuf ({err})") from None
    if len(proto.items) > limits.max_records:
        raise WireError(
            TOO_LARGE, f"{len(proto.items)} records, more than the limit of {limits.max_records}"
        )
    seen: set[str] = set()
    for item in proto.items:
        _check_key(item.key, limits, "record name")
        if item.key in seen:
            raise WireError(MALFORMED, f"record {item.key!r} appears twice")
        seen.add(item.key)
        kind = item.WhichOneof("value")
        if kind is None:
            raise WireError(MALFORMED, f"record {item.key!r} has no value")
        items = getattr(item, kind).items
        if len(items) > limits.max_items:
            raise WireError(
                TOO_LARGE,
                f"record {item.key!r} has {len(items)} items, more than {limits.max_items}",
            )
        keys = [entry.key for entry in items]
        if len(set(keys)) != len(keys):
            raise WireError(MALFORMED, f"record {item.key!r} repeats a key")
        for entry in items:
            _check_key(entry.key, limits, f"key in record {item.key!r}")
            if kind == "array_record":
                _check_array(entry.value, f"{item.key}[{entry.key!r}]")
            else:
                _check_value(entry.value, limits, f"{item.key}[{entry.key!r}]")
    try:
        return recorddict_from_proto(proto)
    except (TypeError, ValueError) as err:
        raise WireError(MALFORMED, f"records do not convert ({err})") from None


def _check_key(key: str, limits: WireLimits, what: str) -> None:
    if not key or len(key) > 256:
        raise WireError(MALFORMED, f"{what} must have 1 to 256 characters, got {len(key)}")


def _check_value(value: Any, limits: WireLimits, where: str) -> None:
    """A config/metric value: one scalar or a list; strings bounded; floats may be inf/nan
    (the receiver checks ranges)."""
    kind = value.WhichOneof("value")
    if kind is None:
        raise WireError(MALFORMED, f"{where} has no value")
    if kind in ("string", "bytes"):
        scalar = getattr(value, kind)
        if len(scalar) > limits.max_text:
            raise WireError(
                TOO_LARGE, f"{where}: {len(scalar)} characters (limit {limits.max_text})"
            )
    elif kind.endswith("_list"):
        values = getattr(value, kind).vals
        if len(values) > limits.max_items:
            raise WireError(TOO_LARGE, f"{where}: list of {len(values)} (limit {limits.max_items})")
        if kind in ("string_list", "bytes_list") and sum(map(len, values)) > limits.max_text:
            raise WireError(TOO_LARGE, f"{where}: list longer than {limits.max_text} characters")


def _check_array(array: Any, where: str) -> None:
    """Declared dtype/shape = the .npy header's; data length = header + elements x itemsize."""
    if array.stype != "numpy.ndarray":
        raise WireError(MALFORMED, f"{where}: serialisation {array.stype!r}, not numpy.ndarray")
    if array.dtype not in ARRAY_DTYPES:
        raise WireError(MALFORMED, f"{where}: dtype {array.dtype!r} is not a numeric dtype")
    shape = tuple(array.shape)
    if any(d < 0 or d >= INT64 for d in shape) or len(shape) > 32:
        raise WireError(MALFORMED, f"{where}: impossible shape {shape}")
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = NPY_HEADERS.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version}")
        header_shape, _, dtype = read_header(stream, max_header_size=1024)
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise WireError(MALFORMED, f"{where}: not an .npy array ({err})") from None
    if dtype.hasobject or str(dtype) != array.dtype or tuple(header_shape) != shape:
        raise WireError(
            MALFORMED,
            f"{where}: data is {dtype} {tuple(header_shape)}, declared {array.dtype} {shape}",
        )
    expected = stream.tell() + math.prod(shape) * dtype.itemsize
    if len(array.data) != expected:
        raise WireError(
            MALFORMED, f"{where}: {len(array.data)} bytes, {expected} for {array.dtype} {shape}"
        )


def _record(records: RecordDict, name: str, kind: type) -> Any:
    if name not in records:
        raise WireError(MALFORMED, f"no {name!r} record")
    record = records[name]
    if not isinstance(record, kind):
        raise WireError(
            MALFORMED, f"record {name!r} is a {type(record).__name__}, not a {kind.__name__}"
        )
    return record


def _config(records: RecordDict, name: str, keys: Mapping[str, type]) -> dict[str, Any]:
    record = dict(_record(records, name, ConfigRecord))
    if set(record) != set(keys):
        raise WireError(MALFORMED, f"record {name!r} holds {sorted(record)}, not {sorted(keys)}")
    for key, kind in keys.items():
        value = record[key]
        if type(value) is not kind:  # noqa: E721 (bool is not an int here)
            raise WireError(
                MALFORMED, f"{name}[{key!r}] is a {type(value).__name__}, not a {kind.__name__}"
            )
    return record
