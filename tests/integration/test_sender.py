"""The send process (stream.clients.sender) against the real broker, with either client inside:
every record delivered once and reported once, refusals and a dead child reported as
failures, and the dead-letter queue's resend on a new child."""

from __future__ import annotations

import os
import signal

import pytest

from stream.clients import make_producer
from stream.clients.sender import SHIP_RECORDS, SendProcess
from stream.dlq import DeadLetterError, DeadLetterQueue
from stream.errors import ClientError
from tests.integration.helpers import read_topic

N = 3 * SHIP_RECORDS + 7  # several shipments and a partial one


def test_every_record_is_delivered_and_reported_once(kafka_bootstrap, topic, kafka_client):
    producer = make_producer(kafka_client, {"bootstrap_servers": kafka_bootstrap,
                                            "max_request_size": 100_000}, process=True)
    assert isinstance(producer, SendProcess)
    reports: dict[int, list] = {}
    try:
        for i in range(N):
            producer.produce(topic, b"v%d" % i, key=b"k%d" % i,
                             headers=[("i", b"%d" % i)] if i % 100 == 0 else None,
                             on_delivery=lambda error, i=i: reports.setdefault(i, []).append(error))
        producer.produce(topic, b"x" * 200_000, on_delivery=lambda e: reports.setdefault(-1, [])
                         .append(e))  # larger than max_request_size: refused
        assert producer.flush(60) == 0
    finally:
        producer.close(10)
    assert sorted(reports) == [-1, *range(N)]
    assert all(reports[i] == [None] for i in range(N))
    assert len(reports[-1]) == 1 and isinstance(reports[-1][0], ClientError)
    records = read_topic(kafka_bootstrap, topic)
    assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(N))
    assert {(r.key, r.value) for r in records} == {(b"k%d" % i, b"v%d" % i) for i in range(N)}
    headed = {r.value: list(r.headers) for r in records if r.headers}
    assert headed == {b"v%d" % i: [("i", b"%d" % i)] for i in range(0, N, 100)}


def test_a_dead_child_reports_its_records_failed(kafka_bootstrap, topic):
    producer = SendProcess("kafka-python", {"bootstrap_servers": kafka_bootstrap})
    errors: list = []
    try:
        os.kill(producer.pid, signal.SIGKILL)
        producer._process.wait()
        for i in range(5):
            producer.produce(topic, b"%d" % i, on_delivery=errors.append)
        assert producer.flush(10) == 0
    finally:
        producer.close(1)
    assert len(errors) == 5
    assert all(isinstance(e, ClientError) and not e.retriable for e in errors)


def test_dead_letters_whose_child_died_are_sent_again_on_a_new_one(kafka_bootstrap, topic):
    from stream.clients import Message
    from stream.event import Reason

    dlq = DeadLetterQueue(kafka_bootstrap, f"{topic}.dlq", process=True)
    try:
        first = dlq._producer
        os.kill(first.pid, signal.SIGKILL)
        record = Message(topic, 0, 5, b"k", b"not json", 0, ())
        dlq.send(record, Reason.NOT_JSON, "broken")
        with pytest.raises(DeadLetterError):
            dlq.flush()
        assert dlq._producer is not first
        dlq.flush()  # the letter went again on the new child
    finally:
        dlq.close()
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq")
    assert [(r.key, r.value) for r in letters] == [(b"k", b"not json")]
    assert dict(letters[0].headers)["dwell.source.offset"] == b"5"
