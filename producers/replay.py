"""Publish events to a Kafka topic with delivery acknowledgements and a final count."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import orjson
from tqdm import tqdm

from producers.pacing import Pacer
from producers.readers import ReadResult
from stream.clients import DEFAULT_CLIENT, make_producer
from stream.errors import BrokerError, ClientError, ClientTimeoutError

logger = logging.getLogger(__name__)

#: Producer settings for a durable, ordered replay (kafka-python's names; the confluent client
#: translates them); ``producer_config`` overrides them. Idempotence is the default of both
#: clients here (kafka-python 3's, KIP-679; stream.clients.confluent sets it) and needs
#: acks=all, retries > 0 and at most 5 requests in flight: then a retry can neither duplicate
#: nor reorder a user's events. It is left implicit so that a caller who trades durability
#: for speed (``acks=1``) gets a warning and a non-idempotent producer instead of a
#: configuration error.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "retries": 2**31 - 1,  # bounded in time by delivery_timeout_ms (120 s), as in the Java client
    "linger_ms": 5,
    "batch_size": 64 * 1024,
    "compression_type": None,
}
_PROGRESS_EVERY = 1024  # events between progress-bar updates
_LOG_FAILURES = 5  # delivery failures logged one by one, then only counted
_ABORT_FLUSH_S = 10  # how long an interrupted replay waits for buffered deliveries


@dataclass
class ReplayStats:
    """What a replay did. ``events_sent`` counts deliveries the broker acknowledged.

    >>> ReplayStats(rows_read=10, events_sent=8, seconds=2.0).events_per_s
    4.0
    """

    rows_read: int = 0
    events_sent: int = 0
    failed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # failure kind -> count

    @property
    def events_per_s(self) -> float:
        """Acknowledged events per second of replay (0 when nothing was timed)."""
        return self.events_sent / self.seconds if self.seconds > 0 else 0.0


class _Deliveries:
    """Counts acknowledgements and failures; callbacks may run on the producer's own thread."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def report(self, error: ClientError | None) -> None:
        if error is None:
            with self._lock:
                self.acked += 1
        else:
            self.fail(error)

    def fail(self, exc: BaseException) -> None:
        name = exc.name if isinstance(exc, ClientError) else type(exc).__name__
        with self._lock:
            self.failed += 1
            self.errors[name] += 1
            count = self.failed
        if count <= _LOG_FAILURES:
            logger.warning("delivery failed: %r", exc)


def replay(
    events: Iterable[dict] | ReadResult,
    *,
    bootstrap: str,
    topic: str,
    pacer: Pacer | None = None,
    producer_config: dict | None = None,
    progress: bool = True,
    client: str = DEFAULT_CLIENT,
) -> ReplayStats:
    """Send every event to ``topic`` as orjson bytes keyed by ``str(user_id)``; wait for acks.

    ``events`` may be a ``ReadResult`` (its ``rows_read`` and ``rejected`` are carried into
    the stats) or any iterable of event dicts, sent in the order given. ``pacer`` spaces the
    sends (default: as fast as possible). ``client`` is the Kafka client (``stream.clients``:
    kafka-python or confluent). ``producer_config`` (kafka-python's option names) goes over
    ``DEFAULT_PRODUCER_CONFIG`` (SASL/TLS settings go there). Delivery results are
    collected by callbacks, never by blocking per event; ``flush()`` at the end waits for all.
    The Kafka record timestamp is the send time, not ``ts_ms``: historical event times would
    fall outside the topic's retention and be deleted at once.

    Raises ``BrokerError`` when the broker cannot be reached at start or stops answering,
    ``ConfigError`` when ``producer_config`` or ``client`` is not valid.

    >>> from producers.readers import read_log, order_by_time
    >>> r = read_log("data/kuairec_sample/big_matrix_1000.csv")
    >>> stats = replay(order_by_time(r.events), bootstrap="localhost:9092",
    ...                topic="dwell.events")  # doctest: +SKIP
    """
    stats = ReplayStats()
    from_result = isinstance(events, ReadResult)
    if isinstance(events, ReadResult):  # from_result, spelled out so that mypy narrows
        stats.rows_read, stats.rejected = events.rows_read, Counter(events.rejected)
        events = events.events
    pacer = pacer or Pacer()
    config = {**DEFAULT_PRODUCER_CONFIG, **(producer_config or {}), "bootstrap_servers": bootstrap}
    try:
        producer = make_producer(client, config)  # ConfigError: bad settings or client
    except ClientError as exc:  # ClientTimeoutError: unable to bootstrap
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    deliveries = _Deliveries()
    total = len(events) if isinstance(events, Sized) else None
    bar = tqdm(
        total=total, unit="ev", desc=f"replay {topic}", disable=not progress, mininterval=0.5
    )
    count = 0
    finished = False
    start = time.perf_counter()
    try:
        for count, event in enumerate(events, start=1):
            pacer.wait(event["ts_ms"])
            try:
                producer.produce(topic, value=orjson.dumps(event),
                                 key=str(event["user_id"]).encode(),
                                 on_delivery=deliveries.report)
            except ClientTimeoutError as exc:
                deliveries.fail(exc)
                raise BrokerError(f"Kafka at {bootstrap} stopped answering: {exc}") from exc
            except (ClientError, TypeError, ValueError) as exc:  # too large, not serialisable
                deliveries.fail(exc)
                continue
            if count % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
        bar.update(count % _PROGRESS_EVERY)
        finished = True
    finally:
        # On an error or Ctrl-C, still deliver what is buffered, but do not wait long for it.
        if producer.flush(timeout=None if finished else _ABORT_FLUSH_S):
            logger.warning("gave up waiting for deliveries after %d s", _ABORT_FLUSH_S)
        producer.close(timeout=None if finished else _ABORT_FLUSH_S)
        bar.close()
        stats.seconds = time.perf_counter() - start
        stats.events_sent, stats.failed = deliveries.acked, deliveries.failed
        stats.errors = deliveries.errors
        if not from_result:
            stats.rows_read = count
        logger.info(
            "replay to %s at %s with %s: %d rows read, %d events sent (acked), %d failed %s, "
            "%d rejected %s, %.1f s, %.0f events/s, pacing %s (slept %.1f s)",
            topic,
            bootstrap,
            client,
            stats.rows_read,
            stats.events_sent,
            stats.failed,
            dict(stats.errors),
            sum(stats.rejected.values()),
            dict(stats.rejected),
            stats.seconds,
            stats.events_per_s,
            pacer.mode,
            pacer.slept_s,
        )
    return stats
