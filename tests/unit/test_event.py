"""Validation of each field rule of the wire event."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.event import MAX_DURATION_MS, Reason, decode_batch

GOOD = {
    "user_id": 7, "video_id": "v1", "play_ms": 1500, "duration_ms": 3000,
    "ts_ms": 1_650_000_000_000,
}


def reason_of(value: bytes, **kw) -> Reason | None:
    batch = decode_batch([value], **kw)
    assert len(batch) + len(batch.rejected) == 1
    return batch.rejected[0].reason if batch.rejected else None


def with_(**changes) -> bytes:
    event = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


def test_valid_event_decodes_to_columns():
    batch = decode_batch([with_(context={"explicit": 1, "hour": 3}, event_id="e1")])
    assert batch.user_id == [7] and batch.video_id == ["v1"]
    assert batch.play_ms.tolist() == [1500] and batch.duration_ms.tolist() == [3000]
    assert batch.explicit.tolist() == [1.0] and batch.ts_ms.tolist() == [GOOD["ts_ms"]]


def test_unknown_fields_are_ignored():
    assert reason_of(with_(extra=[1, 2, 3])) is None


@pytest.mark.parametrize("field", ["user_id", "video_id", "play_ms", "duration_ms", "ts_ms"])
def test_missing_required_field(field):
    assert reason_of(with_(**{field: ...})) is Reason.MISSING_FIELD


@pytest.mark.parametrize(
    "field,value",
    [
        ("user_id", 1.5), ("user_id", None), ("user_id", [1]), ("user_id", True),
        ("video_id", {"a": 1}), ("play_ms", "100"), ("play_ms", 1.0), ("play_ms", False),
        ("duration_ms", None), ("ts_ms", "2022-01-01"), ("event_id", 5), ("context", [1]),
    ],
)
def test_wrong_types(field, value):
    assert reason_of(with_(**{field: value})) is Reason.WRONG_TYPE


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("play_ms", -1, Reason.OUT_OF_RANGE),
        ("play_ms", 0, None),
        ("duration_ms", 0, Reason.OUT_OF_RANGE),
        ("duration_ms", 1, None),
        ("duration_ms", MAX_DURATION_MS, None),
        ("duration_ms", MAX_DURATION_MS + 1, Reason.OUT_OF_RANGE),
        ("ts_ms", -5, Reason.OUT_OF_RANGE),
        ("user_id", "", Reason.OUT_OF_RANGE),
        ("user_id", "x" * 128, None),
        ("user_id", "x" * 129, Reason.ID_TOO_LONG),
        ("video_id", "é" * 64, None),  # 128 bytes in UTF-8
        ("video_id", "é" * 65, Reason.ID_TOO_LONG),
        ("event_id", "e" * 129, Reason.ID_TOO_LONG),
        ("user_id", -(2**63), None),
    ],
)
def test_ranges(field, value, reason):
    assert reason_of(with_(**{field: value})) is reason


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"", Reason.NOT_JSON),
        (b"\xff\xfe garbage", Reason.NOT_JSON),
        (b'{"user_id": 1, "video_id"', Reason.NOT_JSON),
        (b'{"play_ms": NaN}', Reason.NOT_JSON),
        (b'{"play_ms": Infinity}', Reason.NOT_JSON),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b"42", Reason.NOT_OBJECT),
        (b"null", Reason.NOT_OBJECT),
        (None, Reason.NOT_JSON),
    ],
)
def test_not_an_event(raw, reason):
    assert reason_of(raw) is reason


def test_oversized_record_is_invalid_whatever_it_holds():
    big = with_(context={"pad": "x" * 70_000})
    assert reason_of(big) is Reason.TOO_LARGE
    assert reason_of(big, max_bytes=1 << 20) is None
    assert reason_of(with_(), max_bytes=10) is Reason.TOO_LARGE


def test_batch_keeps_input_positions():
    batch = decode_batch([with_(), b"bad", with_(user_id="u"), b"[]"])
    assert batch.index.tolist() == [0, 2]
    assert [(r.index, r.reason) for r in batch.rejected] == [
        (1, Reason.NOT_JSON), (3, Reason.NOT_OBJECT)
    ]


def test_explicit_only_from_zero_or_one():
    values = [with_(context={"explicit": v}) for v in (0, 1, 2, "1", 0.5, None)] + [with_()]
    assert [x if x == x else None for x in decode_batch(values).explicit.tolist()] == [
        0.0, 1.0, None, None, None, None, None
    ]


def _same(a, b) -> None:
    assert a.index.tolist() == b.index.tolist()
    assert a.user_id == b.user_id and a.video_id == b.video_id
    for name in ("play_ms", "duration_ms", "ts_ms"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist()
    assert np.array_equal(a.explicit, b.explicit, equal_nan=True)
    assert a.rejected == b.rejected


_VALUES = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65), st.booleans(), st.none(),
    st.floats(allow_nan=False), st.text(max_size=40), st.text(min_size=30, max_size=140),
    st.just(""), st.dictionaries(st.sampled_from(["explicit", "hour"]), st.integers(-1, 2)),
)
_FIELDS = ["user_id", "video_id", "play_ms", "duration_ms", "ts_ms", "event_id", "context"]


@st.composite
def _record(draw) -> bytes:
    good = {"user_id": draw(st.integers(0, 10**6) | st.text(min_size=1, max_size=10)),
            "video_id": draw(st.integers(0, 10**6)), "play_ms": draw(st.integers(0, 10**6)),
            "duration_ms": draw(st.integers(0, 10**6)), "ts_ms": draw(st.integers(0, 2**45)),
            "context": {"explicit": draw(st.integers(0, 1))}}
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return orjson.dumps(good)
    if kind == 6:
        good[draw(st.sampled_from(_FIELDS))] = draw(_VALUES)
        return json.dumps(good).encode()  # the standard library writes ints of any size
    if kind == 7:
        del good[draw(st.sampled_from(_FIELDS[:5]))]
        return orjson.dumps(good)
    return draw(st.sampled_from([b"nope", b"[1]", b"null", b'"x"', b"{}", b"x" * 70_000]))


@given(st.lists(_record(), min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_column_path_and_record_path_agree(values):
    from stream.event import decode_each

    _same(decode_batch(values), decode_each(values))


def test_the_bulk_range_checks_give_the_reason_and_detail_of_the_first_check_that_fails():
    from stream.event import decode_each

    def record(**fields) -> bytes:
        good = {"user_id": 1, "video_id": 2, "play_ms": 3, "duration_ms": 4, "ts_ms": 5}
        return json.dumps({**good, **fields}).encode()

    values = [
        record(),
        record(duration_ms=0),  # one number out of range
        record(play_ms=-1, duration_ms=0, ts_ms=-1),  # three: play_ms is checked first
        record(user_id="", duration_ms=0),  # the id is checked before the numbers
        record(video_id="v" * 200, ts_ms=-5),
        record(event_id="e" * 200, duration_ms=0),  # numbers before the event id
        record(event_id="e" * 200),
        record(user_id=2**70, duration_ms=0),
        record(ts_ms=2**70),  # over 64 bits: the column is no int64 array
        record(duration_ms=10**9),
    ]
    batch = decode_batch(values)
    _same(batch, decode_each(values))
    assert [(r.index, r.reason.value, r.detail) for r in batch.rejected] == [
        (1, "out_of_range", "duration_ms=0 outside [1, 86400000]"),
        (2, "out_of_range", "play_ms=-1 outside [0, 9223372036854775807]"),
        (3, "out_of_range", "user_id is empty"),
        (4, "id_too_long", "video_id longer than 128 bytes"),
        (5, "out_of_range", "duration_ms=0 outside [1, 86400000]"),
        (6, "id_too_long", "event_id longer than 128 bytes"),
        (7, "out_of_range", "user_id outside 64-bit range"),
        (8, "out_of_range", f"ts_ms={2**70} outside [0, 32503680000000]"),
        (9, "out_of_range", "duration_ms=1000000000 outside [1, 86400000]"),
    ]
    assert batch.index.tolist() == [0]


def test_clean_batch_takes_the_column_path():
    from stream.event import _decode_columns

    values = [orjson.dumps({"user_id": i, "video_id": "v" * 40, "play_ms": 5,
                            "duration_ms": 10 * (i % 3), "ts_ms": 1}) for i in range(9)]
    fast = _decode_columns(values, 65536)
    assert fast is not None and len(fast) == 6  # duration 0 is out of range
    assert {r.reason.value for r in fast.rejected} == {"out_of_range"}


_BASE = b'{"user_id":1,"video_id":2,"play_ms":3,"duration_ms":4,"ts_ms":5,%s}'


@pytest.mark.parametrize("fragment, reason", [
    # what msgspec skips unchecked: orjson's rule decides (strict UTF-8, finite doubles)
    (b'"x":"\xff"', "not_json"), (b'"x":"\xc0\xaf"', "not_json"),
    (b'"x":"\xed\xa0\x80"', "not_json"), (b'"x":"\x7f\x80"', "not_json"),
    (b'"x":1e400', "not_json"), (b'"x":1.7976931348623157e309', "not_json"),
    (b'"context":{"a":1E400}', "not_json"), (b'"x":' + b"9" * 400, "not_json"),
    (b'"x":1E+400', "not_json"), (b'"x":[1e+309]', "not_json"),
    (b'"x":' + b"9" * 300 + b"e9", "not_json"), (b'"x":"\\ud800"', "not_json"),
    # valid, some of them not plain (orjson reads them)
    (b'"x":1e-400', None), (b'"x":1e300', None), (b'"x":123456789012345678901234567890', None),
    (b'"x":"\xc3\xa9"', None), (b'"context":{"explicit":1,"a":"\xf0\x9f\x98\x80"}', None),
    # nesting: orjson reads 1,024 levels (msgspec fewer)
    (b'"x":' + b"[" * 1022 + b"]" * 1022, None),
    (b'"x":' + b"[" * 1024 + b"]" * 1024, "not_json"),
])
def test_json_is_what_orjson_reads_in_the_fields_dwell_skips_too(fragment, reason):
    value = _BASE % fragment
    assert reason_of(value) == (None if reason is None else Reason(reason))
    batch = decode_batch([with_(), value, with_(user_id="u")])  # among plain records
    assert [r.reason.value for r in batch.rejected] == ([] if reason is None else [reason])
    assert batch.index.tolist() == ([0, 1, 2] if reason is None else [0, 2])
