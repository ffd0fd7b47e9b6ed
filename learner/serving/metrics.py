"""The server's Prometheus metrics (prefix ``dwell_serving_``), declared once, in base units.

Labels are bounded: ``endpoint`` is one of :data:`ENDPOINTS`, ``code`` an HTTP status the
server answers with, ``cause`` one of :data:`CAUSES`, ``basis`` ``model`` or ``popularity``.
The model's version and age are read when Prometheus scrapes: the age is now against the
newest event the served model was trained on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from learner.serving.pool import PopularityPool
from learner.serving.source import ModelSource

ENDPOINTS = ("rank", "score", "healthz", "metrics", "other")
#: Why a request failed: the error label values.
CAUSES = ("not_json", "invalid", "too_large", "no_model", "no_pool", "not_found",
          "method_not_allowed", "internal")
#: Latency buckets, seconds: a ranking takes about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    """The serving metrics in ``registry``; the model and pool gauges read ``source`` and
    ``pool`` at scrape time (``clock``: seconds since the epoch)."""

    def __init__(self, registry: CollectorRegistry, source: ModelSource,
                 pool: PopularityPool | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.requests = Counter("dwell_serving_requests_total", "HTTP requests answered",
                                ["endpoint", "code"], registry=registry)
        self.latency = Histogram("dwell_serving_request_duration_seconds",
                                 "time to answer a request, from its first byte read",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter("dwell_serving_errors_total", "requests refused or failed, by "
                              "cause", ["cause"], registry=registry)
        self.rankings = Counter("dwell_serving_rankings_total", "rankings answered, by what "
                                "ordered them (the model, or popularity for an unknown user)",
                                ["basis"], registry=registry)
        self.pool_events = Counter("dwell_serving_pool_events_total", "event records of the "
                                   "events topic read by the popular pool, by outcome "
                                   "(counted, or the reason it is not an event)", ["outcome"],
                                   registry=registry)
        self.candidates = Histogram("dwell_serving_candidates", "videos ranked or pairs scored "
                                    "per request", ["endpoint"],
                                    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10_000),
                                    registry=registry)

        def model_field(read: Callable) -> Callable[[], float]:
            def value() -> float:
                model = source.current()
                return math.nan if model is None else float(read(model))
            return value

        Gauge("dwell_serving_model_version", "version of the model answering requests (NaN "
              "before the first)", registry=registry).set_function(
            model_field(lambda m: m.version))
        Gauge("dwell_serving_model_age_seconds", "now minus the time of the newest event the "
              "served model was trained on (NaN before the first)", registry=registry
              ).set_function(model_field(lambda m: clock() - m.newest_event_ms / 1000.0))
        if pool is not None:
            Gauge("dwell_serving_pool_videos", "videos tracked by the popular pool",
                  registry=registry).set_function(lambda: float(len(pool)))
