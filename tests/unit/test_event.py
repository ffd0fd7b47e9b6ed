"""Validation of each field rule of the wire event."""

import orjson
import pytest

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
    assert batch.explicit.tolist() == [1.0] and batch.context[0]["hour"] == 3


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
