"""The compiled scanner: it takes the ordinary records, and decoding gives the same as the
one-record-at-a-time reference whether the scanner or the general path read a record."""

import json

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.event import decode_batch, decode_each
from stream.scan import scan

from .test_event import _same

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                        allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
_KEYS = ["user_id", "video_id", "play_ms", "duration_ms", "ts_ms", "event_id", "context",
         "explicit", "x", "user_idx", "user", "u", "explicitly", "e", "video_i"]  # and look-alikes
# bytes that change what a record means: structure, escapes, number syntax, non-ASCII
_BYTES = [b" ", b"\t", b'"', b"\\", b",", b":", b"{", b"}", b"[", b"]", b"-", b"+", b".",
          b"e", b"E", b"0", b"1", b"9", b"\x00", b"\x7f", b"\xc3", b"t", b"n", b"u"]


@st.composite
def _event(draw) -> bytes:
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4)
    ids = (st.integers(-5, 10**6) | ascii_text | st.text(max_size=3)
           | st.text(st.sampled_from("ab"), min_size=126, max_size=130))
    record = {"user_id": draw(ids), "video_id": draw(ids),
              "play_ms": draw(st.integers(-2, 10**6)), "duration_ms": draw(st.integers(-1, 10**6)),
              "ts_ms": draw(st.integers(0, 2**45))}
    if draw(st.booleans()):
        record["event_id"] = draw(st.text(max_size=140) | st.integers())
    if draw(st.booleans()):
        record["context"] = draw(st.none() | st.dictionaries(
            st.sampled_from(["explicit", "hour", "a", "explicit_", "expl", "user_id"]), _JSON,
            max_size=3))
    for _ in range(draw(st.integers(0, 2))):  # other fields, some of them repeated known ones
        record[draw(st.sampled_from(_KEYS))] = draw(_JSON)
    items = list(record.items())
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    if draw(st.booleans()) and items:  # a field twice
        items.append(items[draw(st.integers(0, len(items) - 1))])
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), ("\n,", ":\t")]))
    text = "{" + separators[0].join(
        json.dumps(k) + separators[1] + json.dumps(v, ensure_ascii=draw(st.booleans()))
        for k, v in items) + "}"
    value = text.encode()
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        at = draw(st.integers(0, len(value)))
        cut = draw(st.integers(0, 1))
        value = value[:at] + draw(st.sampled_from(_BYTES)) + value[at + cut:]
    return value


@given(st.lists(_event(), min_size=1, max_size=30))
@settings(max_examples=400, deadline=None)
def test_scanned_or_not_a_batch_decodes_as_record_by_record(values):
    _same(decode_batch(values), decode_each(values))


def test_ordinary_records_are_scanned():
    base = {"user_id": 4854, "video_id": 3431182, "play_ms": 19435, "duration_ms": 18983,
            "ts_ms": 1649346288441, "event_id": "kuairand:19944",
            "context": {"explicit": 1, "hour": 23, "tags": [1, 2.5, None, True, {"a": []}]}}
    values = [orjson.dumps(base), json.dumps(base, indent=2).encode(),
              orjson.dumps({**base, "context": None}), orjson.dumps({**base, "user_id": -3}),
              orjson.dumps({**base, "play_ms": -1}),  # out of range: scanned, then rejected
              orjson.dumps({**base, "user_id": "u-4854", "video_id": "v" * 128})]
    read = scan(values, 65536)
    assert read.ok.all()
    assert read.ints[0].tolist() == [4854, 3431182, 19435, 18983, 1649346288441]
    assert np.array_equal(read.explicit, [1, 1, np.nan, 1, 1, 1], equal_nan=True)
    batch = decode_batch(values)
    assert [r.reason.value for r in batch.rejected] == ["out_of_range"]
    assert batch.user_id == [4854, 4854, 4854, -3, "u-4854"]
    assert batch.video_id == [3431182] * 4 + ["v" * 128]


def test_what_the_scanner_leaves_to_the_general_path():
    def record(**fields) -> bytes:
        good = {"user_id": 1, "video_id": 2, "play_ms": 3, "duration_ms": 4, "ts_ms": 5}
        return json.dumps({**good, **fields}).encode()

    unusual = [
        record(user_id=""),  # an empty id
        record(video_id="v" * 129),  # a long id
        record(event_id='a"b'),  # an escape
        record(event_id="é"),  # ASCII only (json.dumps escapes it: a backslash)
        b'{"user_id":1,"video_id":2,"play_ms":3,"duration_ms":4,"ts_ms":5,"x":"\xc3\xa9"}',
        record(play_ms=3.0),  # a float where an integer goes
        record(x=1e300),  # a three-digit exponent
        record(ts_ms=10**18),  # 19 digits
        record(x=0).replace(b'"x": 0', b'"x": ' + b"[" * 70 + b"]" * 70),  # 64 deep or more
        b'{"user_id":1,"user_id":1,"video_id":2,"play_ms":3,"duration_ms":4,"ts_ms":5}',
        record(event_id="e" * 129),
        record(context=5),
        record()[:-1],  # cut short
        record() + b"x",
    ]
    assert not scan(unusual, 65536).ok.any()
    assert scan([record()], 10).ok.tolist() == [False]  # over max_bytes
    _same(decode_batch(unusual + [record()]), decode_each(unusual + [record()]))


def test_records_rejected_by_range_come_in_input_order():
    # the scanner's path rejects a column at a time: play_ms first, then duration_ms (found by
    # hypothesis: the reference rejects in input order)
    values = [orjson.dumps({"user_id": 1, "video_id": 2, "play_ms": 5, "duration_ms": 0,
                            "ts_ms": 1}),
              orjson.dumps({"user_id": 1, "video_id": 2, "play_ms": -1, "duration_ms": 10,
                            "ts_ms": 1})]
    assert [r.index for r in decode_batch(values).rejected] == [0, 1]
    _same(decode_batch(values), decode_each(values))
