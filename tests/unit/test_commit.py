"""The commit protocol (learner.service.commit) on fakes: a consumer that records its
commits, a dead-letter queue and a checkpointer that fail when told, a real Prometheus
registry per test. No broker: what the fault tests show end to end, step by step."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from learner.service.checkpoint import CheckpointError
from learner.service.commit import BarrierCommitProtocol, CommitProtocol
from learner.service.monitoring import Metrics
from stream.dlq import DeadLetterError
from stream.errors import ClientError


class FakeConsumer:
    """Tracks processed offsets like a BatchConsumer; records commits and seeks."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.commits: list[tuple[dict[int, int], bool]] = []
        self.seeks: list[tuple[int, int]] = []
        self.failing = 0  # blocking commits still to fail

    def mark_processed(self, records) -> None:
        for r in records:
            self.next[r.partition] = max(self.next.get(r.partition, 0), r.offset + 1)

    def processed(self) -> dict[int, int]:
        return dict(self.next)

    def commit(self, offsets=None, blocking=True) -> bool:
        if blocking and self.failing:
            self.failing -= 1
            raise ClientError("KafkaConnectionError: the broker is away")
        self.commits.append((dict(self.next) if offsets is None else dict(offsets), blocking))
        return True

    def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.next[partition] = offset


class FakeDeadLetters:
    """Counts the letters acknowledged; ``failing`` flushes raise."""

    def __init__(self) -> None:
        self.written = self.truncated = 0
        self.pending = 0
        self.failing = 0

    def flush(self) -> None:
        if self.failing:
            self.failing -= 1
            raise DeadLetterError(f"{self.pending} dead letters not written (sent again)")
        self.written += self.pending
        self.pending = 0


class FakeCheckpointer:
    """Keeps what it is asked to save; ``failing`` saves raise."""

    def __init__(self) -> None:
        self.saved: list[dict] = []
        self.failing = 0

    def save(self, state: dict) -> Path:
        if self.failing:
            self.failing -= 1
            raise CheckpointError("cannot write checkpoint in /ckpt: [Errno 28] No space left")
        self.saved.append(state)
        return Path(f"/ckpt/ckpt-{len(self.saved):010d}.pt")


def records(partition: int, offsets: range) -> list[SimpleNamespace]:
    return [SimpleNamespace(partition=partition, offset=o) for o in offsets]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


def protocol(registry, checkpointer=None, **kwargs) -> CommitProtocol:
    clock = Clock()
    commits = CommitProtocol(Metrics(registry), checkpointer, state=lambda: {"model": "m"},
                             topic="events", group="g", consumer=FakeConsumer(),
                             dlq=FakeDeadLetters(), clock=clock, sleep=clock.sleep, **kwargs)
    return commits


def test_a_failed_dead_letter_flush_holds_the_commit_until_the_letters_are_written(registry):
    commits = protocol(registry)
    commits.mark_processed(records(0, range(10)))
    commits.dlq.pending, commits.dlq.failing = 3, 1
    assert commits.commit() is False
    assert commits.consumer.commits == []  # nothing committed past an unwritten letter
    assert value(registry, "dwell_dead_letter_failures_total") == 1
    assert value(registry, "dwell_dead_letters_written_total") == 0
    assert commits.uncommitted() == {0: 10}
    assert commits.commit() is True  # the next commit waits for the letters sent again
    assert commits.consumer.commits == [({0: 10}, True)]
    assert value(registry, "dwell_dead_letters_written_total") == 3
    assert value(registry, "dwell_offset_commits_total") == 1
    assert commits.uncommitted() == {}


def test_a_failed_checkpoint_holds_the_commit_and_the_next_one_commits(registry):
    checkpointer = FakeCheckpointer()
    seen = []
    commits = protocol(registry, checkpointer, on_checkpoint=lambda o, p: seen.append((o, p)))
    commits.resume = {3: 7}  # a partition of the loaded checkpoint, not assigned now
    commits.mark_processed(records(0, range(5)))
    checkpointer.failing = 1
    assert commits.commit() is False
    assert commits.consumer.commits == [] and checkpointer.saved == [] and seen == []
    assert value(registry, "dwell_checkpoint_failures_total") == 1
    assert value(registry, "dwell_checkpoint_healthy") == 0
    assert commits.since_checkpoint == 5  # those events are still to be checkpointed
    commits.mark_processed(records(0, range(5, 8)))
    assert commits.commit() is True
    assert checkpointer.saved == [{"format": 1, "topic": "events", "offsets": {3: 7, 0: 8},
                                   "learner": {"model": "m"}}]
    assert seen == [({3: 7, 0: 8}, Path("/ckpt/ckpt-0000000001.pt"))]
    assert commits.consumer.commits == [({3: 7, 0: 8}, True)]  # the checkpoint's offsets
    assert value(registry, "dwell_checkpoint_healthy") == 1
    assert commits.since_checkpoint == 0
    assert commits.commit() is True  # nothing new: no checkpoint, the same offsets again
    assert len(checkpointer.saved) == 1 and len(commits.consumer.commits) == 2


def test_a_revoke_mid_batch_commits_what_was_processed_and_the_partition_resumes_there(
        registry):
    commits = protocol(registry, FakeCheckpointer())
    consumer = commits.consumer
    commits.mark_processed(records(0, range(20)) + records(1, range(30)))
    assert commits.commit() is True
    commits.mark_processed(records(1, range(30, 40)))  # half of the next batch
    commits.on_revoke({1})
    assert consumer.commits[-1] == ({0: 20, 1: 40}, False)  # sent without waiting
    assert commits.resume == {0: 20, 1: 40}
    assert commits.uncommitted() == {}  # partition 1 is counted afresh if it comes back
    del consumer.next[1]  # the client gave it up
    consumer.next[1] = 12  # another member's older commit, where the client would start
    commits.on_assign({1, 2})
    assert consumer.seeks == [(1, 40)]  # where this learner's state stands, not 12
    assert consumer.processed()[1] == 40


def test_a_failed_blocking_commit_returns_false_and_the_next_commit_sends_it(registry):
    commits = protocol(registry)
    commits.mark_processed(records(0, range(4)))
    commits.consumer.failing = 1
    assert commits.commit() is False
    assert commits.uncommitted() == {0: 4}
    assert commits.commit() is True
    assert commits.consumer.commits == [({0: 4}, True)]
    assert commits.uncommitted() == {}


def test_a_non_blocking_commit_is_not_counted_as_committed(registry):
    commits = protocol(registry)
    commits.mark_processed(records(2, range(100, 110)))
    assert commits.commit(blocking=False) is True
    assert commits.uncommitted() == {2: 10}  # its answer is unknown: not claimed


def test_the_final_commit_gives_up_at_its_deadline_and_reports_what_is_uncommitted(
        registry, caplog):
    commits = protocol(registry)
    commits.mark_processed(records(3, range(120)) + records(0, range(1)))
    commits.dlq.failing = 1_000
    with caplog.at_level(logging.ERROR, logger="learner.service.commit"):
        assert commits.final_commit(timeout_s=5.0) is False
    assert commits._clock() == 105.0  # once a second until the deadline
    assert value(registry, "dwell_dead_letter_failures_total") == 6
    assert commits.consumer.commits == []
    assert commits.uncommitted() == {3: 120, 0: 1}
    assert "stopping without committing the last offsets (partition 0: 1 event, " \
           "partition 3: 120 events)" in caplog.text
    assert "group g" in caplog.text


def test_the_final_commit_retries_until_it_succeeds(registry):
    commits = protocol(registry)
    commits.mark_processed(records(0, range(3)))
    commits.dlq.failing = 2
    assert commits.final_commit(timeout_s=30.0) is True
    assert commits.consumer.commits == [({0: 3}, True)]
    assert commits.uncommitted() == {}


class OneRank:
    """The collectives of a job of one rank (or of rank 0 among peers that echo it)."""

    leader, world_size = True, 1

    def __init__(self, peers: list[dict] | None = None) -> None:
        self.peers = peers or []
        self.calls: list[str] = []

    def exchange(self, obj):
        self.calls.append("exchange")
        return [obj, *self.peers]

    def gather(self, obj):
        self.calls.append("gather")
        return [obj]

    def broadcast(self, obj=None):
        self.calls.append("broadcast")
        return obj


def rank_protocol(registry, checkpointer, ranks) -> BarrierCommitProtocol:
    clock = Clock()
    commits = BarrierCommitProtocol(
        Metrics(registry), checkpointer, state=lambda: {"model": "m"}, topic="events",
        group="g", consumer=FakeConsumer(), dlq=FakeDeadLetters(), clock=clock,
        sleep=clock.sleep)
    commits.join(ranks, [0, 2], sync=lambda: ranks.calls.append("sync"),
                 local_state=lambda: {"seen": 1})
    return commits


def test_a_barrier_commit_writes_one_checkpoint_of_every_rank_and_commits_its_own(registry):
    checkpointer = FakeCheckpointer()
    ranks = OneRank(peers=[{"flushed": True, "offsets": {1: 9}, "since": 0}])
    commits = rank_protocol(registry, checkpointer, ranks)
    commits.resume = {0: 3, 1: 4, 2: 5, 3: 6}  # a checkpoint of a job of other ranks
    commits.mark_processed(records(0, range(3, 10)))
    assert commits.commit() is True
    assert ranks.calls == ["sync", "exchange", "gather", "broadcast"]
    assert checkpointer.saved == [{
        "format": 2, "topic": "events", "offsets": {0: 10, 1: 9, 2: 5, 3: 6},
        "learner": {"model": "m"}, "ranks": [{"seen": 1}], "world_size": 1}]
    assert commits.consumer.commits == [({0: 10, 2: 5}, True)]  # its own partitions only


def test_a_barrier_commit_fails_on_every_rank_when_one_rank_could_not_flush(registry):
    checkpointer = FakeCheckpointer()
    ranks = OneRank(peers=[{"flushed": False, "offsets": {1: 9}, "since": 4}])
    commits = rank_protocol(registry, checkpointer, ranks)
    commits.mark_processed(records(0, range(3)))
    assert commits.commit() is False
    assert checkpointer.saved == [] and commits.consumer.commits == []
    assert ranks.calls == ["sync", "exchange"]  # no checkpoint collective


def test_a_barrier_commit_reports_rank_0s_checkpoint_failure_and_tries_a_count_of_times(
        registry):
    checkpointer = FakeCheckpointer()
    checkpointer.failing = 1_000
    ranks = OneRank()
    commits = rank_protocol(registry, checkpointer, ranks)
    commits.mark_processed(records(2, range(6)))
    assert commits.final_commit(timeout_s=3.5) is False
    assert ranks.calls.count("exchange") == 3  # every rank tries as often, whatever the time
    assert value(registry, "dwell_checkpoint_failures_total") == 3
    assert commits.consumer.commits == []
    assert commits.uncommitted() == {2: 6}


def test_a_rank_whose_own_offset_commit_failed_agrees_with_the_others(registry):
    ranks = OneRank()
    commits = rank_protocol(registry, None, ranks)
    commits.mark_processed(records(0, range(2)))
    commits.consumer.failing = 1
    assert commits.commit() is True  # the ranks' common outcome; sent again next time
    assert commits.uncommitted() == {0: 2}
    assert commits.commit() is True and commits.uncommitted() == {}
