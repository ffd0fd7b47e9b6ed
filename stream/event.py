"""The dwell event on the wire: decoding and validation of Kafka record values.

A record value is a JSON object (encoded with orjson) with the fields of the design's table.
:func:`decode_batch` turns a list of raw values into an :class:`EventBatch` of columns plus
the list of records it rejected, each with a bounded :class:`Reason` (a metric label) and a
human-readable detail (for the dead-letter record).

>>> batch = decode_batch([b'{"user_id": 1, "video_id": "v", "play_ms": 5, '
...                       b'"duration_ms": 10, "ts_ms": 0}', b'nope'])
>>> len(batch), batch.rejected[0].reason.value
(1, 'not_json')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

MAX_VALUE_BYTES = 64 * 1024
MAX_ID_BYTES = 128
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_TS_MS = 32_503_680_000_000  # year 3000: anything later is a unit error, not an event time

REQUIRED = ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms")


class Reason(enum.StrEnum):
    """Why a record was rejected. A closed set: these are metric label values."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    ID_TOO_LONG = "id_too_long"


class InvalidEvent(ValueError):
    """A record value that is not a valid event; carries the reason and a detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected record: its index in the decoded input, the reason and a detail."""

    index: int
    reason: Reason
    detail: str


@dataclass(slots=True)
class EventBatch:
    """Valid events as columns. ``index`` maps each row back to its input position."""

    index: np.ndarray  # int64, position in the input list
    user_id: list[str | int]
    video_id: list[str | int]
    play_ms: np.ndarray  # int64
    duration_ms: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    explicit: np.ndarray  # float32: 1 like, 0 dislike, NaN when the event carries none
    context: list[dict[str, Any] | None]
    rejected: list[Rejected] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_id)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass and is not a valid count


def _check_id(obj: dict[str, Any], name: str) -> str | int:
    value = obj[name]
    if _is_int(value):
        if not -(2**63) <= value < 2**63:
            raise InvalidEvent(Reason.OUT_OF_RANGE, f"{name} outside 64-bit range")
        return value
    if type(value) is not str:
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be a string or an integer")
    if not value:
        raise InvalidEvent(Reason.OUT_OF_RANGE, f"{name} is empty")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        raise InvalidEvent(Reason.ID_TOO_LONG, f"{name} longer than {MAX_ID_BYTES} bytes")
    return value


def _check_int(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj[name]
    if not _is_int(value):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidEvent(Reason.OUT_OF_RANGE, f"{name}={value} outside [{low}, {high}]")
    return value


def validate(value: bytes, max_bytes: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    """Parse and validate one record value; return the JSON object or raise InvalidEvent."""
    if value is None:
        raise InvalidEvent(Reason.NOT_JSON, "empty record value (tombstone)")
    if len(value) > max_bytes:
        raise InvalidEvent(Reason.TOO_LARGE, f"{len(value)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(Reason.NOT_JSON, str(exc)[:200]) from None
    return check_object(obj)


def check_object(obj: Any) -> dict[str, Any]:
    """Validate a parsed record value; return it or raise InvalidEvent."""
    if type(obj) is not dict:
        raise InvalidEvent(Reason.NOT_OBJECT, f"top level is {type(obj).__name__}")
    missing = [name for name in REQUIRED if name not in obj]
    if missing:
        raise InvalidEvent(Reason.MISSING_FIELD, ",".join(missing))
    _check_id(obj, "user_id")
    _check_id(obj, "video_id")
    _check_int(obj, "play_ms", 0, 2**63 - 1)
    _check_int(obj, "duration_ms", 1, MAX_DURATION_MS)
    _check_int(obj, "ts_ms", 0, MAX_TS_MS)
    if "event_id" in obj:
        event_id = obj["event_id"]
        if type(event_id) is not str:
            raise InvalidEvent(Reason.WRONG_TYPE, "event_id must be a string")
        if len(event_id.encode()) > MAX_ID_BYTES:
            raise InvalidEvent(Reason.ID_TOO_LONG, f"event_id longer than {MAX_ID_BYTES} bytes")
    context = obj.get("context")
    if context is not None and type(context) is not dict:
        raise InvalidEvent(Reason.WRONG_TYPE, "context must be an object")
    return obj


def decode_batch(values: list[bytes], max_bytes: int = MAX_VALUE_BYTES) -> EventBatch:
    """Decode and validate raw record values into columns; invalid ones go to ``rejected``.

    A batch is checked a column at a time (C-level ``map``/``len``, numpy ranges); only the
    records that fail or look unusual (long ids, out-of-range numbers) are validated one by
    one, with :func:`validate`, for their exact reason. A batch with a tombstone, bad JSON, a
    missing field or a wrong type is validated record by record. Both ways give the same
    result (``tests/unit/test_event.py`` checks it on random hostile batches).
    """
    fast = _decode_columns(values, max_bytes)
    return fast if fast is not None else decode_each(values, max_bytes)


def decode_each(values: list[bytes], max_bytes: int = MAX_VALUE_BYTES) -> EventBatch:
    """:func:`decode_batch` one record at a time: the reference behaviour."""
    objs: list[dict[str, Any]] = []
    index: list[int] = []
    rejected: list[Rejected] = []
    for i, value in enumerate(values):
        try:
            objs.append(validate(value, max_bytes))
            index.append(i)
        except InvalidEvent as exc:
            rejected.append(Rejected(i, exc.reason, exc.detail))
    return _columns(objs, index, rejected)


def _columns(objs: list[dict[str, Any]], index, rejected: list[Rejected]) -> EventBatch:
    contexts = [o.get("context") for o in objs]
    return EventBatch(
        index=np.asarray(index, dtype=np.int64),
        user_id=[o["user_id"] for o in objs],
        video_id=[o["video_id"] for o in objs],
        play_ms=np.fromiter((o["play_ms"] for o in objs), np.int64, len(objs)),
        duration_ms=np.fromiter((o["duration_ms"] for o in objs), np.int64, len(objs)),
        ts_ms=np.fromiter((o["ts_ms"] for o in objs), np.int64, len(objs)),
        explicit=_explicit_column(contexts),
        context=contexts,
        rejected=rejected,
    )


def _explicit_column(contexts: list[dict[str, Any] | None]) -> np.ndarray:
    values = [None if c is None else c.get("explicit") for c in contexts]
    return np.array([float(v) if v in (0, 1) and type(v) is not float else np.nan
                     for v in values], dtype=np.float32)


class _Missing:
    """Stands for an absent field in a column."""


_MISSING = _Missing()
_RANGES = {"play_ms": (0, 2**63 - 1), "duration_ms": (1, MAX_DURATION_MS), "ts_ms": (0, MAX_TS_MS)}
_SHORT_ID = MAX_ID_BYTES // 4  # a str of at most this many characters fits in MAX_ID_BYTES


def _int_column(column: list) -> np.ndarray | None:
    """``column`` as int64 if every value is a plain int within 64 bits, else None."""
    if set(map(type, column)) != {int}:
        return None
    try:
        array = np.array(column)
    except OverflowError:
        return None
    return array if array.dtype == np.int64 else None


def _id_suspects(column: list) -> np.ndarray | None:
    """Rows of an id column to check one by one; None if the column needs the slow path."""
    kinds = set(map(type, column))
    if kinds == {int}:
        return None if _int_column(column) is None else np.zeros(len(column), bool)
    if not kinds <= {int, str}:
        return None
    if int in kinds and _int_column([v for v in column if type(v) is int]) is None:
        return None
    lengths = np.fromiter((len(v) if type(v) is str else 1 for v in column), np.int64,
                          len(column))
    return (lengths == 0) | (lengths > _SHORT_ID)


def _decode_columns(values: list[bytes], max_bytes: int) -> EventBatch | None:
    """The column-at-a-time path of :func:`decode_batch`; None where it does not apply."""
    if not values or None in values or max(map(len, values)) > max_bytes:
        return None
    try:
        objs = list(map(orjson.loads, values))
    except (orjson.JSONDecodeError, TypeError):
        return None
    if set(map(type, objs)) != {dict}:
        return None
    n = len(objs)
    suspect = np.zeros(n, bool)
    ids = {}
    for name in ("user_id", "video_id"):
        ids[name] = column = [o.get(name, _MISSING) for o in objs]
        rows = _id_suspects(column)
        if rows is None:
            return None
        suspect |= rows
    numbers = {}
    for name, (low, high) in _RANGES.items():
        numbers[name] = array = _int_column([o.get(name, _MISSING) for o in objs])
        if array is None:
            return None
        suspect |= (array < low) | (array > high)
    event_ids = [o.get("event_id", _MISSING) for o in objs]
    kinds = set(map(type, event_ids))
    if not kinds <= {_Missing, str}:
        return None
    if str in kinds:
        suspect |= np.fromiter((type(e) is str and len(e) > _SHORT_ID for e in event_ids),
                               bool, n)
    contexts = [o.get("context") for o in objs]
    if not set(map(type, contexts)) <= {type(None), dict}:
        return None
    rejected = []
    for i in np.flatnonzero(suspect).tolist():
        try:
            check_object(objs[i])
            suspect[i] = False
        except InvalidEvent as exc:
            rejected.append(Rejected(i, exc.reason, exc.detail))
    if rejected:
        keep = np.flatnonzero(~suspect)
        rows = keep.tolist()
        ids = {name: [column[i] for i in rows] for name, column in ids.items()}
        numbers = {name: array[keep] for name, array in numbers.items()}
        contexts = [contexts[i] for i in rows]
    else:
        keep = np.arange(n)
    return EventBatch(
        index=keep.astype(np.int64), user_id=ids["user_id"], video_id=ids["video_id"],
        play_ms=numbers["play_ms"], duration_ms=numbers["duration_ms"], ts_ms=numbers["ts_ms"],
        explicit=_explicit_column(contexts), context=contexts, rejected=rejected,
    )
