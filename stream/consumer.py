"""Micro-batches from a Kafka topic: a consumer in a group with manual offset commits.

The consumer tracks, per partition, the next offset after the records the caller has marked
processed (:meth:`BatchConsumer.mark_processed`) and commits exactly those. On a rebalance it
calls the owner's ``on_revoke`` before giving partitions up, so the owner can finish and
commit what it holds (quixstreams' "commit on revoke").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

logger = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        logger.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
        if self.owner.on_revoke is not None:
            self.owner.on_revoke(set(revoked))
        for tp in revoked:
            self.owner._next.pop(tp, None)
            self.owner._committed.pop(tp, None)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        if self.owner.on_assign is not None:
            self.owner.on_assign({tp.partition for tp in assigned})


class BatchConsumer:
    """Polls micro-batches of at most ``max_records`` records or ``max_wait_s`` seconds."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        max_records: int = 1024,
        max_wait_s: float = 0.5,
        client_config: Mapping[str, Any] | None = None,
        on_revoke: Callable[[set[TopicPartition]], None] | None = None,
        on_assign: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.topic = topic
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._consumer = KafkaConsumer(**{
            "auto_offset_reset": "earliest", "client_id": f"dwell-{group}",
            **dict(client_config or {}),
            "bootstrap_servers": bootstrap.split(","), "group_id": group,
            "enable_auto_commit": False, "max_poll_records": max_records,
        })
        self._consumer.subscribe([topic], listener=_Listener(self))

    def poll_batch(self) -> list[ConsumerRecord]:
        """Records until the batch is full or ``max_wait_s`` has passed (maybe none)."""
        deadline = time.monotonic() + self.max_wait_s
        out: list[ConsumerRecord] = []
        while len(out) < self.max_records:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            polled = self._consumer.poll(
                timeout_ms=remaining_ms, max_records=self.max_records - len(out)
            )
            for records in polled.values():
                out.extend(records)
        return out

    def mark_processed(self, records: Iterable[ConsumerRecord]) -> None:
        """Record that these records are done: their offsets may be committed."""
        self._next.update({TopicPartition(r.topic, r.partition): r.offset + 1 for r in records})

    def seek(self, partition: int, offset: int) -> None:
        """Continue ``partition`` from ``offset`` (an assigned partition)."""
        tp = TopicPartition(self.topic, partition)
        self._consumer.seek(tp, offset)
        self._next[tp] = offset

    def processed(self) -> dict[int, int]:
        """Next offset after the processed records (or the seek), per assigned partition."""
        return {tp.partition: off for tp, off in self._next.items()}

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        """Commit ``offsets`` (default: the processed ones) where they moved; True if any.

        ``blocking=False`` sends the commit without waiting: the only kind allowed inside a
        rebalance callback, which kafka-python runs on its IO thread.
        """
        chosen = (
            dict(self._next) if offsets is None
            else {TopicPartition(self.topic, p): off for p, off in offsets.items()}
        )
        pending = {tp: off for tp, off in chosen.items() if self._committed.get(tp) != off}
        if not pending:
            return False
        request = {tp: OffsetAndMetadata(off, "", -1) for tp, off in pending.items()}
        if blocking:
            self._consumer.commit(request)
        else:
            self._consumer.commit_async(request)
        self._committed.update(pending)
        return True

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def positions(self) -> dict[int, int]:
        """Next offset to be returned, per assigned partition."""
        return {tp.partition: self._consumer.position(tp) for tp in self.assignment}

    def end_offsets(self) -> dict[int, int]:
        """Current end offsets of every partition of the topic."""
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        return {tp.partition: off for tp, off in self._consumer.end_offsets(tps).items()}

    def lag(self) -> dict[int, int]:
        """Records between processed position and the high watermark, per assigned partition.

        From the consumer's last fetch responses only: no request is made, so this never
        blocks or fails while the broker is away. A partition not fetched yet is left out.
        """
        out = {}
        for tp in self.assignment:
            high = self._consumer.highwater(tp)
            position = self._next.get(tp)
            if high is not None and position is not None:
                out[tp.partition] = max(0, high - position)
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)
