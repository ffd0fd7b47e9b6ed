"""The local Kafka broker and the admin helpers, against a real Apache Kafka broker."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import UnknownTopicOrPartitionError

from stream.admin import (
    committed_offsets,
    create_topic,
    delete_topic,
    end_offsets,
    list_topics,
)
from stream.broker import LocalBroker, free_ports, wait_until_ready


def produce(bootstrap: str, topic: str, n: int, prefix: str = "v") -> list[bytes]:
    """Send ``n`` keyed records, wait for every acknowledgement, return the values sent."""
    values = [f"{prefix}-{i}".encode() for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        futures = [
            producer.send(topic, key=f"user-{i % 7}".encode(), value=v)
            for i, v in enumerate(values)
        ]
        for f in futures:
            f.get(timeout=30)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return values


def consume_all(
    bootstrap: str, topic: str, expected: int, group: str | None = None, timeout: float = 30.0
) -> list[bytes]:
    """Read ``expected`` records from the start of every partition of ``topic``; return values."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(end_offsets(bootstrap, topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        if group is not None:
            consumer.commit()
        return values
    finally:
        consumer.close()


def test_fixture_broker_answers(kafka_bootstrap: str) -> None:
    host, _, port = kafka_bootstrap.rpartition(":")
    assert host and port.isdigit()
    topics = wait_until_ready(kafka_bootstrap, timeout=10)
    assert isinstance(topics, list)
    assert set(topics) <= set(list_topics(kafka_bootstrap))


def test_new_topic_has_four_empty_partitions(kafka_bootstrap: str, topic: str) -> None:
    assert topic in list_topics(kafka_bootstrap)
    assert end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0, 2: 0, 3: 0}


def test_create_topic_is_idempotent(kafka_bootstrap: str, topic: str) -> None:
    assert create_topic(kafka_bootstrap, topic, partitions=4) is False
    assert end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0, 2: 0, 3: 0}


def test_create_topic_with_config_and_delete(kafka_bootstrap: str) -> None:
    name = f"test-config-{uuid.uuid4().hex[:8]}"
    assert create_topic(kafka_bootstrap, name, partitions=1, config={"retention.ms": 3600000})
    assert end_offsets(kafka_bootstrap, name) == {0: 0}
    assert delete_topic(kafka_bootstrap, name) is True
    assert delete_topic(kafka_bootstrap, name) is False


def test_end_offsets_of_unknown_topic_raises(kafka_bootstrap: str) -> None:
    with pytest.raises(UnknownTopicOrPartitionError):
        end_offsets(kafka_bootstrap, f"no-such-topic-{uuid.uuid4().hex[:8]}")


def test_produced_records_move_end_offsets(kafka_bootstrap: str, topic: str) -> None:
    produce(kafka_bootstrap, topic, 10)
    offsets = end_offsets(kafka_bootstrap, topic)
    assert sorted(offsets) == [0, 1, 2, 3]
    assert sum(offsets.values()) == 10


def test_committed_offsets_of_unknown_group_is_empty(kafka_bootstrap: str, topic: str) -> None:
    # Defined behaviour: only partitions with a committed offset appear, so an unknown
    # group (or one that committed nothing on this topic) gives an empty dict, not zeros.
    assert committed_offsets(kafka_bootstrap, f"no-such-group-{uuid.uuid4().hex[:8]}", topic) == {}


def test_committed_offsets_after_a_commit(kafka_bootstrap: str, topic: str) -> None:
    sent = produce(kafka_bootstrap, topic, 10)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    got = consume_all(kafka_bootstrap, topic, expected=10, group=group)
    assert sorted(got) == sorted(sent)
    ends = end_offsets(kafka_bootstrap, topic)
    committed = committed_offsets(kafka_bootstrap, group, topic)
    # Partitions that received no record may have no commit; the others are at the end.
    assert {p: o for p, o in committed.items() if o} == {p: o for p, o in ends.items() if o}
    assert committed_offsets(kafka_bootstrap, group, f"{topic}-other") == {}


def test_restart_on_same_data_folder_keeps_topics_and_records(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    broker = LocalBroker(tmp_path / "kafka", port, controller_port, heap="384m")
    assert broker.status() is False
    try:
        bootstrap = broker.start(timeout=90, owner_pid=os.getpid())
        assert bootstrap == broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.status() is True
        # start() on a running broker is a no-op that returns the same address
        assert broker.start(timeout=30) == bootstrap

        name = f"test-restart-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, name, partitions=4)
        sent = produce(bootstrap, name, 10, prefix="before-restart")
        assert sum(end_offsets(bootstrap, name).values()) == 10

        broker.stop()
        assert broker.status() is False
        assert not (tmp_path / "kafka" / "kafka.pid").exists()
        broker.stop()  # stopping a stopped broker is not an error

        assert broker.start(timeout=90, owner_pid=os.getpid()) == bootstrap
        assert name in list_topics(bootstrap)
        assert sum(end_offsets(bootstrap, name).values()) == 10
        assert sorted(consume_all(bootstrap, name, expected=10)) == sorted(sent)
    finally:
        broker.stop()
    assert broker.status() is False


def test_kafka_python_consumer_applies_a_rejoin_that_outlives_its_poll(kafka_bootstrap: str,
                                                                       topic: str) -> None:
    """Partitions added to the topic make the group's leader rejoin; with polls far shorter
    than a JoinGroup and SyncGroup round trip, kafka-python 3.0.12 alone never applies the
    new assignment (5 runs in 5 before the fix in stream/clients/kafka_python.py)."""
    from kafka.admin import NewPartitions

    from stream.admin import admin_client
    from stream.clients import ConsumerSettings, KafkaConnection, make_consumer

    consumer = make_consumer(KafkaConnection(kafka_bootstrap, options={"metadata_max_age_ms": 500}),
                             ConsumerSettings(topic, f"{topic}-rejoin", max_wait_s=0.01))
    try:
        deadline = time.monotonic() + 30
        while len(consumer.assignment) < 4 and time.monotonic() < deadline:
            consumer.poll_batch()
        assert consumer.assignment == {0, 1, 2, 3}
        with admin_client(kafka_bootstrap) as admin:
            admin.create_partitions({topic: NewPartitions(6)})
        deadline = time.monotonic() + 30
        while len(consumer.assignment) < 6 and time.monotonic() < deadline:
            consumer.poll_batch()
            time.sleep(0.005)
        assert consumer.assignment == set(range(6))
    finally:
        consumer.close()
