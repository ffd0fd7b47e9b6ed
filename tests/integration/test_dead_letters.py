"""A dead letter is always written and never blocks its partition; the ending tells the truth.

A topic that takes records of up to 8 MB holds good KuaiRand events and a few bad records,
one of them a 2 MiB garbage value. ``dwell learn --until-end`` (a process, as a user runs it)
must end with status 0, every offset committed, every bad record in the dead-letter topic
(whole, or as an envelope where that topic was made beforehand too small), and a second
learner of the group must find nothing left. A run whose commit cannot be made must say so
and exit non-zero.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import admin_client, committed_offsets, create_topic, end_offsets
from stream.admin import max_message_bytes as topic_limit
from stream.dlq import ENVELOPE_VALUE_BYTES
from tests.integration.helpers import KUAIRAND, read_topic

SOURCE_LIMIT = 8_000_000
GOOD = 2_000
BIG = random.Random(18).randbytes(2 * 1024 * 1024)  # garbage, a legal record on the topic
MEDIUM = b"m" * 80_000  # too large for an event (64 KiB), small enough for any topic here
HUGE_KEY = b"k" * 150_000


def _bad_records() -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of the bad records: each a different way to fail."""
    surrogate = (b'{"user_id": "\\ud800", "video_id": 1, "play_ms": 1, "duration_ms": 2, '
                 b'"ts_ms": 0}')
    return [(b"garbage", BIG), (b"u1", b"not json"), (b"u2", surrogate), (b"u3", None),
            (b"u4", MEDIUM), (HUGE_KEY, b"not json either"), (b"u5", b"[1, 2, 3]")]


def _fill(bootstrap: str, topic: str, client: str) -> dict[tuple[int, int], bytes | None]:
    """Good events around the bad records; the bad records' values by (partition, offset)."""
    with admin_client(bootstrap) as admin:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                            configs={"max.message.bytes": str(SOURCE_LIMIT)})])
    log = read_log(KUAIRAND)
    events = order_by_time(log.events)[:GOOD]
    log.events = events[: GOOD // 2]
    replay(log, bootstrap=bootstrap, topic=topic, progress=False, client=client)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             max_request_size=SOURCE_LIMIT)
    try:
        futures = [(value, producer.send(topic, key=key, value=value, partition=i % 4))
                   for i, (key, value) in enumerate(_bad_records())]
        bad = {}
        for value, future in futures:
            meta = future.get(timeout=60)
            bad[(meta.partition, meta.offset)] = value
    finally:
        producer.close()
    log.events = events[GOOD // 2:]
    replay(log, bootstrap=bootstrap, topic=topic, progress=False, client=client)
    return bad


def _learn(bootstrap: str, topic: str, group: str, client: str, *extra: str
           ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "learner.cli", "learn", "--bootstrap", bootstrap,
         "--client", client, "--topic", topic, "--group", group, "--until-end",
         "--checkpoint-dir", "", "--metrics-port", "-1", "--batch-timeout-s", "0.2",
         "--progress-interval-s", "60", *extra],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _count(out: str, label: str) -> int:
    match = re.search(rf"^{label}\s+([0-9,]+)", out, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{out}"
    return int(match.group(1).replace(",", ""))


def _letters(bootstrap: str, topic: str) -> dict[tuple[int, int], object]:
    """The dead letters of ``topic``'s dead-letter topic by source (partition, offset)."""
    letters = {}
    for record in read_topic(bootstrap, f"{topic}.dlq"):
        h = dict(record.headers)
        assert h["dwell.source.topic"] == topic.encode()
        letters[(int(h["dwell.source.partition"]), int(h["dwell.source.offset"]))] = record
    return letters


def _ends_cleanly(bootstrap: str, topic: str, group: str, client: str) -> tuple[dict, str]:
    """Run the learner to the end; check the ending; return the dead letters and the output."""
    proc = _learn(bootstrap, topic, group, client)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-5000:]
    assert "totals add up: yes" in out
    ends = end_offsets(bootstrap, topic)
    assert committed_offsets(bootstrap, group, topic) == ends
    consumed, dead = _count(out, "consumed"), _count(out, "dead-lettered")
    assert consumed == sum(ends.values()) == _count(out, "accepted") + dead
    assert _count(out, "dead letters") == dead
    letters = _letters(bootstrap, topic)
    assert len(letters) == dead
    # a second learner of the group starts at the end: nothing left to read
    again = _learn(bootstrap, topic, group, client)
    assert again.returncode == 0, again.stdout + again.stderr[-5000:]
    assert _count(again.stdout, "consumed") == 0
    assert committed_offsets(bootstrap, group, topic) == ends
    return letters, out


def test_a_dead_letter_as_large_as_the_source_allows_is_written_whole(kafka_bootstrap, topic,
                                                                      kafka_client):
    bad = _fill(kafka_bootstrap, topic, kafka_client)
    letters, out = _ends_cleanly(kafka_bootstrap, topic, f"{topic}-g", kafka_client)
    assert topic_limit(kafka_bootstrap, f"{topic}.dlq") >= SOURCE_LIMIT
    for position, value in bad.items():
        assert letters[position].value == value, position  # every one whole
        assert "dwell.truncated" not in dict(letters[position].headers)
    assert "as envelopes" not in out


def test_a_dead_letter_too_large_for_the_topic_is_written_as_an_envelope(kafka_bootstrap,
                                                                          topic, kafka_client):
    create_topic(kafka_bootstrap, f"{topic}.dlq", partitions=1,
                 config={"max.message.bytes": 100_000})  # made beforehand, too small
    bad = _fill(kafka_bootstrap, topic, kafka_client)
    letters, out = _ends_cleanly(kafka_bootstrap, topic, f"{topic}-g", kafka_client)
    assert "(2 as envelopes" in out
    for position, value in bad.items():
        letter = letters[position]
        h = dict(letter.headers)
        if value is BIG:
            assert letter.value == BIG[:ENVELOPE_VALUE_BYTES] and letter.key == b"garbage"
            assert h["dwell.truncated"] == b"1"
            assert h["dwell.original.size"] == b"%d" % len(BIG)
            assert h["dwell.original.sha256"] == hashlib.sha256(BIG).hexdigest().encode()
            assert h["dwell.reason"] == b"too_large"
        elif letter.key is not None and letter.key.startswith(b"k"):
            assert letter.value == value and len(letter.key) < len(HUGE_KEY)
            assert h["dwell.original.key.size"] == b"%d" % len(HUGE_KEY)
            assert h["dwell.original.key.sha256"] == hashlib.sha256(HUGE_KEY).hexdigest().encode()
        else:  # its neighbours whole, the 80 KB one included
            assert letter.value == value and "dwell.truncated" not in h, position


@pytest.mark.parametrize("limit", [16])
def test_a_commit_that_cannot_be_made_ends_non_zero_and_says_what_is_left(
        kafka_bootstrap, topic, kafka_client, limit):
    """The dead-letter topic refuses even an envelope: nothing can be committed."""
    create_topic(kafka_bootstrap, f"{topic}.dlq", partitions=1,
                 config={"max.message.bytes": limit})
    _fill(kafka_bootstrap, topic, kafka_client)
    group = f"{topic}-g"
    proc = _learn(kafka_bootstrap, topic, group, kafka_client, "--final-commit-timeout-s", "3")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr[-5000:]
    assert "totals add up: NO" in out
    dead = _count(out, "dead-lettered")
    assert dead >= len(_bad_records()) and _count(out, "dead letters") < dead
    assert committed_offsets(kafka_bootstrap, group, topic) == {}
    ends = end_offsets(kafka_bootstrap, topic)
    line = next(line for line in out.splitlines() if line.startswith("uncommitted"))
    left = {int(p): int(n.replace(",", "")) for p, n in
            re.findall(r"partition (\d+): ([0-9,]+) events?", line)}
    assert left == {p: end for p, end in ends.items() if end}, line
    assert "DEAD-LETTER WRITE FAILED" in proc.stderr


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "child-process"])
def test_a_letter_refused_as_too_large_does_not_take_its_neighbours_down(
        kafka_bootstrap, topic, kafka_client, process):
    """The queue believes the topic takes 8 MB (an operator has lowered it to 1 MB since):
    the broker refuses the 2 MiB letter, and kafka-python fails every letter in flight with
    it. The flush reads the limit again, sends the big one as an envelope and the others as
    they were, and waits for them: nothing lost, nothing raised."""
    from stream.clients import Message
    from stream.dlq import DeadLetterQueue
    from stream.event import Reason

    create_topic(kafka_bootstrap, f"{topic}.dlq", partitions=1,
                 config={"max.message.bytes": 1_048_588})
    queue = DeadLetterQueue(kafka_bootstrap, f"{topic}.dlq", client=kafka_client,
                            process=process, max_message_bytes=SOURCE_LIMIT)
    values = [b"bad", BIG, MEDIUM, None, b"[1]"]
    try:
        for offset, value in enumerate(values):
            queue.send(Message(topic, 1, offset, b"u", value, 0, ()), Reason.NOT_JSON, "d")
        queue.flush()
    finally:
        queue.close()
    assert (queue.written, queue.truncated, queue.pending) == (len(values), 1, 0)
    assert queue.limit == 1_048_588
    letters = _letters(kafka_bootstrap, topic)
    assert sorted(letters) == [(1, offset) for offset in range(len(values))]
    for (_p, offset), letter in letters.items():
        if values[offset] is BIG:
            assert letter.value == BIG[:ENVELOPE_VALUE_BYTES]
            assert dict(letter.headers)["dwell.original.sha256"] == (
                hashlib.sha256(BIG).hexdigest().encode())
        else:
            assert letter.value == values[offset]
            assert "dwell.truncated" not in dict(letter.headers)
