"""Hostile input on the real broker, property-based: the learner never crashes, every bad record
reaches the dead-letter topic with a reason, and every good record is learned.

Each hypothesis example writes a shuffled mix of valid events and hostile records (random bytes,
10,000-deep nesting, values over 64 KiB, wrong types, NaN/Infinity literals, enormous numbers, ids
just over 128 bytes, missing and empty fields, bad Unicode, tombstones) to a fresh topic, runs the
learner to the end offsets and checks the counts, the id maps of the model, the dead letters
and their headers. Valid records come from hypothesis (rich values: emoji, RTL and zero-width
ids, ids at exactly 128 bytes, values of exactly 64 KiB, nesting exactly 1024 deep, arbitrary
context) and, for volume, from a seeded generator.

Whether a record is valid is decided here by :func:`oracle`, written from the design's table
("Event on the wire" in the design document, DESIGN.md) with Python's own ``json`` module, not with
``stream.event``. Where the table is silent the oracle adopts these limits:

- JSON as orjson reads it: strict UTF-8, no lone surrogate escapes, no ``NaN``/``Infinity``,
  every number must fit a double, nesting at most 1024 deep;
- integers (ids and counts) fit in a signed 64-bit integer;
- ``ts_ms`` lies in [0, year 3000); an empty string id is invalid;
- ``event_id`` is at most 128 UTF-8 bytes, like the other ids;
- ``"context": null`` means no context, and is valid; ``"event_id": null`` is not a string.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from stream.admin import create_topic, delete_topic
from stream.event import Reason
from tests.integration.helpers import learn_until_end, read_topic

MAX_VALUE = 64 * 1024
MAX_ID = 128
DAY_MS = 24 * 3600 * 1000
TS_MAX = int(datetime(3000, 1, 1, tzinfo=UTC).timestamp()) * 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 1024
REQUIRED = ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms")
COUNTS = {"play_ms": (0, INT64_MAX), "duration_ms": (1, DAY_MS), "ts_ms": (0, TS_MAX)}
REASONS = {r.value for r in Reason}


# -- the oracle ------------------------------------------------------------------------------
class _NotJson(Exception):
    pass


def _reject_constant(name: str):
    raise _NotJson(f"{name} is not JSON")


def _depth(text: str) -> int:
    """Deepest nesting of arrays and objects in ``text``, strings skipped (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse(value: bytes):
    """The JSON value of ``value`` under the rules above; raise _NotJson otherwise."""
    try:
        text = value.decode("utf-8")  # strict: no other encodings, no invalid sequences
    except UnicodeDecodeError as exc:
        raise _NotJson(str(exc)) from None
    if _depth(text) > MAX_DEPTH:
        raise _NotJson("nested too deep")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * MAX_DEPTH))
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits
        raise _NotJson(str(exc)) from None
    finally:
        sys.setrecursionlimit(limit)
    stack = [obj]
    while stack:  # every string valid Unicode, every number a finite double
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _NotJson("lone surrogate") from None
        elif isinstance(item, float) and item in (float("inf"), float("-inf")):
            raise _NotJson("number overflows a double")
        elif type(item) is int:
            try:
                float(item)
            except OverflowError:
                raise _NotJson("number overflows a double") from None
    return obj


def _integer_faults(value, low: int, high: int) -> set[str]:
    if type(value) is not int:  # floats (5.0, 1e2), booleans, strings, null, lists, objects
        return {"wrong_type"}
    if low <= value <= high:
        return set()
    if INT64_MIN <= value <= INT64_MAX:
        return {"out_of_range"}
    # Outside 64 bits a JSON parser may still see an integer (out of range) or a float (type).
    return {"out_of_range", "wrong_type"}


def _id_faults(value) -> set[str]:
    if type(value) is int:
        return _integer_faults(value, INT64_MIN, INT64_MAX)
    if type(value) is not str:
        return {"wrong_type"}
    if value == "":
        return {"out_of_range", "missing_field"}
    return {"id_too_long"} if len(value.encode()) > MAX_ID else set()


def oracle(value: bytes | None) -> frozenset[str]:
    """The reasons a record value may be rejected with; empty when it is a valid event."""
    if value is None:  # a tombstone carries no event
        return frozenset({"not_json"})
    if len(value) > MAX_VALUE:  # invalid whatever it holds
        return frozenset({"too_large"})
    try:
        obj = _parse(value)
    except _NotJson:
        return frozenset({"not_json"})
    if not isinstance(obj, dict):
        return frozenset({"not_object"})
    if any(name not in obj for name in REQUIRED):
        return frozenset({"missing_field"})
    faults = _id_faults(obj["user_id"]) | _id_faults(obj["video_id"])
    for name, (low, high) in COUNTS.items():
        faults |= _integer_faults(obj[name], low, high)
    if "event_id" in obj:
        event_id = obj["event_id"]
        if type(event_id) is not str:
            faults.add("wrong_type")
        elif len(event_id.encode()) > MAX_ID:
            faults.add("id_too_long")
    if obj.get("context") is not None and not isinstance(obj["context"], dict):
        faults.add("wrong_type")
    return frozenset(faults)


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rec:
    kind: str  # which strategy made it, for failure messages
    value: bytes | None
    bad: bool  # invalid by construction; the oracle must agree

    def __repr__(self) -> str:
        shown = self.value if self.value is None or len(self.value) < 120 else (
            self.value[:100] + b"...(%d bytes)" % len(self.value))
        return f"Rec({self.kind}, {shown!r})"


SPECIAL = ["😀", "𝕏", "\u200b", "\u200d", "\u200f", "\u202e", "\ufeff", "\u2028",
           "א", "ب", "é", "中", "\x00", "\x1f", "\n", '"', "\\", "/", "a"]
chars = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(0x20, 0x7E).map(chr),
    st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF).map(chr),
)
texts = st.text(chars, max_size=12)


def _fits(s: str) -> bool:
    return len(s.encode()) <= MAX_ID


def _fill(c: str, nbytes: int) -> str:
    """``"a" * k + c`` of exactly ``nbytes`` UTF-8 bytes: the last character multi-byte."""
    return "a" * (nbytes - len(c.encode())) + c


def _over(s: str) -> str:
    """``s`` repeated until it is just over the id limit."""
    return s * (MAX_ID // len(s.encode()) + 1)


FAMILY = "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # one glyph, 5 code points, 18 bytes
MULTI_BYTE = [c for c in SPECIAL if len(c.encode()) > 1] + [FAMILY]
ids = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, -1, INT64_MIN, INT64_MAX]),
    st.text(chars, min_size=1, max_size=32).filter(_fits),
    st.sampled_from(MULTI_BYTE).map(lambda c: c * (MAX_ID // len(c.encode()))),  # at the limit
    st.sampled_from(MULTI_BYTE).map(lambda c: _fill(c, MAX_ID)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
contexts = st.dictionaries(texts, json_values, max_size=3) | st.fixed_dictionaries(
    {"explicit": st.sampled_from([0, 1, True, 0.5, "1", None])}
)


@st.composite
def events(draw) -> dict:
    """A valid event as a dict, with unknown fields now and then."""
    extra = draw(st.dictionaries(
        texts.filter(lambda k: k not in (*REQUIRED, "event_id", "context")), json_values,
        max_size=2))
    event = {
        **extra,
        "user_id": draw(ids),
        "video_id": draw(ids),
        "play_ms": draw(st.integers(0, 600_000) | st.integers(0, INT64_MAX)),
        "duration_ms": draw(st.integers(1, 600_000) | st.sampled_from([1, DAY_MS])),
        "ts_ms": draw(st.integers(1_500_000_000_000, 1_800_000_000_000)
                      | st.sampled_from([0, TS_MAX - 1])),
    }
    if draw(st.booleans()):
        event["event_id"] = draw(st.text(chars, max_size=32).filter(_fits))
    context = draw(st.none() | contexts)
    if context is not None or draw(st.booleans()):
        event["context"] = context  # absent, null or an object
    return event


@st.composite
def encode(draw, obj) -> bytes:
    """JSON text of ``obj`` in one of several legal spellings."""
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    pad = draw(st.sampled_from(["", " ", "\n", "\t\r\n "]))
    return (pad + text + pad).encode()


HOLE = "__hole_9f2c__"


def _replace_last(raw: bytes, old: bytes, new: bytes) -> bytes:
    head, found, tail = raw.rpartition(old)
    assert found
    return head + new + tail


@st.composite
def with_literal(draw, literal: bytes, fields: tuple[str, ...]) -> bytes:
    """A valid event but for one of ``fields``, which holds the raw JSON text ``literal``."""
    event = draw(events())
    field = draw(st.sampled_from(fields))
    if field == "context":
        event["context"] = {"x": [HOLE]}
    else:
        event[field] = HOLE
    raw = draw(encode(event))
    assert raw.count(HOLE.encode()) == 1
    return raw.replace(b'"%s"' % HOLE.encode(), literal)


valid = st.builds(lambda e: Rec("valid", e, False), events().flatmap(encode))


@st.composite
def valid_edges(draw) -> Rec:
    """Valid at the edges: exactly 64 KiB, nested exactly 1024 deep."""
    event = draw(events())
    if draw(st.booleans()):
        event["context"] = {"pad": ""}
        base = json.dumps(event).encode()
        pad = b'"pad": "%s"' % (b"x" * (MAX_VALUE - len(base)))
        return Rec("64KiB", _replace_last(base, b'"pad": ""', pad), False)
    event["context"] = {"x": HOLE}  # depth 2 so far
    nested = b'{"a":' * (MAX_DEPTH - 2) + b"1" + b"}" * (MAX_DEPTH - 2)
    return Rec("depth1024", json.dumps(event).encode().replace(b'"%s"' % HOLE.encode(),
                                                                nested), False)


@st.composite
def deep(draw) -> Rec:
    n = draw(st.sampled_from([MAX_DEPTH + 1, 2000, 10_000]))
    form = draw(st.sampled_from(["array", "object", "context"]))
    if form == "array":
        return Rec("deep", b"[" * n + b"]" * n, True)
    nested = b'{"a":' * n + b"1" + b"}" * n
    if form == "object":
        return Rec("deep", nested, True)
    event = draw(events())
    event["context"] = HOLE
    return Rec("deep", json.dumps(event).encode().replace(b'"%s"' % HOLE.encode(), nested), True)


@st.composite
def huge(draw) -> Rec:
    size = draw(st.sampled_from([MAX_VALUE + 1, MAX_VALUE + 7]) | st.integers(MAX_VALUE, 200_000))
    form = draw(st.sampled_from(["pad", "whitespace", "bytes"]))
    base = json.dumps(draw(events())).encode()
    if form == "pad":  # a valid event but for its size
        event = json.loads(base)
        event["context"] = {"pad": ""}
        base = json.dumps(event).encode()
        value = _replace_last(base, b'"pad": ""', b'"pad": "%s"' % (b"x" * (size + 1 - len(base))))
    elif form == "whitespace":
        value = b" " * (size + 1 - len(base)) + base
    else:
        value = bytes(random.Random(size).randbytes(size + 1))
    assert len(value) > MAX_VALUE
    return Rec("huge", value, True)


@st.composite
def wrong_type(draw) -> Rec:
    event = draw(events())
    field = draw(st.sampled_from([*REQUIRED, "event_id", "context"]))
    if field in ("user_id", "video_id"):
        bad = st.sampled_from([1.5, 5.0, -0.0, True, False, None, [], [1], {}, {"id": 1}])
    elif field == "event_id":
        bad = st.sampled_from([1, 1.5, True, None, [], ["x"], {}])
    elif field == "context":
        bad = st.sampled_from([[], [{"a": 1}], "", "x", 0, 1.5, True, False])
    else:
        bad = st.sampled_from(["7", "", "1e3", 2.5, 7.0, True, False, None, [], [7], {}, {"v": 7}])
    event[field] = draw(bad)
    return Rec("wrong_type", draw(encode(event)), True)


NOT_JSON_LITERALS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"+1", b"01",
                     b".5", b"1.", b"0x10", b"1_000", b"1e400", b"-1e400", b"1" + b"0" * 400,
                     b"'a'", b"undefined", b"True", b'"\\ud800"', b'"a\\udfff"', b'"\\x41"',
                     b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"a\x01"', b'"\x7f\x80"']
ENORMOUS = [b"9223372036854775808", b"18446744073709551615", b"18446744073709551616",
            b"-9223372036854775809", b"-18446744073709551617", b"1" + b"0" * 40,
            b"1e20", b"1E2", b"100.0", b"-0.0", b"1e-400"]


@st.composite
def literal(draw) -> Rec:
    if draw(st.booleans()):
        text = draw(st.sampled_from(NOT_JSON_LITERALS))
        return Rec("not_json", draw(with_literal(text, (*REQUIRED, "context"))), True)
    return Rec("enormous", draw(with_literal(draw(st.sampled_from(ENORMOUS)), REQUIRED)), True)


@st.composite
def out_of_range(draw) -> Rec:
    event = draw(events())
    field = draw(st.sampled_from(["play_ms", "duration_ms", "ts_ms"]))
    low, high = COUNTS[field]
    event[field] = draw(st.integers(INT64_MIN, low - 1) | st.integers(high + 1, INT64_MAX)
                        if high < INT64_MAX else st.integers(INT64_MIN, low - 1))
    return Rec("out_of_range", draw(encode(event)), True)


@st.composite
def long_id(draw) -> Rec:
    event = draw(events())
    c = draw(st.sampled_from(MULTI_BYTE + ["a"]))
    over = draw(st.sampled_from([
        _fill(c, MAX_ID + 1),  # 129 bytes, fewer characters
        c * (MAX_ID // len(c.encode()) + 1),
        draw(st.text(chars, min_size=1, max_size=8).map(_over)),
    ]))
    event[draw(st.sampled_from(["user_id", "video_id", "event_id"]))] = over
    return Rec("long_id", draw(encode(event)), True)


@st.composite
def missing(draw) -> Rec:
    event = draw(events())
    for name in draw(st.sets(st.sampled_from(REQUIRED), min_size=1)):
        del event[name]
    return Rec("missing", draw(encode(event)), True)


@st.composite
def empty(draw) -> Rec:
    if draw(st.booleans()):
        return Rec("empty", draw(st.sampled_from(
            [b"", b" ", b"\n", b"{}", b"[]", b"null", b'""', b"0", b"true", b"[{}]"])), True)
    event = draw(events())
    event[draw(st.sampled_from(["user_id", "video_id"]))] = ""
    return Rec("empty", draw(encode(event)), True)


@st.composite
def not_object(draw) -> Rec:
    event = draw(events())
    return Rec("not_object", draw(encode(draw(st.sampled_from([[event], [], 7, "event", None])))),
               True)


@st.composite
def truncated(draw) -> Rec:
    raw = json.dumps(draw(events())).encode()
    return Rec("truncated", raw[: draw(st.integers(0, len(raw) - 1))], True)


garbage = st.builds(lambda b: Rec("bytes", b, True), st.binary(max_size=200))
tombstone = st.just(Rec("tombstone", None, True))
HOSTILE = [garbage, tombstone, deep(), huge(), wrong_type(), literal(), out_of_range(),
           long_id(), missing(), empty(), not_object(), truncated()]
record = st.one_of(valid, valid, st.one_of(*HOSTILE, valid_edges()))


def _filler_text(rng: random.Random, size: int) -> str:
    picks = [rng.choice(SPECIAL) if rng.random() < 0.5 else chr(rng.choice(
        [rng.randrange(0x20, 0x7F), rng.randrange(0xE000, 0x10FFFF)])) for _ in range(size)]
    return "".join(picks)


def _filler(rng: random.Random) -> Rec:
    """A valid event (or, one time in eight, a cut one) from a seeded generator: volume that
    hypothesis draws would be too slow for. Same rules, plainer values."""
    user, video = (rng.choice([rng.randrange(INT64_MIN, INT64_MAX + 1),
                               _filler_text(rng, rng.randint(1, 32)),
                               _fill(rng.choice(MULTI_BYTE), MAX_ID)]) for _ in range(2))
    duration = rng.choice([rng.randint(1, 300_000), rng.randint(1, DAY_MS)])
    event = {"user_id": user, "video_id": video, "play_ms": rng.randint(0, duration * 6 // 5),
             "duration_ms": duration, "ts_ms": rng.randrange(0, TS_MAX + 1)}
    if rng.random() < 0.3:
        event["event_id"] = _filler_text(rng, rng.randint(0, 32))
    if rng.random() < 0.3:
        event["context"] = {_filler_text(rng, 3): rng.choice([0, 1, None, 1.5, [], "x"])}
    raw = json.dumps(event, ensure_ascii=rng.random() < 0.5).encode()
    if rng.random() < 1 / 8:
        return Rec("filler_cut", raw[: rng.randrange(len(raw))], True)
    return Rec("filler", raw, False)


@st.composite
def streams(draw) -> list[Rec]:
    """At most 300 records, shuffled: one of each hostile kind and of each valid edge, a few
    dozen drawn records, and seeded filler."""
    recs = list(draw(st.tuples(*HOSTILE, valid_edges(), valid_edges())))
    recs += draw(st.lists(record, max_size=40))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    recs += [_filler(rng) for _ in range(rng.randint(150, 300 - len(recs)))]
    rng.shuffle(recs)
    return recs


# -- the property ----------------------------------------------------------------------------
def _produce(bootstrap: str, topic: str, recs: list[Rec], keys: list[bytes | None]) -> dict:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             max_request_size=2 * 1024 * 1024, linger_ms=5)
    try:
        pairs = zip(recs, keys, strict=True)
        futures = [producer.send(topic, value=r.value, key=k) for r, k in pairs]
        producer.flush()
        sent = {}
        for i, future in enumerate(futures):
            meta = future.get(timeout=30)
            sent[(meta.partition, meta.offset)] = i
        return sent
    finally:
        producer.close()


def _multiset_diff(expected: list, got: list) -> str:
    missing, extra = Counter(expected) - Counter(got), Counter(got) - Counter(expected)
    short = [v if v is None else v[:80] for v in (*missing, *extra)]
    return f"{sum(missing.values())} missing, {sum(extra.values())} unexpected: {short[:5]}"


@settings(max_examples=5, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each run joins a group
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(recs=streams(), keys=st.lists(st.none() | st.binary(max_size=8), min_size=300,
                                     max_size=300))
def test_hostile_records_are_dead_lettered_and_good_ones_learned(kafka_bootstrap, kafka_client,
                                                                 recs, keys):
    verdicts = [oracle(r.value) for r in recs]
    for r, v in zip(recs, verdicts, strict=True):  # the generators and the oracle agree
        assert bool(v) == r.bad, (r, sorted(v))
    # a tombstone needs a key (Kafka's delete marker: key, no value)
    pairs = zip(recs, keys[: len(recs)], strict=True)
    keys = [b"t" if r.value is None and k is None else k for r, k in pairs]
    good = [i for i, v in enumerate(verdicts) if not v]
    bad = [i for i, v in enumerate(verdicts) if v]

    name = f"test-hostile-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, name, partitions=4)
    try:
        sent = _produce(kafka_bootstrap, name, recs, keys)
        daemon, totals, samples = learn_until_end(kafka_bootstrap, name,  # no exception
                                                  client=kafka_client)
        dead = read_topic(kafka_bootstrap, f"{name}.dlq")
    finally:
        for leftover in (name, f"{name}.dlq"):
            try:
                delete_topic(kafka_bootstrap, leftover)
            except Exception:  # best effort
                pass

    assert totals["consumed"] == len(recs)
    assert totals["accepted"] == len(good), "valid records dead-lettered or invalid ones learned"
    assert totals["dead_lettered"] == len(bad)
    labelled = sum(v for (n, _l), v in samples.items() if n == "dwell_events_labelled_total")
    assert labelled == len(good)
    # the model saw the ids of the valid records, and no others
    for field, idmap in (("user_id", daemon.learner.users), ("video_id", daemon.learner.videos)):
        seen = {_parse(recs[i].value)[field] for i in good}
        assert len(idmap) == len(seen) and all(key in idmap for key in seen), field

    # exactly the invalid records' raw values, tombstones as None
    expected = [recs[i].value for i in bad]
    got = [r.value for r in dead]
    assert Counter(got) == Counter(expected), _multiset_diff(expected, got)

    # each with a reason the oracle allows, and the unique source position of its record
    positions = set()
    reasons = Counter()
    for r in dead:
        headers = dict(r.headers)
        reason = headers["dwell.reason"].decode()
        assert reason in REASONS
        assert headers["dwell.source.topic"] == name.encode()
        position = (int(headers["dwell.source.partition"]), int(headers["dwell.source.offset"]))
        assert position not in positions
        positions.add(position)
        source = recs[sent[position]]
        assert (source.value, keys[sent[position]]) == (r.value, r.key)
        assert reason in verdicts[sent[position]], (source, reason, headers["dwell.detail"])
        reasons[reason] += 1
    assert totals["invalid"] == dict(reasons)
    for reason, count in reasons.items():
        assert samples[("dwell_events_invalid_total", (("reason", reason),))] == count
