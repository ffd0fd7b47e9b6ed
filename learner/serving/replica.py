"""A server's side of the model topic: rebuild the model from the start, then keep applying.

A :class:`Replica` reads the model topic (one partition) from its start on a thread of its
own, feeds every record to a :class:`~learner.serving.builder.ModelBuilder`, and after each
poll that completed a version swaps the new :class:`~learner.serving.model.ServedModel` in.
:meth:`Replica.current` (any thread) returns the latest complete version: an answer scored
on it is one version's, and versions only go up. Any number of replicas may read one topic:
a replica joins no consumer group and commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError

from learner.serving.builder import ModelBuilder
from learner.serving.model import ServedModel
from learner.serving.publisher import TopicState
from stream.admin import topic_partitions
from stream.clients import BatchConsumer, ConsumerSettings, KafkaConnection, make_consumer
from stream.errors import ClientError

logger = logging.getLogger(__name__)

#: Records a replica takes in one poll, and how long a poll waits once caught up.
POLL_RECORDS = 20_000
POLL_WAIT_S = 0.05


def model_consumer(connection: KafkaConnection, topic: str,
                   wait_s: float = POLL_WAIT_S) -> BatchConsumer:
    """A consumer of the model topic's partition from its first record, in no group that
    commits (its group id is only a name: nothing is ever committed under it)."""
    settings = ConsumerSettings(topic, f"{topic}.reader", max_records=POLL_RECORDS,
                                max_wait_s=wait_s, partitions=(0,))
    holder: list[BatchConsumer] = []

    def from_start(partitions: set[int]) -> None:
        for partition in partitions:
            holder[0].seek(partition, 0)

    holder.append(make_consumer(connection, settings, on_assign=from_start))
    return holder[0]


def read_model_topic(connection: KafkaConnection, topic: str,
                     timeout_s: float = 60.0) -> ModelBuilder:
    """The model topic read to the end offsets it has now (a learner at start)."""
    builder = ModelBuilder()
    consumer = model_consumer(connection, topic)
    try:
        end = consumer.end_offsets().get(0, 0)
        deadline = time.monotonic() + timeout_s
        while end and consumer.positions().get(0, -1) < end:
            if time.monotonic() > deadline:
                raise ClientError(f"model topic {topic}: not read to offset {end} in "
                                  f"{timeout_s:.0f} s")
            for record in consumer.poll_batch():
                builder.add(record.key, record.value)
    finally:
        consumer.close()
    return builder


def topic_state(builder: ModelBuilder) -> TopicState:
    """What a learner needs of the topic a builder read."""
    return TopicState(builder.newest_version(), frozenset(builder.keys()), builder.layout,
                      int(builder.info.get("newest_event_ms", 0)))


class Replica:
    """The model of a model topic, kept up to date on a thread of its own."""

    def __init__(self, connection: KafkaConnection, topic: str,
                 on_version: Callable[[ServedModel, float], None] | None = None,
                 wait_s: float = POLL_WAIT_S, retry_s: float = 0.5) -> None:
        """Tail ``topic`` (a model topic) through ``connection``; ``on_version(model, at)``
        is called on the replica's thread with every version swapped in and the time
        (``time.time()``) it became current."""
        self.connection, self.topic = connection, topic
        self.on_version, self.wait_s, self.retry_s = on_version, wait_s, retry_s
        self.builder = ModelBuilder()
        self.caught_up = threading.Event()  # read to the end offset seen at start
        self.swapped_at = 0.0  # when the current version became current (time.time())
        self._model: ServedModel | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # polls that failed (broker away): retried

    # -- any thread ------------------------------------------------------------------------
    def current(self) -> ServedModel | None:
        """The latest complete version, or None before the first."""
        return self._model

    @property
    def version(self) -> int:
        model = self._model
        return model.version if model is not None else 0

    def model_age_s(self, now: float | None = None) -> float | None:
        """Seconds from the newest event the current version trained on to ``now``."""
        model = self._model
        if model is None or model.newest_event_ms <= 0:
            return None
        return (time.time() if now is None else now) - model.newest_event_ms / 1000.0

    def wait_for(self, version: int, timeout: float) -> ServedModel | None:
        """Wait until a version at least ``version`` is current; it, or None at timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.version < version:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
        return self._model

    def start(self) -> Replica:
        self._thread = threading.Thread(target=self._run, name="dwell-replica", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the replica's thread ----------------------------------------------------------------
    def _run(self) -> None:
        consumer: BatchConsumer | None = None
        end = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    # not before the learner made it: a consumer would have the broker
                    # create it, uncompacted
                    topic_partitions(self.connection.bootstrap, self.topic, self.retry_s,
                                     self.connection.options)
                    consumer = model_consumer(self.connection, self.topic, self.wait_s)
                    end = consumer.end_offsets().get(0, 0)
                self._apply(consumer.poll_batch())
                if not self.caught_up.is_set() and consumer.positions().get(0, -1) >= (end or 0):
                    self.caught_up.set()
            except (ClientError, KafkaError) as exc:
                self.failures += 1
                logger.warning("model topic %s: %r; retrying in %.1f s", self.topic, exc,
                               self.retry_s)
                self._stop.wait(self.retry_s)
        if consumer is not None:
            consumer.close()

    def _apply(self, records) -> None:  # noqa: ANN001 - a consumer's records
        completed = False
        for record in records:
            completed |= self.builder.add(record.key, record.value)
        if not completed:
            return
        model = self.builder.current()
        if model is None:
            return
        with self._changed:
            self._model, self.swapped_at = model, time.time()
            self._changed.notify_all()
        logger.debug("model version %d current (%d users, %d videos)", model.version,
                     model.n_users, model.n_videos)
        if self.on_version is not None:
            self.on_version(model, self.swapped_at)
