"""The interface of :mod:`stream.clients` on kafka-python, the default client.

kafka-python's ``ConsumerRecord`` already has the attributes of a
:class:`~stream.clients.Record`, so the consumer hands its records over as they come.
Rebalance callbacks run on kafka-python's IO thread: only ``commit(blocking=False)`` may be
called from them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.base import MemberState
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import KafkaConfigurationError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from stream.clients import DeliveryCallback, batch_wait, unpack
from stream.clients.settings import ConsumerSettings, KafkaConnection
from stream.errors import ClientError, ClientTimeoutError, ConfigError

logger = logging.getLogger(__name__)


def client_error(exc: BaseException, what: str = "") -> ClientError:
    """The ClientError for a kafka-python error (a timeout becomes ClientTimeoutError)."""
    kind = ClientTimeoutError if isinstance(exc, KafkaTimeoutError) else ClientError
    message = f"{what}: {exc!r}" if what else repr(exc)
    error = kind(message, type(exc).__name__, getattr(exc, "retriable", False))
    error.__cause__ = exc
    return error


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Raise kafka-python's errors as ClientError, and its configuration errors as ConfigError."""
    try:
        yield
    except KafkaConfigurationError as exc:
        raise ConfigError(f"Kafka client configuration: {exc}") from exc
    except KafkaError as exc:
        raise client_error(exc, what) from exc


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: KafkaPythonConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked}
        logger.info("partitions revoked: %s", sorted(partitions))
        self.owner._revoked.update(partitions)  # for the poll_batch under way
        if self.owner.on_revoke is not None:
            self.owner.on_revoke(partitions)
        for tp in revoked:
            self.owner._next.pop(tp, None)
            self.owner._committed.pop(tp, None)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        if self.owner.on_assign is not None:
            self.owner.on_assign({tp.partition for tp in assigned})


class _JoinKeepingCoordinator(ConsumerCoordinator):
    """kafka-python 3's group coordinator, made to finish a join that a poll() gave up on.

    kafka-python 3.0 (its coroutine rewrite of the join, dpkp/kafka-python#2955) lost the
    2.x check that a pending join is awaited before deciding there is nothing to join
    (dpkp/kafka-python#1695). A leader that rejoins because the topic's metadata changed
    clears its own reason to rejoin as soon as it computes the assignment; if the poll()
    that sent the JoinGroup times out before the SyncGroup answer, no later poll() applies
    that answer. The member then holds no partitions and sends no heartbeats until the
    broker evicts it: the learner sits idle (seen in CI, one run in three under load). Here
    a join in flight, or finished and not yet applied, counts as a reason to rejoin, and a
    finished one is applied as the library applies one it awaited.
    """

    _join_task: Any  # kafka-python's: the join in flight (an asyncio-like task), or None

    def need_rejoin(self) -> bool:
        return self._join_task is not None or super().need_rejoin()

    async def join_group_async(self, timeout_ms: float | None = None) -> bool:
        task = self._join_task
        if task is not None and task.is_done and task.succeeded():
            self._join_task = None
            with self._lock:
                self.rejoining = False
                self.rejoin_needed = False
                self.state = MemberState.STABLE
                self._enable_heartbeat()
            logger.info("applying a group join that completed after the poll that sent it")
            generation = self._generation
            await self._on_join_complete_async(generation.generation_id, generation.member_id,
                                               generation.protocol, task.value)
        return await super().join_group_async(timeout_ms)


def _keep_joins(consumer: KafkaConsumer) -> None:
    """Give ``consumer`` the join fix of :class:`_JoinKeepingCoordinator` (kafka-python 3)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if type(coordinator) is ConsumerCoordinator and hasattr(coordinator, "_join_task"):
        coordinator.__class__ = _JoinKeepingCoordinator


class KafkaPythonConsumer:
    """Polls micro-batches of at most ``max_records`` records or ``max_wait_s`` seconds."""

    def __init__(
        self,
        connection: KafkaConnection,
        settings: ConsumerSettings,
        *,
        on_revoke: Callable[[set[int]], None] | None = None,
        on_assign: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.topic = topic = settings.topic
        self.max_records = settings.max_records
        self.max_wait_s = settings.max_wait_s
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._revoked: set[int] = set()  # revoked while a poll_batch gathers records
        self._unannounced: set[int] = set()  # assigned, on_assign not called
        try:
            with _translated(f"cannot reach Kafka at {connection.bootstrap}"):
                self._consumer = KafkaConsumer(**{
                    "auto_offset_reset": "earliest", "client_id": f"dwell-{settings.group}",
                    # refresh the metadata every 10 s, not kafka-python's 5 min: a topic's
                    # new partitions (and a topic created after the consumer) show up sooner
                    "metadata_max_age_ms": 10_000,
                    **settings.client_config(connection),
                    "bootstrap_servers": connection.bootstrap.split(","),
                    "group_id": settings.group,
                    "enable_auto_commit": False, "max_poll_records": self.max_records,
                })
        except ValueError as exc:  # kafka-python: unrecognized configs
            raise ConfigError(f"Kafka consumer configuration: {exc}") from exc
        unpack.install(self._consumer)
        if settings.partitions is None:
            _keep_joins(self._consumer)
            self._consumer.subscribe([topic], listener=_Listener(self))
        else:
            self._unannounced = set(settings.partitions)
            self._consumer.assign([TopicPartition(topic, p) for p in settings.partitions])

    @property
    def config(self) -> dict[str, Any]:
        return self._consumer.config

    def poll_batch(self) -> list[ConsumerRecord]:
        if self._unannounced:  # explicit assignment: on_assign once, inside the first poll
            assigned, self._unannounced = self._unannounced, set()
            logger.info("partitions assigned explicitly: %s", sorted(assigned))
            if self.on_assign is not None:
                self.on_assign(assigned)
        deadline = time.monotonic() + self.max_wait_s
        out: list[ConsumerRecord] = []
        self._revoked.clear()
        with _translated("poll"):
            while len(out) < self.max_records:
                wait_s = batch_wait(deadline, self._behind)
                if wait_s is None:
                    break
                try:
                    polled = self._consumer.poll(timeout_ms=max(1, int(wait_s * 1000)),
                                                 max_records=self.max_records - len(out))
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    # the broker is away (a restart): what is in hand goes, the next poll retries
                    logger.warning("poll: %r: polling again", exc)
                    break
                for records in polled.values():
                    out.extend(records)
                if self._revoked:
                    out = self._without_revoked(out)
        return out

    def _behind(self) -> bool:
        """Whether an assigned partition has records in the log past what poll returned, as
        the last fetch's high watermark says (no request is made)."""
        for tp, position in self._consumer._subscription.all_consumed_offsets().items():
            try:
                high = self._consumer.highwater(tp)
            except KafkaError:  # no longer assigned
                continue
            if high is not None and position.offset < high:
                return True
        return False

    def _without_revoked(self, out: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """``out`` less the records of partitions revoked while it was gathered.

        Records polled before a revoke must not be handed out after it: ``on_revoke`` has
        committed what was processed, and the partition may be another member's now. If it
        came back to this consumer, its position is moved back to the lowest offset dropped
        (or kept, where ``on_assign`` sought further back), so nothing is skipped.
        """
        revoked, self._revoked = self._revoked, set()
        first: dict[int, int] = {}
        for r in out:
            if r.partition in revoked:
                first[r.partition] = min(first.get(r.partition, r.offset), r.offset)
        assigned = self._consumer.assignment()
        for partition, offset in first.items():
            tp = TopicPartition(self.topic, partition)
            if tp in assigned and self._consumer.position(tp) > offset:
                self._consumer.seek(tp, offset)
        return [r for r in out if r.partition not in revoked]

    def mark_processed(self, records: Iterable[ConsumerRecord]) -> None:
        last = {r.partition: r.offset + 1 for r in records}  # one TopicPartition a partition
        self._next.update({TopicPartition(self.topic, p): o for p, o in last.items()})

    def seek(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.topic, partition)
        with _translated(f"seek partition {partition}"):
            self._consumer.seek(tp, offset)
        self._next[tp] = offset

    def processed(self) -> dict[int, int]:
        return {tp.partition: off for tp, off in self._next.items()}

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        chosen = (
            dict(self._next) if offsets is None
            else {TopicPartition(self.topic, p): off for p, off in offsets.items()}
        )
        pending = {tp: off for tp, off in chosen.items() if self._committed.get(tp) != off}
        if not pending:
            return False
        request = {tp: OffsetAndMetadata(off, "", -1) for tp, off in pending.items()}
        self._committed.update(pending)  # before sending: an async failure may come at once
        try:
            with _translated("offset commit"):
                if blocking:
                    self._consumer.commit(request)
                else:
                    self._consumer.commit_async(request, callback=self._commit_done)
        except BaseException:
            self._forget(pending)
            raise
        return True

    def _commit_done(self, offsets: dict[TopicPartition, Any], result: Any) -> None:
        """Result of an asynchronous commit: forget a failed one so that it is sent again."""
        if not isinstance(result, BaseException):
            return
        logger.warning("offset commit failed (%r): will retry at the next commit", result)
        self._forget({tp: meta.offset for tp, meta in offsets.items()})

    def _forget(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            if self._committed.get(tp) == off:
                self._committed.pop(tp, None)

    @property
    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def positions(self) -> dict[int, int]:
        with _translated("positions"):
            return {tp.partition: self._consumer.position(tp)
                    for tp in self._consumer.assignment()}

    def committed(self, partitions: Iterable[int]) -> dict[int, int]:
        out = {}
        with _translated("committed offsets"):
            for p in partitions:
                offset = self._consumer.committed(TopicPartition(self.topic, p))
                if offset is not None and offset >= 0:
                    out[p] = offset
        return out

    def end_offsets(self) -> dict[int, int]:
        with _translated("end offsets"):
            partitions = self._consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            return {tp.partition: off for tp, off in self._consumer.end_offsets(tps).items()}

    def lag(self) -> dict[int, int]:
        # from the consumer's last fetch responses only: highwater() makes no request
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._next.get(tp)
            if high is not None and position is not None:
                out[tp.partition] = max(0, high - position)
        return out

    def close(self) -> None:
        with _translated("close"):
            self._consumer.close(autocommit=False)


class KafkaPythonProducer:
    """kafka-python's ``KafkaProducer``, its futures turned into delivery callbacks."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        bootstrap = config.get("bootstrap_servers")
        try:
            with _translated(f"cannot reach Kafka at {bootstrap}"):
                self._producer = KafkaProducer(**config)
        except ValueError as exc:  # kafka-python: unrecognized configs
            raise ConfigError(f"Kafka producer configuration: {exc}") from exc
        self._metadata = self._producer._metadata  # kafka-python's cluster metadata
        self._lock = threading.Lock()
        self._outstanding = 0
        self._closed = False

    @property
    def config(self) -> dict[str, Any]:
        return self._producer.config

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        try:
            # a topic of one partition needs no partitioner (pure-Python murmur2 of the key)
            partitions = self._metadata.partitions_for_topic(topic)
            future = self._producer.send(
                topic, value=value, key=key, headers=headers,
                partition=0 if partitions is not None and len(partitions) == 1 else None)
        except KafkaConfigurationError as exc:
            raise ConfigError(f"Kafka client configuration: {exc}") from exc
        except KafkaError as exc:
            raise client_error(exc, f"produce to {topic}") from exc
        with self._lock:
            self._outstanding += 1
        settled = partial(self._settled, on_delivery)
        future.add_callback(settled)
        future.add_errback(settled)

    def _settled(self, on_delivery: DeliveryCallback | None, outcome: Any) -> None:
        """A record's outcome: its metadata, or the exception it failed with."""
        self._done()
        if on_delivery is not None:
            on_delivery(client_error(outcome) if isinstance(outcome, BaseException) else None)

    def _done(self) -> None:
        with self._lock:
            self._outstanding -= 1

    def flush(self, timeout: float | None = None) -> int:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError:
            pass
        except KafkaError as exc:  # e.g. a producer gone fatal: its batches never complete
            logger.warning("producer flush: %r", exc)
        with self._lock:
            return self._outstanding

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.close(timeout=timeout)
        except KafkaError as exc:
            logger.warning("producer close: %r (records not yet acknowledged are dropped)", exc)
