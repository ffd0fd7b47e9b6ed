"""The learner daemon: consume micro-batches, dead-letter the invalid, test-then-train, commit.

One loop, one thread (the consumer's): poll a micro-batch, decode and validate it, send the
invalid records to the dead-letter topic, let the :class:`~learner.core.trainer.OnlineLearner`
score then train on the valid ones, and mark the batch processed. :meth:`Daemon.stop`
(wired to SIGINT/SIGTERM by the CLI) sets a flag; the loop finishes the batch in hand,
commits and closes.

Without a checkpoint folder, offsets are committed on a timer, on revoke and on stop, after
the batch is trained and its dead letters are flushed. With one (``checkpoint_dir``), the
unit of progress is the checkpoint: every ``checkpoint_every`` events or
``checkpoint_interval_s`` seconds, on revoke and on stop, the learner state and the next
offset of every owned partition are written atomically, and only then committed. On start
the newest readable checkpoint is loaded, and each partition it holds is resumed from its
offset when assigned, so the model state after a crash equals the state after exactly the
events up to the checkpoint. A checkpoint or a dead letter that cannot be written is logged
as an error and counted; offsets stay uncommitted until the next attempt succeeds. Those
steps, and what a run's ending reports as committed, are the commit protocol's
(:class:`~learner.service.commit.CommitProtocol`), which the daemon hands its consumer and
dead-letter queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from learner.bridge import to_events
from learner.core.drift import SIGNALS, DriftMonitor
from learner.core.labels import POSITIVE, VAGUE
from learner.core.trainer import BatchResult, OnlineLearner
from learner.service.checkpoint import Checkpointer
from learner.service.commit import CommitProtocol
from learner.service.config import Config
from learner.service.monitoring import AUC_WINDOWS, TARGETS, WINDOWS, Metrics
from learner.service.runtime_tuning import tuned
from learner.serving.publisher import Publisher
from stream.clients import BatchConsumer, make_consumer
from stream.clients import Record as ConsumerRecord
from stream.dlq import DeadLetterQueue, create_dead_letter_topic
from stream.errors import ClientError  # what either Kafka client raises
from stream.event import EventBatch, decode_batch

logger = logging.getLogger(__name__)

#: How often a learner done with its own partitions asks for the group's committed offsets
#: of the others (``--until-end``, :meth:`Daemon.finish_at`).
GROUP_CHECK_INTERVAL_S = 1.0


class Daemon:
    """Runs an :class:`OnlineLearner` on a Kafka topic until stopped or done."""

    #: The commit protocol of this kind of daemon.
    commit_protocol: type[CommitProtocol] = CommitProtocol

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
        self._explicit = False  # partitions assigned explicitly (ranks), not by the group
        self._group_checked_at = -math.inf
        self._last_progress = time.monotonic()
        self._consumed_at_progress = 0
        self._first_batch_at: float | None = None
        self.checkpointer = (
            Checkpointer(config.checkpoint_dir, config.checkpoint_keep)
            if config.checkpoint_dir else None
        )
        self.commits = self.commit_protocol(
            self.metrics, self.checkpointer, state=self.learner.state_dict, topic=config.topic,
            group=config.group, settle=self.settle, on_checkpoint=self._checkpointed)
        self._audit = open(config.audit_log, "a", buffering=1) if config.audit_log else None  # noqa: SIM115
        self.drift = DriftMonitor(config.drift_detector, config.drift_chunk)
        self.metrics.info.info({"model": config.model, "loss": config.loss, "meta": config.meta,
                                "drift_detector": config.drift_detector})
        self._runlog = None
        self._last_records = time.monotonic()
        self._decode_seconds = 0.0
        self._training: tuple[float, np.ndarray | None] = (0.0, None)  # of the batch training
        self.publisher: Publisher | None = None  # of the model topic (publish_interval_s)

    @property
    def consumer(self) -> BatchConsumer | None:
        """The consumer, once opened (the commit protocol's)."""
        return self.commits.consumer

    @consumer.setter
    def consumer(self, consumer: BatchConsumer | None) -> None:
        self.commits.consumer = consumer

    @property
    def dlq(self) -> DeadLetterQueue | None:
        """The dead-letter queue, once opened (the commit protocol's)."""
        return self.commits.dlq  # type: ignore[return-value]

    @dlq.setter
    def dlq(self, dlq: DeadLetterQueue | None) -> None:
        self.commits.dlq = dlq

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
        with tuned(self.config.gc_threshold, self.config.switch_interval_s):
            self._open()
            try:
                while self._iterate():
                    pass
                self._final_commit()
                uncommitted = self.commits.uncommitted()
            finally:
                self._progress(time.monotonic())
                self._close()
        totals = self.metrics.totals()
        totals["uncommitted"] = uncommitted
        first = self._first_batch_at
        totals["seconds"] = time.monotonic() - first if first is not None else 0.0
        if self._runlog is not None:
            self._append(self._runlog, {"kind": "stop", "time": time.time(), "totals": totals})
            self._runlog.close()
        return totals

    def _open(self, partitions: list[int] | None = None) -> None:
        """Restore, then connect: the dead-letter producer and the consumer (of the group's
        share of the topic, or of exactly ``partitions``)."""
        cfg = self.config
        self._explicit = partitions is not None
        self._write_audit("start", {}, pid=os.getpid())
        self._open_run_log()
        self._restore()
        limit = create_dead_letter_topic(cfg.bootstrap, cfg.topic, cfg.dead_letter_topic,
                                         options=cfg.client_options())
        self.dlq = DeadLetterQueue(cfg.bootstrap, cfg.dead_letter_topic, cfg.client_options(),
                                   client=cfg.client, process=cfg.uses_client_process(),
                                   max_message_bytes=limit)
        self.consumer = make_consumer(
            cfg.connection,
            dataclasses.replace(cfg.consumer,
                                partitions=None if partitions is None else tuple(partitions)),
            on_revoke=self.commits.on_revoke, on_assign=self.commits.on_assign)
        if cfg.until_end:
            self.finish_at(self.consumer.end_offsets())
        self._open_publisher()
        self._last_records = time.monotonic()

    def _open_publisher(self, track: bool = True) -> None:
        """Publish the model (the whole of it first) to the model topic, if configured."""
        cfg = self.config
        if cfg.publish_interval_s > 0:
            from learner.serving.topic import open_publisher

            self.publisher = open_publisher(
                cfg.connection, cfg.model_topic_name, self.learner, cfg.publish_interval_s,
                track=track, process=cfg.uses_client_process())
            self.publisher.publish(self.commits.offsets())

    def _publish_due(self, now: float) -> None:
        """Publish a version of the model when one is due."""
        if self.publisher is not None and self.publisher.due(now):
            self.settle()
            self.publisher.publish(self.commits.offsets())

    def _iterate(self) -> bool:
        """One micro-batch: poll, process, commit and report when due; False to stop."""
        if self._stop.is_set():
            return False
        records = self.consumer.poll_batch()
        now = time.monotonic()
        if records:
            self.process(records)
        if self._commit_due(now):
            self.commit()
        self._publish_due(now)
        if now - self._last_progress >= self.config.progress_interval_s:
            self._progress(now)
        if self._done(full_batch=len(records) >= self.config.batch_size):
            logger.info("all target offsets processed")
            return False
        return not self._idle(now)

    def _idle(self, now: float) -> bool:
        timeout = self.config.idle_timeout_s
        if timeout and now - self._last_records >= timeout:
            logger.info("no records for %.1f s: stopping", timeout)
            return True
        return False

    def _close(self) -> None:
        self.settle()
        if self.publisher is not None:  # the last version: the model as it stops
            self.publisher.close(self.commits.offsets() if self.consumer is not None else None)
        self.learner.close()
        if self.consumer is not None:
            self.consumer.close()
        if self.dlq is not None:
            self.dlq.close()
        if self._audit is not None:
            self._audit.close()

    def process(self, records: list[ConsumerRecord]) -> None:
        """Dead-letter the invalid records of a micro-batch, test-then-train on the rest."""
        self.learn(records, self.decode(records))

    def decode(self, records: list[ConsumerRecord]) -> EventBatch:
        """The valid events of ``records``; the invalid ones go to the dead-letter topic."""
        started = time.perf_counter()
        batch = decode_batch([r.value for r in records], self.config.max_value_bytes)
        for rejected in batch.rejected:
            self.dlq.send(records[rejected.index], rejected.reason, rejected.detail)
        # once per reason: a labelled child's lookup costs ~10 us, as much as a dead letter
        for reason, count in Counter(r.reason.value for r in batch.rejected).items():
            self.metrics.events_invalid.labels(reason).inc(count)
        self._decode_seconds = time.perf_counter() - started
        return batch

    def learn(self, records: list[ConsumerRecord], batch: EventBatch, rows=None, steps=None,
              after_step=None) -> None:
        """Test-then-train on the valid events of ``records``; count; mark them processed.

        ``rows``, ``steps`` and ``after_step`` go to :meth:`OnlineLearner.learn_many`.
        """
        m = self.metrics
        now = time.monotonic()
        if self._first_batch_at is None and records:
            self._first_batch_at = now
        if records:
            self._last_records = now
        self.settle()  # the batch before, if it trained in the background
        started = time.perf_counter()
        result = self.learner.learn_many(to_events(batch), rows=rows, steps=steps,
                                         after_step=after_step,
                                         background=self.config.background_training)
        seconds = self._decode_seconds + time.perf_counter() - started
        record_ms = (np.fromiter((r.timestamp for r in records), np.float64, len(records))
                     if len(batch) else None)
        if self.learner.training:
            self._training = (seconds, record_ms)
        else:
            self._publish_training(result, seconds, record_ms)
        m.events_consumed.inc(len(records))
        if self.publisher is not None:
            self.publisher.saw(batch.ts_ms)
        if len(batch):
            m.freshness.set(time.time() - batch.ts_ms.max() / 1000.0)
            self._watch_drift(result.scores, result.classes)
        for name, count in result.counts.items():
            m.events_labelled.labels(name).inc(count)
        m.batches.inc()
        m.sampled.inc(result.sampled)
        for table, count in result.evicted.items():
            if count:
                m.idmap_evictions.labels(table).inc(count)
        self.commits.mark_processed(records)
        if self._audit is not None:
            spans: dict[int, list[int]] = {}
            for r in records:
                span = spans.setdefault(r.partition, [r.offset, r.offset])
                span[0], span[1] = min(span[0], r.offset), max(span[1], r.offset)
            self._write_audit("batch", spans)

    def settle(self) -> None:
        """Wait for the micro-batch training in the background, if any, and publish what it
        did: its steps, its loss, and the time from its records to the end of its update."""
        for result in self.learner.trained():
            seconds, record_ms = self._training
            self._publish_training(result, seconds + float(result.step_seconds.sum()),
                                   record_ms)

    def _publish_training(self, result: BatchResult, seconds: float,
                          record_ms: np.ndarray | None) -> None:
        """The metrics of a micro-batch's training: ``seconds`` the batch's whole time,
        ``record_ms`` its records' Kafka timestamps (None when nothing trained)."""
        m = self.metrics
        m.batch_duration.observe(seconds)
        if record_ms is not None:
            m.event_to_update.observe_many(np.maximum(time.time() - record_ms / 1000.0, 0.0))
            m.step_duration.observe_many(result.step_seconds)
        for branch, count in result.branches.items():
            m.ig_branch.labels(branch).inc(count)
        if result.vague_total:
            m.vague_positive_share.set(result.vague_positive / result.vague_total)
        m.train_steps.inc(result.steps)
        if not math.isnan(result.loss):
            m.loss.set(result.loss)

    def _watch_drift(self, scores: np.ndarray, classes: np.ndarray) -> None:
        genuine = classes != VAGUE
        for found in self.drift.update(scores[genuine], classes[genuine] == POSITIVE):
            self.metrics.drift_detections.labels(found.signal).inc()
            now = time.time()
            self.metrics.drift_last.set(now)
            consumed = self.metrics.totals()["consumed"]
            logger.warning("DRIFT detected by %s: %s got worse (%.4f) after %d events",
                           self.drift.detector, found.signal, found.value, consumed)
            if self._runlog is not None:
                self._append(self._runlog, {
                    "kind": "drift", "time": now, "events": consumed, "signal": found.signal,
                    "detector": self.drift.detector, "value": found.value})

    def commit(self, blocking: bool = True) -> bool:
        """Make progress durable: flush dead letters, checkpoint if configured, commit
        (:meth:`CommitProtocol.commit`); False when nothing could be committed now."""
        return self.commits.commit(blocking)

    def _checkpointed(self, offsets: dict[int, int], path: Path | None) -> None:
        """A checkpoint holding ``offsets`` is durable (in ``path``)."""
        self._write_audit("checkpoint", offsets, path=path.name if path else None)

    def _final_commit(self) -> None:
        """Commit on the way out, retrying a failed dead-letter or checkpoint write a while."""
        self.commits.final_commit(self.config.final_commit_timeout_s)

    def _commit_due(self, now: float) -> bool:
        since, last = self.commits.since_checkpoint, self.commits.last_commit
        if self.checkpointer is None:
            return now - last >= self.config.commit_interval_s
        return (
            since >= self.config.checkpoint_every
            or (since and now - last >= self.config.checkpoint_interval_s)
        )

    def _restore(self) -> None:
        if self.checkpointer is None:
            return
        state = self.checkpointer.load_latest()
        if state is None:
            logger.info("no checkpoint in %s: starting fresh", self.config.checkpoint_dir)
            return
        self._resume_from(state)

    def _resume_from(self, state: dict) -> None:
        """Take up a loaded checkpoint: the learner's state and the partitions' offsets."""
        if state["topic"] != self.config.topic:
            from stream.errors import ConfigError

            raise ConfigError(f"checkpoint in {self.config.checkpoint_dir} is for topic "
                              f"{state['topic']!r}, not {self.config.topic!r}")
        self.learner.load_state_dict(state["learner"])
        self.commits.resume = {int(p): int(o) for p, o in state["offsets"].items()}
        self._write_audit("resume", self.commits.resume)

    def _write_audit(self, kind: str, offsets: dict, **extra) -> None:
        if self._audit is not None:
            record = {"kind": kind, "offsets": {str(k): v for k, v in offsets.items()}, **extra}
            self._append(self._audit, record)

    @staticmethod
    def _append(stream, record: dict) -> None:
        stream.write(json.dumps(_finite(record), allow_nan=False) + "\n")

    def _open_run_log(self) -> None:
        cfg = self.config
        path = cfg.metrics_log or (
            str(Path(cfg.checkpoint_dir) / "metrics.jsonl") if cfg.checkpoint_dir else "")
        if not path:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._runlog = open(path, "a", buffering=1)  # noqa: SIM115
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "kafka_options"}
        self._append(self._runlog, {"kind": "start", "time": time.time(), "config": settings})
        logger.info("run metrics log: %s (dwell report %s)", path, Path(path).parent)

    # -- reporting ------------------------------------------------------------------------
    def _done(self, full_batch: bool = False) -> bool:
        """Whether every partition is processed up to its target: the assigned ones by this
        learner, the others (in a group) by their owners, as the group's committed offsets
        show. After a full batch, a partition processed short of its target says no without
        asking the client (its assignment and positions cost ~0.4 ms a batch with
        confluent); after a short one (caught up) the client is asked, whatever was
        processed."""
        with self._targets_lock:
            targets = self._targets
        if targets is None:
            return False
        if full_batch and any(offset < targets.get(p, 0)
                              for p, offset in self.consumer.processed().items()):
            return False
        assignment = self.consumer.assignment
        if assignment:
            positions = self.consumer.positions()  # {} in the midst of a rebalance: not done
            if not positions or any(positions[p] < targets.get(p, 0) for p in positions):
                return False
        elif self._explicit:
            return False
        if self._explicit:
            return True
        return self._group_reached(targets, set(targets) - assignment)

    def _group_reached(self, targets: Mapping[int, int], others: set[int]) -> bool:
        """Whether the group has committed ``targets`` on the partitions ``others``, which
        other members own (or will own after the rebalance under way). Asked at most once a
        :data:`GROUP_CHECK_INTERVAL_S`: a learner done with its own partitions keeps
        consuming, and takes over those of a member that leaves before finishing them."""
        others = {p for p in others if targets[p] > 0}
        if not others:
            return True
        now = time.monotonic()
        if now - self._group_checked_at < GROUP_CHECK_INTERVAL_S:
            return False
        self._group_checked_at = now
        try:
            committed = self.consumer.committed(others)
        except ClientError as exc:
            logger.warning("committed offsets of the group: %r", exc)
            return False
        return all(committed.get(p, 0) >= targets[p] for p in others)

    def _progress(self, now: float) -> None:
        """Publish the slow gauges, append a run-log record, log a progress line."""
        m = self.metrics
        auc = self.learner.evaluator.values()
        for (window, target), value in auc.items():
            m.auc.labels(window, target).set(value)
        baseline = self.learner.baseline_evaluator.values()
        for (window, target), value in baseline.items():
            m.baseline_auc.labels(window, target).set(value)
        drift = {t: auc[("short", t)] - auc[("long", t)] for t in TARGETS}
        for target, value in drift.items():
            m.auc_drift.labels(target).set(value)
        means = self.learner.evaluator.window_means()
        for window in WINDOWS:
            m.log_loss.labels(window).set(means[("log_loss", window)])
            m.positive_rate.labels(window).set(means[("positive", window)])
            m.vague_share.labels(window).set(means[("vague", window)])
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
        if self._runlog is not None:
            self._append(self._runlog, {
                "kind": "progress", "time": time.time(), "events": totals["consumed"],
                "accepted": totals["accepted"], "dead_lettered": totals["dead_lettered"],
                "events_per_s": rate, "lag": sum(lag.values()),
                "auc": {f"{w}/{t}": auc[(w, t)] for w in AUC_WINDOWS for t in TARGETS},
                "baseline_auc": {f"{w}/{t}": baseline[(w, t)] for w in AUC_WINDOWS
                                 for t in TARGETS},
                "auc_drift": drift,
                **{name: {w: means[(key, w)] for w in WINDOWS} for name, key in (
                    ("log_loss", "log_loss"), ("positive_rate", "positive"),
                    ("vague_share", "vague"))},
                "drift_detections": sum(
                    m.registry.get_sample_value("dwell_drift_detections_total", {"signal": s})
                    or 0 for s in SIGNALS),
            })
        logger.info(
            "events %d (%.0f/s) | accepted %d dead-lettered %d | AUC dwell %.3f/%.3f "
            "explicit %.3f/%.3f (short/long window) | lag %d",
            totals["consumed"], rate, totals["accepted"],
            totals["dead_lettered"], auc[("short", "dwell")], auc[("long", "dwell")],
            auc[("short", "explicit")], auc[("long", "explicit")], sum(lag.values()),
        )
        self._last_progress = now


def _finite(value):
    """``value`` with NaN and infinities as None (JSON null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
