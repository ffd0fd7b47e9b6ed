"""The popular pool's feed: a thread that tails the events topic into a :class:`PopularityPool`.

It reads every partition of the topic (explicit assignment, no group rebalancing, nothing
committed: each server keeps its own pool), starting ``lookback`` records before each
partition's end so that a fresh server knows what is popular at once, then follows the log.
Records are decoded by the stream package's decoder; one that is not an event is counted by
its reason (``dwell_serving_pool_events_total{outcome=...}``) and skipped: the learner's
dead-letter topic already holds it.
"""

from __future__ import annotations

import collections
import logging
import threading

from learner.bridge import to_ids
from learner.serving.metrics import ServeMetrics
from learner.serving.pool import PopularityPool
from stream.admin import topic_partitions
from stream.clients import BatchConsumer, ConsumerSettings, KafkaConnection, make_consumer
from stream.errors import ClientError
from stream.event import MAX_VALUE_BYTES, decode_batch

logger = logging.getLogger(__name__)


class PoolFeed:
    """Tails ``topic`` into ``pool`` on a thread: :meth:`start`, :meth:`stop`."""

    def __init__(self, connection: KafkaConnection, topic: str, pool: PopularityPool,
                 metrics: ServeMetrics, lookback: int, batch: int = 1024,
                 max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        self.connection, self.topic, self.pool, self.metrics = connection, topic, pool, metrics
        self.lookback, self.batch, self.max_value_bytes = lookback, batch, max_value_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: BatchConsumer | None = None
        self.caught_up = threading.Event()  # set once the look-back has been read

    def start(self) -> PoolFeed:
        """Find the topic's partitions (ClientError if the cluster does not answer) and tail
        them on a thread."""
        partitions = topic_partitions(self.connection.bootstrap, self.topic,
                                      options=self.connection.options)
        settings = ConsumerSettings(self.topic, f"dwell-serve-pool.{self.topic}",
                                    max_records=self.batch, max_wait_s=0.5,
                                    partitions=tuple(partitions))
        self._consumer = make_consumer(self.connection, settings, on_assign=self._seek_back)
        self._thread = threading.Thread(target=self._run, name="dwell-serve-pool", daemon=True)
        self._thread.start()
        return self

    def _seek_back(self, partitions: set[int]) -> None:
        assert self._consumer is not None
        ends = self._consumer.end_offsets()
        self._ends = {p: ends.get(p, 0) for p in partitions}
        for p, end in self._ends.items():
            self._consumer.seek(p, max(0, end - self.lookback))

    def _run(self) -> None:
        assert self._consumer is not None
        counts = self.metrics.pool_events
        while not self._stop.is_set():
            try:
                records = self._consumer.poll_batch()
            except ClientError as exc:  # the client reconnects by itself; say so and go on
                logger.warning("popular pool: reading %s failed (%s); retrying", self.topic, exc)
                self._stop.wait(1.0)
                continue
            if records:
                batch = decode_batch([r.value for r in records], self.max_value_bytes)
                self.pool.add(to_ids(batch.video_id), batch.ts_ms)
                counts.labels("counted").inc(len(batch))
                for reason, n in collections.Counter(
                        r.reason.value for r in batch.rejected).items():
                    counts.labels(reason).inc(n)
            # after the records polled are counted: caught up means in the pool
            if not self.caught_up.is_set() and self._reached_ends():
                self.caught_up.set()

    def _reached_ends(self) -> bool:
        ends = getattr(self, "_ends", None)
        if ends is None:
            return False
        assert self._consumer is not None
        positions = self._consumer.positions()
        return all(positions.get(p, 0) >= end for p, end in ends.items())

    def stop(self) -> None:
        """Stop tailing and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._consumer is not None:
            self._consumer.close()
