"""The fetch process (stream.clients.fetcher) against the real broker, with either client inside.

It must hand out what the client in this process would: every record once, in order per
partition, in micro-batches of ``max_records``; rebalance callbacks on this side, with commits
and seeks served by the child while it waits; errors raised here; and a child that ends with
its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from stream.admin import end_offsets
from stream.clients import ConsumerSettings, KafkaConnection, make_consumer, make_producer
from stream.clients.fetcher import FETCH_RECORDS, FetchProcess
from stream.errors import ClientError

N = 3 * FETCH_RECORDS + 500  # several fetches of the child, and a short one


def _fill(bootstrap: str, topic: str, client: str, n: int = N) -> None:
    producer = make_producer(client, {"bootstrap_servers": bootstrap})
    try:
        for i in range(n):
            producer.produce(topic, orjson.dumps({"i": i}), key=str(i % 97).encode(),
                             headers=[("n", str(i).encode())] if i % 1000 == 0 else None)
        assert producer.flush(60) == 0
    finally:
        producer.close(10)


def _drain(consumer, total: int, deadline_s: float = 90.0) -> list[list]:
    batches, seen, deadline = [], 0, time.monotonic() + deadline_s
    while seen < total and time.monotonic() < deadline:
        batch = consumer.poll_batch()
        if batch:
            batches.append(batch)
            seen += len(batch)
            consumer.mark_processed(batch)
    return batches


def test_fetch_process_hands_out_what_the_client_itself_would(kafka_bootstrap, topic,
                                                               kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client)
    drained = {}
    for fetch_process in (False, True):
        consumer = make_consumer(
            KafkaConnection(kafka_bootstrap, kafka_client),
            ConsumerSettings(topic, f"{topic}-{fetch_process}", max_records=1000,
                             max_wait_s=0.3, process=fetch_process))
        try:
            assert isinstance(consumer, FetchProcess) == fetch_process
            batches = _drain(consumer, N)
            assert all(len(b) <= 1000 for b in batches)
            records = [r for b in batches for r in b]
            drained[fetch_process] = sorted((r.partition, r.offset, r.key, r.value,
                                             tuple(r.headers)) for r in records)
            assert consumer.processed() == end_offsets(kafka_bootstrap, topic)
            assert consumer.positions() == consumer.processed()
            assert consumer.commit() is True and consumer.commit() is False
            assert consumer.lag() == {p: 0 for p in consumer.assignment}
            assert all(r.timestamp > 0 for r in records)
        finally:
            consumer.close()
    assert len(drained[True]) == N
    assert drained[True] == drained[False]
    assert sum(1 for r in drained[True] if r[4]) == len(range(0, N, 1000))


def test_positions_leave_out_what_was_fetched_ahead_and_seek_drops_it(kafka_bootstrap, topic,
                                                                      kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client)
    ends = end_offsets(kafka_bootstrap, topic)
    consumer = FetchProcess(KafkaConnection(kafka_bootstrap, kafka_client),
                            ConsumerSettings(topic, f"{topic}-g", max_records=100,
                                             max_wait_s=0.5, partitions=tuple(ends)))
    try:
        first = consumer.poll_batch()
        assert len(first) == 100  # of the child's first fetch of up to FETCH_RECORDS
        consumer.mark_processed(first)
        last = {}
        for r in first:
            last[r.partition] = r.offset + 1
        positions = consumer.positions()
        for p, offset in last.items():
            assert positions[p] == offset  # the next one this side hands out
        # seek one partition back to 0: whatever was fetched ahead of it is dropped
        partition = first[0].partition
        consumer.seek(partition, 0)
        assert consumer.processed()[partition] == 0
        again = [r for b in _drain(consumer, N - len(first) + last[partition])
                 for r in b if r.partition == partition]
        offsets = [r.offset for r in again]
        assert offsets == list(range(ends[partition]))  # from 0, once each, in order
    finally:
        consumer.close()


def test_rebalance_callbacks_run_here_and_their_commits_reach_the_group(kafka_bootstrap, topic,
                                                                        kafka_client):
    _fill(kafka_bootstrap, topic, kafka_client, n=2000)
    group = f"{topic}-group"
    calls: list[tuple[str, str, set[int]]] = []
    consumers: list[FetchProcess] = []

    def member(name: str) -> FetchProcess:
        def revoked(partitions: set[int]) -> None:
            calls.append((name, "revoke", set(partitions)))
            consumer.commit(blocking=False)  # what the daemon does, inside the callback

        def assigned(partitions: set[int]) -> None:
            calls.append((name, "assign", set(partitions)))
            for p in partitions:  # the daemon's resume: seek inside the callback
                consumer.seek(p, 0)

        consumer = FetchProcess(
            KafkaConnection(kafka_bootstrap, kafka_client,
                            {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}),
            ConsumerSettings(topic, group, max_records=50, max_wait_s=0.2),
            on_revoke=revoked, on_assign=assigned)
        consumers.append(consumer)
        return consumer

    a = member("a")
    try:
        deadline = time.monotonic() + 60
        while not a.assignment and time.monotonic() < deadline:
            a.mark_processed(a.poll_batch())
        assert a.assignment == {0, 1, 2, 3}
        assert ("a", "assign", {0, 1, 2, 3}) in calls
        b = member("b")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (a.assignment and b.assignment
                                                   and len(a.assignment | b.assignment) == 4):
            a.mark_processed(a.poll_batch())
            b.mark_processed(b.poll_batch())
        assert a.assignment and b.assignment
        assert a.assignment.isdisjoint(b.assignment)
        assert any(who == "a" and kind == "revoke" for who, kind, _ in calls)
        assert any(who == "b" and kind == "assign" for who, kind, _ in calls)
        # a's records of partitions it gave up: processed() forgot them
        assert set(a.processed()) <= a.assignment
    finally:
        for consumer in consumers:
            consumer.close()


def test_errors_in_the_child_are_raised_here_and_a_dead_child_is_a_client_error(kafka_bootstrap,
                                                                                 topic):
    consumer = FetchProcess(KafkaConnection(kafka_bootstrap),
                            ConsumerSettings(topic, f"{topic}-g", max_records=10,
                                             max_wait_s=0.1, partitions=(0, 1, 2, 3)))
    try:
        consumer.poll_batch()
        with pytest.raises(ValueError, match="Unassigned partition"):  # kafka-python's own
            consumer.seek(9, 0)
        assert consumer.poll_batch() == []  # the child goes on after an error
        os.kill(consumer.pid, signal.SIGKILL)
        with pytest.raises(ClientError, match="fetch process .* (died|is gone)") as caught:
            for _ in range(3):
                consumer.poll_batch()
        assert caught.value.retriable is False
    finally:
        consumer.close()


def test_the_child_ends_with_its_parent(kafka_bootstrap, topic):
    script = (
        "import sys, time\n"
        "from stream.clients import ConsumerSettings, KafkaConnection\n"
        "from stream.clients.fetcher import FetchProcess\n"
        f"c = FetchProcess(KafkaConnection({kafka_bootstrap!r}), ConsumerSettings({topic!r}, "
        "'g', max_wait_s=0.1, partitions=(0,)))\n"
        "c.poll_batch()\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
