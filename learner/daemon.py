"""The learner daemon: consume micro-batches, dead-letter the invalid, test-then-train, commit.

One loop, one thread (the consumer's): poll a micro-batch, decode and validate it, send the
invalid records to the dead-letter topic, let the :class:`~learner.trainer.OnlineLearner`
score then train on the valid ones, mark the batch processed, and commit offsets on a timer
(after flushing dead letters, so a committed offset never skips an unwritten dead letter),
on revoke and on stop. :meth:`Daemon.stop` (wired to SIGINT/SIGTERM by the CLI) sets a flag;
the loop finishes the batch in hand, commits and closes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping

from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry

from learner.config import Config
from learner.monitoring import Metrics
from learner.trainer import OnlineLearner
from stream.admin import create_topic
from stream.consumer import BatchConsumer
from stream.dlq import DeadLetterQueue
from stream.event import decode_batch

logger = logging.getLogger(__name__)


class Daemon:
    """Runs an :class:`OnlineLearner` on a Kafka topic until stopped or done."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        learner: OnlineLearner | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self.learner = learner or OnlineLearner(config.learner_settings())
        self._stop = threading.Event()
        self._targets: dict[int, int] | None = None
        self._targets_lock = threading.Lock()
        self._last_commit = self._last_progress = time.monotonic()
        self._consumed_at_progress = 0
        self._first_batch_at: float | None = None
        self.consumer: BatchConsumer | None = None
        self.dlq: DeadLetterQueue | None = None

    # -- control, callable from any thread ------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit and return."""
        self._stop.set()

    def finish_at(self, end_offsets: Mapping[int, int]) -> None:
        """Return once every partition has been processed up to ``end_offsets``."""
        with self._targets_lock:
            self._targets = dict(end_offsets)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        """Consume until stopped, done or idle; return the totals."""
        cfg = self.config
        create_topic(cfg.bootstrap, cfg.dead_letter_topic, partitions=1)
        self.dlq = DeadLetterQueue(cfg.bootstrap, cfg.dead_letter_topic)
        self.consumer = BatchConsumer(
            cfg.bootstrap, cfg.topic, cfg.group,
            max_records=cfg.batch_size, max_wait_s=cfg.batch_timeout_s,
            on_revoke=lambda _revoked: self.commit(),
        )
        if cfg.until_end:
            self.finish_at(self.consumer.end_offsets())
        last_records = time.monotonic()
        try:
            while not self._stop.is_set():
                records = self.consumer.poll_batch()
                now = time.monotonic()
                if records:
                    if self._first_batch_at is None:
                        self._first_batch_at = now
                    self.process(records)
                    last_records = now
                if now - self._last_commit >= cfg.commit_interval_s:
                    self.commit()
                if now - self._last_progress >= cfg.progress_interval_s:
                    self._progress(now)
                if self._done():
                    logger.info("all target offsets processed")
                    break
                if cfg.idle_timeout_s and now - last_records >= cfg.idle_timeout_s:
                    logger.info("no records for %.1f s: stopping", cfg.idle_timeout_s)
                    break
            self.commit()
        finally:
            self._progress(time.monotonic())
            self.consumer.close()
            self.dlq.close()
        totals = self.metrics.totals()
        first = self._first_batch_at
        totals["seconds"] = time.monotonic() - first if first is not None else 0.0
        return totals

    def process(self, records: list[ConsumerRecord]) -> None:
        """Dead-letter the invalid records of a micro-batch, test-then-train on the rest."""
        m = self.metrics
        with m.batch_duration.time():
            batch = decode_batch([r.value for r in records], self.config.max_value_bytes)
            for rejected in batch.rejected:
                self.dlq.send(records[rejected.index], rejected.reason, rejected.detail)
                m.events_invalid.labels(rejected.reason.value).inc()
            result = self.learner.learn_many(batch)
        m.events_consumed.inc(len(records))
        for name, count in result.counts.items():
            m.events_labelled.labels(name).inc(count)
        m.batches.inc()
        m.sampled.inc(result.sampled)
        for branch, count in result.branches.items():
            m.ig_branch.labels(branch).inc(count)
        if result.vague_total:
            m.vague_positive_share.set(result.vague_positive / result.vague_total)
        m.train_steps.inc(result.steps)
        if not math.isnan(result.loss):
            m.loss.set(result.loss)
        if len(batch):
            m.freshness.set(time.time() - batch.ts_ms.max() / 1000.0)
        self.consumer.mark_processed(records)

    def commit(self) -> None:
        """Flush dead letters, then commit processed offsets."""
        self.dlq.flush()
        if self.consumer.commit():
            self.metrics.commits.inc()
        self._last_commit = time.monotonic()

    # -- reporting ------------------------------------------------------------------------
    def _done(self) -> bool:
        with self._targets_lock:
            targets = self._targets
        if targets is None:
            return False
        assignment = self.consumer.assignment
        if not assignment:
            return False
        positions = self.consumer.positions()
        return all(positions[p] >= targets.get(p, 0) for p in positions)

    def _progress(self, now: float) -> None:
        m = self.metrics
        for (window, target), value in self.learner.evaluator.values().items():
            if not math.isnan(value):
                m.auc.labels(window, target).set(value)
        m.idmap_size.labels("user").set(len(self.learner.users))
        m.idmap_size.labels("video").set(len(self.learner.videos))
        lag = self.consumer.lag() if self.consumer else {}
        for partition, value in lag.items():
            m.consumer_lag.labels(str(partition)).set(value)
        totals = m.totals()
        rate = (totals["consumed"] - self._consumed_at_progress) / max(
            now - self._last_progress, 1e-9
        )
        self._consumed_at_progress = totals["consumed"]
        auc = self.learner.evaluator.values()
        logger.info(
            "events %d (%.0f/s) | accepted %d dead-lettered %d | AUC dwell %.3f/%.3f "
            "explicit %.3f/%.3f (window/run) | lag %d",
            totals["consumed"], rate, totals["accepted"],
            totals["dead_lettered"], auc[("short", "dwell")], auc[("run", "dwell")],
            auc[("short", "explicit")], auc[("run", "explicit")], sum(lag.values()),
        )
        self._last_progress = now
