"""Publish events to a Kafka topic with delivery acknowledgements and a final count."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from tqdm import tqdm

from producers.pacing import Pacer
from producers.readers import ReadResult
from stream.clients import DEFAULT_CLIENT, Producer, make_producer
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
#: A producer still holding records this long past its delivery timeout is stuck: kafka-python's
#: idempotent producer, once it expired a batch while the broker was away, kept the next
#: batches forever, neither sent nor expired (3.0.12; librdkafka keeps its timeout, give or
#: take a request timeout). Those records are given up and sent again on a fresh producer.
_STUCK_MARGIN_S = 90.0
_DELIVERY_TIMEOUT_MS = 120_000  # both clients' default

#: Rounds of sending again, on a fresh producer, what failed with a retriable error.
RESEND_ROUNDS = 3
RESEND_BACKOFF_S = 1.0  # before the first round; doubled before each next one
#: The reason counted for an event not sent again because a later event of its key was
#: acknowledged: sending it now would put it after that one in its partition.
WOULD_REORDER = "would_reorder"
#: Failures that may go through on another try although the client does not flag them
#: retriable: librdkafka reports a delivery that ran out of time (``_MSG_TIMED_OUT``, after
#: ``delivery_timeout_ms``) or of brokers with ``retriable() == False``.
_RETRIABLE_NAMES = frozenset({
    "_MSG_TIMED_OUT", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "_TRANSPORT", "_ALL_BROKERS_DOWN",
    "_PURGE_QUEUE", "_PURGE_INFLIGHT", "KafkaTimeoutError", "KafkaConnectionError",
})


def resendable(error: BaseException) -> bool:
    """Whether a record that failed with ``error`` may go through if sent again: a
    :class:`ClientError` flagged retriable, or a timeout or lost connection.

    >>> resendable(ClientError("delivery failed: Local: Message timed out", "_MSG_TIMED_OUT",
    ...                        retriable=False))
    True
    >>> resendable(ClientError("too large", "MSG_SIZE_TOO_LARGE", retriable=False))
    False
    >>> resendable(TypeError("Type is not JSON serializable: set"))
    False
    """
    return isinstance(error, ClientError) and (error.retriable or error.name in _RETRIABLE_NAMES)


@dataclass
class ReplayStats:
    """What a replay did. ``events_sent`` counts deliveries the broker acknowledged.

    Each event is counted once, by its final outcome: ``rows_read = events_sent + failed +
    sum(rejected.values())``. ``resent`` counts the events sent again after a retriable
    failure (those acknowledged then are in ``events_sent``, the others in ``failed``).

    >>> ReplayStats(rows_read=10, events_sent=8, seconds=2.0).events_per_s
    4.0
    """

    rows_read: int = 0
    events_sent: int = 0
    failed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # failure kind -> count
    resent: int = 0

    @property
    def events_per_s(self) -> float:
        """Acknowledged events per second of replay (0 when nothing was timed)."""
        return self.events_sent / self.seconds if self.seconds > 0 else 0.0


#: A failed send: the event's index in the replay, its key and value, the error.
_Failure = tuple[int, bytes, "bytes | None", BaseException]


class _Deliveries:
    """Counts acknowledgements and keeps failures; callbacks may run on the producer's own
    thread. An event in flight is in ``pending`` (index -> key, value) until its report; per
    key it keeps the index of the last acknowledged event (the per-key order check of a
    resend); a failure keeps the event's index, key and value until it is settled.
    """

    def __init__(self) -> None:
        self.pending: dict[int, tuple[bytes, bytes | None]] = {}  # index -> key, value
        self._acks = itertools.count()  # next() is atomic: no lock on the hot path
        self.failures: list[_Failure] = []  # of the current round, not settled yet
        self.final: Counter[str] = Counter()  # settled failures by reason
        self.last_acked: dict[bytes, int] = {}
        self._reported = 0
        self._lock = threading.Lock()

    def report(self, index: int, error: ClientError | None) -> None:
        """A delivery callback, bound to its event by ``functools.partial(report, index)``.
        The report of an event already given up (a stuck producer's, late) is ignored."""
        sent = self.pending.pop(index, None)
        if sent is None:
            return
        if error is None:
            next(self._acks)
            key = sent[0]
            last = self.last_acked  # one thread reports a partition's acks, in order
            if last.get(key, -1) < index:
                last[key] = index
        else:
            self.fail(index, sent[0], sent[1], error)

    def give_up(self, why: str) -> int:
        """Every event still in flight fails (retriable): its producer is given up."""
        left = [(index, *self.pending.pop(index)) for index in sorted(self.pending)]
        error = ClientTimeoutError(why, "NoDeliveryReport")
        for index, key, value in left:
            self.fail(index, key, value, error)
        return len(left)

    @property
    def acked(self) -> int:
        """Acknowledgements so far (read once the deliveries are flushed)."""
        return int(repr(self._acks)[len("count("):-1])  # count(N): N calls so far

    def fail(self, index: int, key: bytes, value: bytes | None, exc: BaseException) -> None:
        with self._lock:
            self.failures.append((index, key, value, exc))
            self._reported += 1
            count = self._reported
        if count <= _LOG_FAILURES:
            logger.warning("delivery failed: %r", exc)

    def take_resendable(self) -> list[_Failure]:
        """Settle this round's failures but those to send again, which are returned in their
        original order: a retriable failure with no later event of its key acknowledged. A
        non-retriable one is final under its error's name, one that would be reordered under
        :data:`WOULD_REORDER`."""
        with self._lock:
            failures, self.failures = self.failures, []
        again = []
        for failure in failures:
            index, key, value, exc = failure
            if value is None or not resendable(exc):
                self.final[_name(exc)] += 1
            elif self.last_acked.get(key, -1) > index:
                self.final[WOULD_REORDER] += 1
            else:
                again.append(failure)
        again.sort(key=lambda f: f[0])
        return again

    def settle(self) -> None:
        """Every failure not settled yet is final, under its error's name."""
        with self._lock:
            failures, self.failures = self.failures, []
        for _index, _key, _value, exc in failures:
            self.final[_name(exc)] += 1


def _name(exc: BaseException) -> str:
    return exc.name if isinstance(exc, ClientError) else type(exc).__name__


def _close(producer: Producer, finished: bool, deliveries: _Deliveries, wait_s: float) -> None:
    """Flush and close. Up to ``wait_s`` (the delivery timeout and a margin), or after an
    error or Ctrl-C :data:`_ABORT_FLUSH_S`; what is still in flight then fails (retriable)."""
    wait_s = wait_s if finished else _ABORT_FLUSH_S
    left = producer.flush(timeout=wait_s)
    if left:
        logger.warning("%d deliveries not reported after %.0f s: the producer is given up",
                       left, wait_s)
    producer.close(timeout=_ABORT_FLUSH_S if left else None)
    if deliveries.pending:  # a stuck producer: no report, not even an error, on close
        deliveries.give_up(f"no delivery report {wait_s:.0f} s after the last send")


def _flush_wait_s(config: dict) -> float:
    """How long every record of a producer made with ``config`` may take to be reported."""
    ms = next((config[k] for k in ("delivery_timeout_ms", "delivery.timeout.ms",
                                   "message.timeout.ms") if k in config), _DELIVERY_TIMEOUT_MS)
    return float(ms) / 1000 + _STUCK_MARGIN_S


def replay(
    events: Iterable[dict] | ReadResult,
    *,
    bootstrap: str,
    topic: str,
    pacer: Pacer | None = None,
    producer_config: dict | None = None,
    progress: bool = True,
    client: str = DEFAULT_CLIENT,
    resend_rounds: int = RESEND_ROUNDS,
    resend_backoff_s: float = RESEND_BACKOFF_S,
    producer_factory: Callable[[str, dict], Producer] | None = None,
) -> ReplayStats:
    """Send every event to ``topic`` as orjson bytes keyed by ``str(user_id)``; wait for acks.

    ``events`` may be a ``ReadResult`` (its ``rows_read`` and ``rejected`` are carried into
    the stats) or any iterable of event dicts, sent in the order given. ``pacer`` spaces the
    sends (default: as fast as possible). ``client`` is the Kafka client (``stream.clients``:
    kafka-python or confluent). ``producer_config`` (kafka-python's option names) goes over
    ``DEFAULT_PRODUCER_CONFIG`` (SASL/TLS settings go there). Delivery results are
    collected by callbacks, never by blocking per event; ``flush()`` at the end waits for all,
    up to the delivery timeout and :data:`_STUCK_MARGIN_S`: a producer whose records are still
    unreported then is stuck, and they fail as ``NoDeliveryReport`` (retriable: sent again).
    The Kafka record timestamp is the send time, not ``ts_ms``: historical event times would
    fall outside the topic's retention and be deleted at once.

    **Sending again.** The producer retries by itself for ``delivery_timeout_ms`` (120 s); a
    cluster away for longer (or one that cannot give the idempotent producer its id, as a
    broker loading its coordinator state under load) times records out. Once every event has
    been sent and the producer flushed, the events that failed with a retriable error
    (:func:`resendable`: a timeout, a lost connection; not a record too large nor one that
    cannot be serialised) are sent again, in their original order, on a fresh producer, up to
    ``resend_rounds`` times, after ``resend_backoff_s`` (doubled each round). Per-key order
    holds: an event is sent again only if no later event of its key was acknowledged;
    otherwise it stays failed, counted as :data:`WOULD_REORDER`. Each event is counted once
    by its final outcome (one acknowledged on a resend is sent, not failed) and
    ``ReplayStats.resent`` counts the events sent again.

    **Duplicates.** Resent events are at-least-once, not exactly-once: a record that timed
    out may have been written all the same (its acknowledgement lost), and the fresh
    producer has a new producer id, so idempotence cannot recognise it across rounds. Within
    a round, and for every event never resent, the idempotent producer still writes each
    record once. ``resend_rounds=0`` turns resending off (a timed-out event stays failed).

    ``producer_factory(client, config)`` makes each producer (default
    ``stream.clients.make_producer``).

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
    factory = producer_factory or make_producer
    config = {**DEFAULT_PRODUCER_CONFIG, **(producer_config or {}), "bootstrap_servers": bootstrap}
    try:
        producer = factory(client, config)  # ConfigError: bad settings or client
    except ClientError as exc:  # ClientTimeoutError: unable to bootstrap
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    deliveries = _Deliveries()
    report, pending = deliveries.report, deliveries.pending
    wait_s = _flush_wait_s(config)
    total = len(events) if isinstance(events, Sized) else None
    bar = tqdm(
        total=total, unit="ev", desc=f"replay {topic}", disable=not progress, mininterval=0.5
    )
    count = 0
    resent: set[int] = set()
    start = time.perf_counter()
    try:
        finished = False
        try:
            for count, event in enumerate(events, start=1):
                pacer.wait(event["ts_ms"])
                key = str(event["user_id"]).encode()
                value = None
                try:
                    value = orjson.dumps(event)
                    pending[count] = key, value  # before: the report may come at once
                    producer.produce(topic, value=value, key=key,
                                     on_delivery=partial(report, count))
                except ClientTimeoutError as exc:
                    pending.pop(count, None)
                    deliveries.fail(count, key, value, exc)
                    raise BrokerError(f"Kafka at {bootstrap} stopped answering: {exc}") from exc
                except (ClientError, TypeError, ValueError) as exc:  # too large, not serialisable
                    pending.pop(count, None)
                    deliveries.fail(count, key, value, exc)
                    continue
                if count % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)
            bar.update(count % _PROGRESS_EVERY)
            finished = True
        finally:
            _close(producer, finished, deliveries, wait_s)  # after an error, not for long
        for round_ in range(1, resend_rounds + 1):
            again = deliveries.take_resendable()
            if not again:
                break
            wait = resend_backoff_s * 2 ** (round_ - 1)
            logger.warning(
                "sending %d events again that failed with a retriable error (%s), round %d "
                "of %d, in %.1f s, on a fresh producer (at-least-once: a timed-out record may "
                "have been written)", len(again), dict(Counter(_name(f[3]) for f in again)),
                round_, resend_rounds, wait)
            time.sleep(wait)
            _resend(again, factory, client, config, topic, deliveries, wait_s)
            resent.update(f[0] for f in again)
    finally:
        deliveries.settle()
        bar.close()
        stats.seconds = time.perf_counter() - start
        stats.events_sent = deliveries.acked
        stats.errors = deliveries.final
        stats.failed = sum(deliveries.final.values())
        stats.resent = len(resent)
        if not from_result:
            stats.rows_read = count
        logger.info(
            "replay to %s at %s with %s: %d rows read, %d events sent (acked), %d failed %s, "
            "%d rejected %s, %d resent, %.1f s, %.0f events/s, pacing %s (slept %.1f s)",
            topic,
            bootstrap,
            client,
            stats.rows_read,
            stats.events_sent,
            stats.failed,
            dict(stats.errors),
            sum(stats.rejected.values()),
            dict(stats.rejected),
            stats.resent,
            stats.seconds,
            stats.events_per_s,
            pacer.mode,
            pacer.slept_s,
        )
    return stats


def _resend(again: list[_Failure], factory: Callable[[str, dict], Producer], client: str,
            config: dict, topic: str, deliveries: _Deliveries, wait_s: float) -> None:
    """One round: ``again`` in order on a fresh producer, flushed and closed. A failure to
    make the producer, or a send that cannot be queued, fails the events left (retriable:
    the next round tries them again)."""
    try:
        producer = factory(client, config)
    except ClientError as exc:  # the cluster still away: ClientTimeoutError
        logger.warning("no fresh producer for the resend: %r", exc)
        for index, key, value, _exc in again:
            deliveries.fail(index, key, value, exc)
        return
    report, pending = deliveries.report, deliveries.pending
    finished = False
    try:
        for i, (index, key, value, _exc) in enumerate(again):
            pending[index] = key, value
            try:
                producer.produce(topic, value=value, key=key, on_delivery=partial(report, index))
            except ClientTimeoutError as exc:  # the queue stays full: the rest waits a round
                pending.pop(index, None)
                for index_, key_, value_, _ in again[i:]:
                    deliveries.fail(index_, key_, value_, exc)
                break
            except ClientError as exc:
                pending.pop(index, None)
                deliveries.fail(index, key, value, exc)
        finished = True
    finally:
        _close(producer, finished, deliveries, wait_s)
