"""Prometheus metrics of the learner, declared once, in base units, with bounded labels.

Counters are the single source of truth for the run's totals: :meth:`Metrics.totals` reads
them back from the registry, so the printed summary and ``/metrics`` cannot disagree.
Every test builds its own ``CollectorRegistry``.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.events_consumed.inc(3)
>>> m.totals()["consumed"]
3
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from learner.core.drift import SIGNALS
from learner.core.labels import CLASS_NAMES
from stream.event import Reason

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
WINDOWS = ("short", "long")
AUC_WINDOWS = ("short", "long", "run")
TARGETS = ("dwell", "explicit")
TABLES = ("user", "video")


class BulkHistogram:
    """A Prometheus histogram that observes a whole numpy array at once.

    ``prometheus_client``'s Histogram observes one value per call; a micro-batch has a
    thousand. This collector counts them with one ``searchsorted`` and exports the usual
    ``_bucket``/``_sum``/``_count`` series.

    >>> h = BulkHistogram("demo_seconds", "A demo.", (0.1, 1.0), CollectorRegistry())
    >>> h.observe_many(np.array([0.05, 0.5, 0.5, 7.0]))
    >>> [(s.labels["le"], s.value) for s in next(iter(h.collect())).samples[:3]]
    [('0.1', 1.0), ('1.0', 3.0), ('+Inf', 4.0)]
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation = name, documentation
        self._upper = np.array([*buckets, np.inf])
        self._counts = np.zeros(self._upper.size, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._upper, values), minlength=self._upper.size)
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self):
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        yield HistogramMetricFamily(
            self.name, self.documentation,
            buckets=[(floatToGoString(le), float(c))
                     for le, c in zip(self._upper, cumulative, strict=True)],
            sum_value=total,
        )

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, buckets=[("+Inf", 0)],
                                      sum_value=0)]


class Metrics:
    """Every metric the learner exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.events_consumed = Counter(
            "dwell_events_consumed", "Records read from the event topic.", registry=r
        )
        self.events_invalid = Counter(
            "dwell_events_invalid",
            "Records that failed decoding or validation and went to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.events_labelled = Counter(
            "dwell_events_labelled", "Valid events by dwell-time label class.", ["label"],
            registry=r,
        )
        self.train_steps = Counter("dwell_train_steps", "Optimiser steps taken.", registry=r)
        self.ig_branch = Counter(
            "dwell_ig_branch",
            "Inverse Gradient steps by branch kept (none: step without vague or meta events).",
            ["branch"], registry=r,
        )
        self.sampled = Counter(
            "dwell_vague_sampled", "Unseen items sampled and trained as vague events.", registry=r
        )
        self.vague_positive_share = Gauge(
            "dwell_vague_positive_share",
            "Share of the last micro-batch's vague events (real and sampled) scored > 0.5.",
            registry=r,
        )
        self.checkpoint_time = Gauge(
            "dwell_checkpoint_last_timestamp_seconds",
            "Unix time of the last durable checkpoint.", registry=r,
        )
        self.checkpoint_duration = Gauge(
            "dwell_checkpoint_duration_seconds", "Time the last checkpoint took to write.",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "dwell_checkpoint_failures",
            "Checkpoints that could not be written (offsets stay uncommitted).", registry=r,
        )
        self.checkpoint_healthy = Gauge(
            "dwell_checkpoint_healthy",
            "1 when the last checkpoint attempt succeeded, 0 when it failed.", registry=r,
        )
        self.dead_letter_failures = Counter(
            "dwell_dead_letter_failures",
            "Commits skipped because a dead letter could not be written (sent again).",
            registry=r,
        )
        self.dead_letters_written = Counter(
            "dwell_dead_letters_written",
            "Dead letters the dead-letter topic acknowledged (envelopes included).", registry=r,
        )
        self.dead_letters_truncated = Counter(
            "dwell_dead_letters_truncated",
            "Dead letters too large for the dead-letter topic, written as an envelope (the "
            "first bytes, the original's size and SHA-256) and acknowledged.", registry=r,
        )
        self.batches = Counter("dwell_batches", "Micro-batches processed.", registry=r)
        self.commits = Counter("dwell_offset_commits", "Offset commits to Kafka.", registry=r)
        self.loss = Gauge("dwell_loss", "Mean training loss of the last micro-batch.", registry=r)
        self.sync_duration = Histogram(
            "dwell_sync_duration_seconds",
            "Time a model averaging of the ranks of a distributed job took.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.rank_lag = Gauge(
            "dwell_rank_lag_records",
            "Records behind the high watermark, summed over a rank's partitions (exported by "
            "rank 0 of a distributed job for every rank).", ["rank"], registry=r,
        )
        self.rank_events_per_second = Gauge(
            "dwell_rank_events_per_second",
            "Events a rank consumed per second since its first batch (rank 0 exports every "
            "rank's).", ["rank"], registry=r,
        )
        self.info = Info("dwell_learner", "Model, loss, meta-correction and drift detector.",
                         registry=r)
        self.auc = Gauge(
            "dwell_auc",
            "Prequential AUC: window short or long (sliding, --auc-window and "
            "--auc-long-window events) or run (since start); target dwell (dwell-derived "
            "labels of genuine events) or explicit (like/dislike in context).",
            ["window", "target"],
            registry=r,
        )
        self.baseline_auc = Gauge(
            "dwell_baseline_auc",
            "Prequential AUC of the counting baseline (the user's plus the video's running "
            "positive rate, learner.core.baselines) on the same events, windows and targets "
            "as dwell_auc: a model worth serving stays above it.",
            ["window", "target"],
            registry=r,
        )
        self.auc_drift = Gauge(
            "dwell_auc_drift",
            "Short-window AUC minus long-window AUC: negative when quality is falling.",
            ["target"], registry=r,
        )
        self.log_loss = Gauge(
            "dwell_log_loss", "Prequential log loss of genuine events over the window.",
            ["window"], registry=r,
        )
        self.positive_rate = Gauge(
            "dwell_positive_rate", "Share of accepted events labelled positive, over the window.",
            ["window"], registry=r,
        )
        self.vague_share = Gauge(
            "dwell_vague_share", "Share of accepted events labelled vague, over the window.",
            ["window"], registry=r,
        )
        self.drift_detections = Counter(
            "dwell_drift_detections",
            "Drift detections (quality got worse) by signal: auc or log_loss.",
            ["signal"], registry=r,
        )
        self.drift_last = Gauge(
            "dwell_drift_last_detection_timestamp_seconds",
            "Unix time of the last drift detection (0: none yet).", registry=r,
        )
        self.step_duration = BulkHistogram(
            "dwell_step_duration_seconds", "Wall time of one optimiser step.", STEP_BUCKETS, r,
        )
        self.event_to_update = BulkHistogram(
            "dwell_event_to_update_seconds",
            "From an event's Kafka record timestamp to the end of the model update that "
            "includes it.", LATENCY_BUCKETS, r,
        )
        self.batch_duration = Histogram(
            "dwell_batch_duration_seconds",
            "Wall time to decode, score and train one micro-batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "dwell_consumer_lag", "Records behind the partition's high watermark.", ["partition"],
            registry=r,
        )
        self.idmap_size = Gauge("dwell_idmap_size", "Distinct ids mapped.", ["table"], registry=r)
        self.idmap_evictions = Counter(
            "dwell_idmap_evictions", "Ids evicted from a full id map (their rows reused).",
            ["table"], registry=r,
        )
        self.freshness = Gauge(
            "dwell_event_freshness_seconds",
            "Wall-clock now minus the newest event time trained.",
            registry=r,
        )
        for reason in Reason:
            self.events_invalid.labels(reason.value)
        for name in CLASS_NAMES.values():
            self.events_labelled.labels(name)
        for branch in ("original", "forward", "inverse", "none"):
            self.ig_branch.labels(branch)
        for signal in SIGNALS:
            self.drift_detections.labels(signal)
        for table in TABLES:
            self.idmap_evictions.labels(table)

    def _value(self, name: str, labels: dict[str, str] | None = None) -> int:
        value = self.registry.get_sample_value(name, labels or {})
        return int(value or 0)

    def totals(self) -> dict:
        """Counts so far: consumed, accepted, by label class, dead-lettered by reason, and
        the dead letters written (acknowledged), envelopes among them."""
        labelled = {
            n: self._value("dwell_events_labelled_total", {"label": n})
            for n in CLASS_NAMES.values()
        }
        invalid = {
            r.value: self._value("dwell_events_invalid_total", {"reason": r.value})
            for r in Reason
        }
        return {
            "consumed": self._value("dwell_events_consumed_total"),
            "accepted": sum(labelled.values()),
            "labelled": labelled,
            "dead_lettered": sum(invalid.values()),
            "invalid": {k: v for k, v in invalid.items() if v},
            "train_steps": self._value("dwell_train_steps_total"),
            "dead_letters_written": self._value("dwell_dead_letters_written_total"),
            "dead_letters_truncated": self._value("dwell_dead_letters_truncated_total"),
        }


def serve_metrics(registry: CollectorRegistry, addr: str, port: int):
    """Serve ``/metrics`` of ``registry`` on ``addr:port`` (0: a free port) in a thread.

    Returns the server (call ``shutdown()`` to stop it); its port is ``server.server_port``.
    """
    from prometheus_client import start_http_server

    from stream.errors import ConfigError

    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on {addr}:{port}: {exc.strerror}; "
            "choose another --metrics-port (0: any free port, -1: none)"
        ) from None
    return server
