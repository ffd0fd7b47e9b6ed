"""The dwell event on the wire: decoding and validation of Kafka record values.

A record value is a JSON object with the fields of the design's table. :func:`decode_batch`
turns a list of raw values into an :class:`EventBatch` of columns plus the list of records
it rejected, each with a bounded :class:`Reason` (a metric label) and a human-readable
detail (for the dead-letter record).

Ordinary records (integer or short string ids, plain JSON: :mod:`stream.scan`) are read by
one compiled pass straight into columns, ~0.55 us a record with the column checks. The others
are parsed by msgspec into a typed struct (:class:`Wire`): the types are checked in C as the
JSON is read, and of ``context`` only ``explicit`` and ``tab`` are built (the other free
features are parsed and skipped: a backbone that reads one adds it to :class:`Context` and
to the scanner). That is ~1.2 us a record, against ~4 us for a dict from
orjson.

What is valid JSON is orjson's rule (strict UTF-8, numbers that fit a double, nesting up to
1,024 deep). msgspec agrees with it except in the content it skips, where it does not check
UTF-8 or number sizes, and it nests less deep. So only *plain* records take msgspec: ASCII,
no digit run of 100 or more, no exponent of three digits, too short or too flat to nest 950
deep (:func:`plain`). The others, and any record the struct does not fit, are parsed by
orjson, and :func:`check_object` says exactly what is wrong. A feed of dwell's producers is
ordinary throughout; the general path's batch is screened at once (:mod:`stream.screen`).

>>> batch = decode_batch([b'{"user_id": 1, "video_id": "v", "play_ms": 5, '
...                       b'"duration_ms": 10, "ts_ms": 0}', b'nope'])
>>> len(batch), batch.rejected[0].reason.value
(1, 'not_json')
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson

from stream.scan import MAX_TAB, Scanned, scan
from stream.screen import all_plain, plain

MAX_VALUE_BYTES = 64 * 1024
MAX_ID_BYTES = 128
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_TS_MS = 32_503_680_000_000  # year 3000: anything later is a unit error, not an event time

REQUIRED = ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms")
_RANGES = {"play_ms": (0, 2**63 - 1), "duration_ms": (1, MAX_DURATION_MS), "ts_ms": (0, MAX_TS_MS)}
_SHORT_ID = MAX_ID_BYTES // 4  # a str of at most this many characters fits in MAX_ID_BYTES


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


class Rejected(NamedTuple):
    """One rejected record: its index in the decoded input, the reason and a detail (a tuple:
    a frozen dataclass cost ~0.5 us more a record to build)."""

    # the field shadows tuple.index, which mypy reports as an incompatible override
    index: int  # type: ignore[assignment]
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
    tab: np.ndarray  # int64: the app surface (context.tab), 0..MAX_TAB; -1 for none
    rejected: list[Rejected] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_id)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass and is not a valid count


def _check_id(value: Any, name: str) -> str | int:
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


#: The id rule, for whoever else takes user and video ids (the serving API's requests).
check_id = _check_id


def _check_int(value: Any, name: str, low: int, high: int) -> int:
    if not _is_int(value):
        raise InvalidEvent(Reason.WRONG_TYPE, f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidEvent(Reason.OUT_OF_RANGE, f"{name}={value} outside [{low}, {high}]")
    return value


class Context(msgspec.Struct, gc=False):
    """The part of an event's ``context`` the learner reads; other fields are skipped."""

    explicit: Any = None
    tab: Any = None


class Wire(msgspec.Struct, gc=False):
    """An event as msgspec parses it: the types of the design's table, ranges unchecked."""

    user_id: int | str
    video_id: int | str
    play_ms: int
    duration_ms: int
    ts_ms: int
    event_id: str | msgspec.UnsetType = msgspec.UNSET
    context: Context | None = None


_DECODER = msgspec.json.Decoder(Wire)


def validate(value: bytes | None, max_bytes: int = MAX_VALUE_BYTES) -> Wire:
    """Parse and validate one record value; return the event or raise InvalidEvent."""
    if value is None:
        raise InvalidEvent(Reason.NOT_JSON, "empty record value (tombstone)")
    if len(value) > max_bytes:
        raise InvalidEvent(Reason.TOO_LARGE, f"{len(value)} bytes > {max_bytes}")
    if not plain(value):
        return _wire(check_object(_loads(value)))
    try:
        wire = _DECODER.decode(value)
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        check_object(_loads(value))
        raise InvalidEvent(Reason.WRONG_TYPE, str(exc)[:200]) from None  # nothing found
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidEvent(Reason.NOT_JSON, str(exc)[:200]) from None
    check_wire(wire)
    return wire


def _loads(value: bytes) -> Any:
    """The JSON value of ``value`` as orjson reads it, or InvalidEvent (not JSON)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(Reason.NOT_JSON, str(exc)[:200]) from None


def _wire(obj: dict[str, Any]) -> Wire:
    """A checked JSON object (:func:`check_object`) as the struct msgspec would give."""
    user_id, video_id, play_ms, duration_ms, ts_ms = (obj[name] for name in REQUIRED)
    context = obj.get("context")
    return Wire(user_id, video_id, play_ms, duration_ms, ts_ms, obj.get("event_id", msgspec.UNSET),
                None if context is None else Context(context.get("explicit"), context.get("tab")))


def check_wire(wire: Wire) -> None:
    """Validate the ranges and lengths of a parsed event (its types are msgspec's); raise
    InvalidEvent. The same checks, in the same order, as :func:`check_object`'s."""
    _check_fields(wire.user_id, wire.video_id, wire.play_ms, wire.duration_ms, wire.ts_ms,
                  wire.event_id)


def _check_fields(user_id: Any, video_id: Any, play_ms: Any, duration_ms: Any, ts_ms: Any,
                  event_id: Any) -> None:
    _check_id(user_id, "user_id")
    _check_id(video_id, "video_id")
    for value, (name, (low, high)) in zip((play_ms, duration_ms, ts_ms), _RANGES.items(),
                                          strict=True):
        _check_int(value, name, low, high)
    if event_id is not msgspec.UNSET:
        if type(event_id) is not str:
            raise InvalidEvent(Reason.WRONG_TYPE, "event_id must be a string")
        if len(event_id.encode()) > MAX_ID_BYTES:
            raise InvalidEvent(Reason.ID_TOO_LONG, f"event_id longer than {MAX_ID_BYTES} bytes")


def check_object(obj: Any) -> dict[str, Any]:
    """Validate a parsed record value; return it or raise InvalidEvent."""
    if type(obj) is not dict:
        raise InvalidEvent(Reason.NOT_OBJECT, f"top level is {type(obj).__name__}")
    missing = [name for name in REQUIRED if name not in obj]
    if missing:
        raise InvalidEvent(Reason.MISSING_FIELD, ",".join(missing))
    user_id, video_id, play_ms, duration_ms, ts_ms = (obj[name] for name in REQUIRED)
    _check_fields(user_id, video_id, play_ms, duration_ms, ts_ms,
                  obj.get("event_id", msgspec.UNSET))
    context = obj.get("context")
    if context is not None and type(context) is not dict:
        raise InvalidEvent(Reason.WRONG_TYPE, "context must be an object")
    return obj


def decode_batch(values: list[bytes], max_bytes: int = MAX_VALUE_BYTES) -> EventBatch:
    """Decode and validate raw record values into columns; invalid ones go to ``rejected``.

    Ordinary records (:mod:`stream.scan`: integer ids, plain JSON) are read by one compiled
    pass straight into columns; the others are parsed by msgspec into a :class:`Wire`. The
    ranges are checked a column at a time (numpy); only the records that fail to parse
    (:func:`validate` gives their exact reason) or look unusual (long ids, out-of-range
    numbers: :func:`check_wire`) are checked one by one, as are records that are not
    :func:`plain`. It gives what :func:`decode_each` gives (``tests/unit/test_event.py``
    checks it on random hostile batches).
    """
    try:
        read = scan(values, max_bytes, MAX_ID_BYTES)
    except TypeError:  # a None (tombstone) among the values: the general path says so
        return _decode_columns(values, max_bytes)
    if not read.ok.all():
        return _with_unusual(values, max_bytes, read)
    return _scanned(read, np.arange(len(values)))


def _scanned(read: Scanned, positions: np.ndarray) -> EventBatch:
    """The batch of the scanned records at input ``positions``, their ranges checked."""
    rejected: list[Rejected] = []
    numbers = [read.ints[positions, k] for k in (2, 3, 4)]
    failed = _reject_ranges(numbers, positions, rejected)
    if failed.any():
        rejected.sort(key=lambda r: r.index)  # rejected a column at a time: in input order
        positions = positions[~failed]
        numbers = [array[~failed] for array in numbers]
    user_id, video_id = read.ids(positions)
    return EventBatch(index=positions, user_id=user_id, video_id=video_id,
                      play_ms=numbers[0], duration_ms=numbers[1], ts_ms=numbers[2],
                      explicit=read.explicit[positions], tab=read.tab[positions],
                      rejected=rejected)


def _with_unusual(values: list[bytes], max_bytes: int, read: Scanned) -> EventBatch:
    """The scanned records, and the others through the general path, merged in input order."""
    scanned = _scanned(read, np.flatnonzero(read.ok))
    others = np.flatnonzero(~read.ok)
    general = _decode_columns([values[i] for i in others.tolist()], max_bytes)
    general.index = others[general.index]
    rejected = scanned.rejected + [r._replace(index=int(others[r.index]))
                                   for r in general.rejected]
    rejected.sort(key=lambda r: r.index)
    index = np.concatenate([scanned.index, general.index])
    order = np.argsort(index, kind="stable")
    rows = order.tolist()
    ids = [[column[j] for j in rows] for column in (scanned.user_id + general.user_id,
                                                    scanned.video_id + general.video_id)]
    return EventBatch(
        index=index[order], user_id=ids[0], video_id=ids[1],
        **{name: np.concatenate([getattr(scanned, name), getattr(general, name)])[order]
           for name in ("play_ms", "duration_ms", "ts_ms", "explicit", "tab")},
        rejected=rejected,
    )


def decode_each(values: list[bytes], max_bytes: int = MAX_VALUE_BYTES) -> EventBatch:
    """:func:`decode_batch` one record at a time: the reference behaviour."""
    wires: list[Wire] = []
    index: list[int] = []
    rejected: list[Rejected] = []
    for i, value in enumerate(values):
        try:
            wires.append(validate(value, max_bytes))
            index.append(i)
        except InvalidEvent as exc:
            rejected.append(Rejected(i, exc.reason, exc.detail))
    return _columns(np.asarray(index, dtype=np.int64), rejected, _fields(wires))


_FIELDS = tuple(map(operator.attrgetter, Wire.__struct_fields__))


def _fields(wires: list[Wire]) -> list[list]:
    """The events' fields (:class:`Wire`'s order) as lists, one C-level pass each."""
    return [list(map(get, wires)) for get in _FIELDS]


def _columns(index: np.ndarray, rejected: list[Rejected], fields: list[list],
             numbers: list[np.ndarray] | None = None) -> EventBatch:
    """The batch of these events' ``fields`` (:func:`_fields`); ``numbers``: their
    ``play_ms``, ``duration_ms`` and ``ts_ms`` as int64 arrays, when made already."""
    user_id, video_id, play_ms, duration_ms, ts_ms, _event_id, contexts = fields
    if numbers is None:
        numbers = [np.array(column, np.int64) for column in (play_ms, duration_ms, ts_ms)]
    return EventBatch(
        index=index, user_id=user_id, video_id=video_id,
        play_ms=numbers[0], duration_ms=numbers[1], ts_ms=numbers[2],
        explicit=_explicit_column([None if c is None else c.explicit for c in contexts]),
        tab=_tab_column([None if c is None else c.tab for c in contexts]),
        rejected=rejected,
    )


def _explicit_column(values: list[Any]) -> np.ndarray:
    return np.array([float(v) if v in (0, 1) and type(v) is not float else np.nan
                     for v in values], dtype=np.float32)


def _tab_column(values: list[Any]) -> np.ndarray:
    return np.array([v if type(v) is int and 0 <= v <= MAX_TAB else -1 for v in values],
                    dtype=np.int64)




def _int_column(column: list) -> np.ndarray | None:
    """``column`` (ints) as int64 if every value fits in 64 bits, else None."""
    try:
        array = np.array(column)
    except OverflowError:
        return None
    return array if array.dtype == np.int64 else None


def _id_odd(column: list) -> np.ndarray:
    """Rows of an id column (ints and strs) that may be out of range: empty, long, huge."""
    kinds = set(map(type, column))
    if kinds == {int} and _int_column(column) is not None:
        return np.zeros(len(column), bool)
    lengths = _lengths(column, kinds)
    odd = (lengths > _SHORT_ID) | (lengths == 0)
    return odd | _huge(column) if int in kinds else odd


def _lengths(column: list, kinds: set[type] | None = None) -> np.ndarray:
    """Lengths of the strs of a column; 1 for anything else. ``kinds``: the types the column
    holds, when known already."""
    if (set(map(type, column)) if kinds is None else kinds) <= {str}:
        return np.fromiter(map(len, column), np.int64, len(column))
    return np.fromiter((len(v) if type(v) is str else 1 for v in column), np.int64,
                       len(column))


def _long(column: list) -> np.ndarray:
    """Rows of a column holding strs that may be longer than MAX_ID_BYTES."""
    return _lengths(column) > _SHORT_ID


def _huge(column: list) -> np.ndarray:
    """Rows of a column holding ints outside 64 bits."""
    odd = np.zeros(len(column), bool)
    ints = [i for i, v in enumerate(column) if type(v) is int]
    if ints and _int_column([column[i] for i in ints]) is None:
        odd[ints] = True
    return odd


_new_tuple = tuple.__new__  # Rejected(...) without NamedTuple's Python-level __new__


def _reject_ranges(numbers: list[np.ndarray], positions: np.ndarray, rejected: list[Rejected],
                   exempt: np.ndarray | None = None) -> np.ndarray:
    """:func:`check_wire`'s range checks of the three number columns (int64 arrays), a column
    at a time: each failing row not ``exempt`` is rejected (into ``rejected``, at its input
    position from ``positions``) with the reason and detail of its first field out of range,
    and no exception raised. Returns the rows that failed, exempt or not."""
    failed = np.zeros(positions.size, bool)
    for (name, (low, high)), array in zip(_RANGES.items(), numbers, strict=True):
        first = ((array < low) | (array > high)) & ~failed  # check_wire's first failure
        failed |= first
        rows = np.flatnonzero(first if exempt is None else first & ~exempt)
        if rows.size:  # C-level maps: ~0.25 us a rejection, against ~0.6 for a generator's
            detail = f"{name}={{}} outside [{low}, {high}]".format
            rejected.extend(map(_new_tuple, repeat(Rejected), zip(
                positions[rows].tolist(), repeat(Reason.OUT_OF_RANGE),
                map(detail, array[rows].tolist()))))
    return failed


def _out_of_range(fields: list[list], parsed: np.ndarray,
                  rejected: list[Rejected]) -> tuple[np.ndarray, np.ndarray, list | None]:
    """The range checks of :func:`check_wire`, a column at a time, on the parsed events'
    ``fields``. Rejects (:func:`_reject_ranges`) the events with ordinary ids and a number
    out of range. Returns the rows to reject or check one by one (odd ids, a long event id,
    a number over 64 bits: :func:`check_wire` says), the rows rejected here, and the three
    number columns as int64 arrays (None where one does not fit)."""
    n = len(fields[0])
    odd = _id_odd(fields[0]) | _id_odd(fields[1])
    numbers = [array for array in map(_int_column, fields[2:5]) if array is not None]
    if len(numbers) < 3:
        return np.ones(n, bool), np.zeros(n, bool), None
    failed = _reject_ranges(numbers, parsed, rejected, exempt=odd)
    bulk = failed & ~odd
    return odd | (_long(fields[5]) & ~failed), bulk, numbers


def _decode_columns(values: list[bytes], max_bytes: int) -> EventBatch:
    """:func:`decode_batch`'s work: the plain records parsed by msgspec, their ranges checked
    a column at a time, and only the records that fail, look odd or are not plain validated
    one by one."""
    n = len(values)
    try:
        longest = max(map(len, values)) if n else 0
        if longest > max_bytes or (n and not all_plain(values, longest)):
            raise TypeError
        wires = list(map(_DECODER.decode, values))
        parsed = np.arange(n)
    except (TypeError, msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        wires, decoded = [], []
        for i, value in enumerate(values):
            if value is None or len(value) > max_bytes or not plain(value):
                continue
            try:
                wires.append(_DECODER.decode(value))
                decoded.append(i)
            except (msgspec.DecodeError, RecursionError):
                pass
        parsed = np.asarray(decoded, dtype=np.int64)
    rejected, others = [], []
    unparsed = [] if len(parsed) == n else np.setdiff1d(np.arange(n), parsed,
                                                         assume_unique=True).tolist()
    for i in unparsed:
        try:
            others.append((i, validate(values[i], max_bytes)))
        except InvalidEvent as exc:
            rejected.append(Rejected(i, exc.reason, exc.detail))
    fields = _fields(wires)
    one_by_one, bulk, numbers = _out_of_range(fields, parsed, rejected)
    keep = ~(one_by_one | bulk)
    for j in np.flatnonzero(one_by_one).tolist():
        try:
            check_wire(wires[j])
            keep[j] = True
        except InvalidEvent as exc:
            rejected.append(Rejected(int(parsed[j]), exc.reason, exc.detail))
    rejected.sort(key=lambda r: r.index)
    if others:  # valid records that were not plain: merged back in input order
        rows = sorted([(int(parsed[j]), wires[j]) for j in np.flatnonzero(keep).tolist()]
                      + others, key=lambda row: row[0])
        index = np.array([i for i, _ in rows], dtype=np.int64)
        return _columns(index, rejected, _fields([w for _, w in rows]))
    if not keep.all():
        rows = np.flatnonzero(keep).tolist()
        # the number columns are taken from their arrays where there are arrays
        lists = range(7) if numbers is None else (0, 1, 6)
        fields = [[column[j] for j in rows] if k in lists else column
                  for k, column in enumerate(fields)]
        numbers = None if numbers is None else [array[keep] for array in numbers]
        parsed = parsed[keep]
    return _columns(parsed.astype(np.int64), rejected, fields, numbers)
