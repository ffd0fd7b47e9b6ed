"""Dead letters too large for the dead-letter topic become envelopes; their neighbours do not.

A scripted producer stands in for the client: it refuses, like a broker, every record over
its limit, and fails every other letter in flight with the same error, as kafka-python's
idempotent producer does once a batch failed that way.
"""

from __future__ import annotations

import hashlib

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from stream import dlq
from stream.clients import Message
from stream.errors import ClientError
from stream.event import Reason

BIG = bytes(range(256)) * 8192  # 2 MiB


def _record(offset: int, value: bytes | None = b"bad", key: bytes | None = b"u1") -> Message:
    return Message("events", 2, offset, key, value, 0, ())


class Broker:
    """The topic's limit, shared by the producers of a test (the operator may change it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.log: list[tuple] = []  # (value, key, headers) acknowledged


class Producer:
    """Queues records; on flush acknowledges them all, or fails them all if one is over the
    broker's limit (MessageSizeTooLargeError); refuses at once one over its request size."""

    made: list[Producer] = []

    def __init__(self, broker: Broker, config: dict) -> None:
        self.broker, self.config = broker, config
        self.queued: list[tuple] = []
        self.closed = False
        Producer.made.append(self)

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self.config["max_request_size"]:
            raise ClientError("too large for max_request_size", "MessageSizeTooLargeError")
        self.queued.append((value, key, headers, on_delivery, size))

    def flush(self, timeout=None):
        queued, self.queued = self.queued, []
        too_large = any(size > self.broker.limit for *_, size in queued)
        for value, key, headers, report, _size in queued:
            if too_large:
                report(ClientError("MessageSizeTooLargeError()", "MessageSizeTooLargeError"))
            else:
                self.broker.log.append((value, key, dict(headers)))
                report(None)
        return 0

    def close(self, timeout=None):
        self.closed = True


@pytest.fixture
def broker(monkeypatch) -> Broker:
    Producer.made = []
    topic = Broker(1_048_588)
    monkeypatch.setattr(dlq, "make_producer",
                        lambda client, config, process=False: Producer(topic, config))
    monkeypatch.setattr(dlq, "max_message_bytes", lambda *args, **kwargs: topic.limit)
    return topic


def test_an_envelope_keeps_the_first_bytes_the_size_the_hash_and_the_source():
    value, key, headers = dlq.envelope(_record(7, BIG), Reason.TOO_LARGE, "2 MiB")
    h = dict(headers)
    assert value == BIG[:dlq.ENVELOPE_VALUE_BYTES] and key == b"u1"
    assert h["dwell.truncated"] == b"1"
    assert h["dwell.original.size"] == b"%d" % len(BIG)
    assert h["dwell.original.sha256"] == hashlib.sha256(BIG).hexdigest().encode()
    assert (h["dwell.reason"], h["dwell.source.topic"], h["dwell.source.partition"],
            h["dwell.source.offset"]) == (b"too_large", b"events", b"2", b"7")
    assert "dwell.original.key.size" not in h


def test_an_envelope_cuts_a_huge_key_and_keeps_a_tombstone_a_tombstone():
    key = b"k" * 100_000
    value, cut, headers = dlq.envelope(_record(1, None, key), Reason.NOT_JSON, "tombstone")
    h = dict(headers)
    assert value is None and cut == key[:dlq.ENVELOPE_KEY_BYTES]
    assert h["dwell.original.size"] == b"0"
    assert h["dwell.original.key.size"] == b"100000"
    assert h["dwell.original.key.sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert dlq.truncatable(_record(1, None, key)) and not dlq.truncatable(_record(1, b"x" * 4096))


@pytest.mark.parametrize("value", [b"", b"x", b"x" * 5000, BIG])
def test_a_letters_size_is_never_under_what_the_broker_counts(value):
    record = _record(123_456_789, value, b"user-1")
    headers = dlq.dead_letter_headers(record, Reason.TOO_LARGE, "d" * 2000)
    assert dlq.letter_size(value, b"user-1", headers) >= (
        DefaultRecordBatchBuilder.estimate_size_in_bytes(b"user-1", value, headers))


def test_the_producer_takes_the_topics_limit_and_a_users_options_over_it(broker):
    assert Producer.made == []
    queue = dlq.DeadLetterQueue("a:1", "t.dlq", max_message_bytes=8_016_384)
    assert Producer.made[-1].config["max_request_size"] == 8_016_384
    assert Producer.made[-1].config["batch_size"] == 1 << 20
    dlq.DeadLetterQueue("a:1", "t.dlq", max_message_bytes=16)
    assert (Producer.made[-1].config["max_request_size"],
            Producer.made[-1].config["batch_size"]) == (1000, 8)
    dlq.DeadLetterQueue("a:1", "t.dlq", {"max_request_size": 5}, max_message_bytes=16)
    assert Producer.made[-1].config["max_request_size"] == 5
    dlq.DeadLetterQueue("a:1", "t.dlq")  # limit unknown: dwell's defaults
    assert Producer.made[-1].config["max_request_size"] == 4 << 20
    assert queue.producer_config["acks"] == "all"


def test_a_letter_over_the_known_limit_goes_as_an_envelope_at_once(broker):
    broker.limit = 100_000
    queue = dlq.DeadLetterQueue("a:1", "t.dlq", max_message_bytes=broker.limit)
    queue.send(_record(1), Reason.NOT_JSON, "nope")
    queue.send(_record(2, BIG), Reason.TOO_LARGE, "big")
    queue.send(_record(3, b"y" * 50_000), Reason.TOO_LARGE, "fits")
    queue.flush()
    assert len(Producer.made) == 1  # nothing failed
    assert [(len(v), h.get("dwell.truncated")) for v, _k, h in broker.log] == [
        (3, None), (dlq.ENVELOPE_VALUE_BYTES, b"1"), (50_000, None)]
    assert (queue.written, queue.truncated, queue.pending) == (3, 1, 0)


def test_a_refused_letter_goes_again_as_an_envelope_and_its_neighbours_as_they_were(broker):
    """Limit unknown: the broker refuses the batch and the client fails its neighbours too."""
    broker.limit = 100_000
    queue = dlq.DeadLetterQueue("a:1", "t.dlq")
    for offset, value in enumerate([b"bad", BIG, b"z" * 3000]):
        queue.send(_record(offset, value), Reason.NOT_JSON, "d")
    queue.flush()  # no error: the envelope and the neighbours written by the same flush
    assert len(Producer.made) == 2 and Producer.made[0].closed
    assert [(v[:3], h["dwell.source.offset"], h.get("dwell.truncated")) for v, _k, h in
            broker.log] == [(b"bad", b"0", None), (BIG[:3], b"1", b"1"), (b"zzz", b"2", None)]
    assert dict(broker.log[1][2])["dwell.original.sha256"] == (
        hashlib.sha256(BIG).hexdigest().encode())
    assert (queue.written, queue.truncated, queue.pending) == (3, 1, 0)


def test_a_limit_lowered_since_the_start_is_read_again_on_a_refusal(broker):
    queue = dlq.DeadLetterQueue("a:1", "t.dlq", max_message_bytes=8_016_384)
    broker.limit = 10_000  # the operator shrank the topic
    big_neighbour = b"n" * 9_000  # over an envelope's size, under the new limit: whole
    for offset, value in enumerate([big_neighbour, BIG, b"bad"]):
        queue.send(_record(offset, value), Reason.NOT_JSON, "d")
    queue.flush()
    assert queue.limit == 10_000
    assert [(len(v), h.get("dwell.truncated")) for v, _k, h in broker.log] == [
        (9_000, None), (dlq.ENVELOPE_VALUE_BYTES, b"1"), (3, None)]
    assert (queue.written, queue.truncated) == (3, 1)


def test_a_topic_that_refuses_even_the_envelope_holds_every_letter(broker):
    broker.limit = 16
    queue = dlq.DeadLetterQueue("a:1", "t.dlq", max_message_bytes=16)
    queue.send(_record(1), Reason.NOT_JSON, "nope")
    queue.send(_record(2, BIG), Reason.TOO_LARGE, "big")
    for _ in range(3):
        with pytest.raises(dlq.DeadLetterError, match="2 dead letters not written"):
            queue.flush()
        assert queue.pending == 2 and (queue.written, queue.truncated) == (0, 0)
    broker.limit = 1_048_588  # the operator raises the limit: read again at the next refusal
    queue.flush()
    assert [(len(v), h.get("dwell.truncated")) for v, _k, h in broker.log] == [
        (3, None), (dlq.ENVELOPE_VALUE_BYTES, b"1")]  # cut while the limit was 16 bytes
    assert (queue.written, queue.truncated, queue.pending) == (2, 1, 0)


def test_the_totals_add_up_only_when_every_letter_is_written_and_every_offset_committed():
    from learner.cli import format_totals, totals_add_up

    auc = dict.fromkeys([("short", "dwell"), ("run", "dwell"), ("short", "explicit"),
                         ("run", "explicit")], 0.5)
    totals = {"consumed": 10, "accepted": 8, "dead_lettered": 2, "labelled": {},
              "invalid": {"too_large": 2}, "train_steps": 1, "seconds": 1.0,
              "dead_letters_written": 2, "dead_letters_truncated": 1, "uncommitted": {}}
    text = format_totals(totals, auc)
    assert totals_add_up(totals) and text.endswith("totals add up: yes")
    assert "dead letters  2 written to the dead-letter topic (1 as envelopes" in text
    assert not totals_add_up({**totals, "dead_letters_written": 1})
    assert not totals_add_up(totals, sent=11)
    stuck = {**totals, "uncommitted": {3: 120, 0: 1}}
    text = format_totals(stuck, auc)
    assert not totals_add_up(stuck) and text.endswith("totals add up: NO")
    assert "uncommitted   partition 0: 1 event, partition 3: 120 events" in text
