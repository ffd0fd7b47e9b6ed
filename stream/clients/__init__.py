"""The Kafka clients behind one small interface: kafka-python (default) or confluent-kafka.

dwell talks to Kafka for data through two objects, whichever client library is underneath:

- a :class:`BatchConsumer` in a consumer group with manual commits: ``poll_batch``,
  ``mark_processed``, ``seek``, ``processed``, ``commit`` (blocking or not), ``assignment``,
  ``positions``, ``committed``, ``end_offsets``, ``lag``, ``close``, and ``on_revoke``/``on_assign``
  callbacks;
- a :class:`Producer`: ``produce`` with a delivery report per record, ``flush(timeout)``,
  ``close(timeout)``.

:func:`make_consumer` and :func:`make_producer` build them for a client named in
:data:`CLIENTS`. A consumer is built from two frozen objects
(:mod:`stream.clients.settings`): the :class:`KafkaConnection` and its
:class:`ConsumerSettings`; every consumer class takes the same two. Client options are given
with kafka-python's names (as ``--kafka-options`` takes them); the confluent client
translates them to librdkafka's
(:func:`stream.clients.confluent.librdkafka_config`). Failures of either client surface as
:class:`~stream.errors.ClientError` (:class:`~stream.errors.ClientTimeoutError` when the
broker does not answer), bad settings as :class:`~stream.errors.ConfigError`.

Each client library is imported only when a client of its kind is made: confluent-kafka is
optional (``pip install 'dwell[fast]'``).

>>> make_producer("kafka", {"bootstrap_servers": "127.0.0.1:9092"})
Traceback (most recent call last):
...
stream.errors.ConfigError: unknown Kafka client 'kafka': expected kafka-python or confluent
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from stream.clients.settings import (
    CLIENTS,
    DEFAULT_CLIENT,
    ConsumerSettings,
    KafkaConnection,
    check_client,
)
from stream.errors import ClientError

__all__ = ["CLIENTS", "DEFAULT_CLIENT", "BatchConsumer", "ConsumerSettings",
           "DeliveryCallback", "KafkaConnection", "Message", "Producer", "Record", "batch_wait",
           "check_client", "make_consumer", "make_producer"]
#: How to install the optional fast client.
FAST_INSTALL = "pip install 'dwell[fast]'"

#: A micro-batch is cut by count while the consumer is behind the log, and by time
#: (``max_wait_s``) only once it has caught up: the same records make the same micro-batches,
#: however fast they are fetched, so a learner resumed from a checkpoint learns exactly what
#: an uninterrupted one did. Behind the log, a batch waits at most this long past
#: ``max_wait_s`` to fill (a broker gone quiet still lets the caller run).
BACKLOG_WAIT_S = 10.0

#: A delivery report: called once per produced record, with None when the broker
#: acknowledged it, else the error. kafka-python calls it on its sender thread, confluent on
#: the thread that called ``produce``/``flush``/``close``.
DeliveryCallback = Callable[[ClientError | None], None]


class Record(Protocol):
    """What a consumed record offers (kafka-python's ``ConsumerRecord`` and :class:`Message`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch (-1 when the record carries none)."""
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Message(NamedTuple):
    """A consumed record, light: what the confluent client turns librdkafka's messages into."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Sequence[tuple[str, bytes]]  # () when none: no empty list a record


class BatchConsumer(Protocol):
    """Micro-batches from one topic, in a consumer group, with manual offset commits.

    The consumer tracks, per partition, the next offset after the records the caller marked
    processed and commits exactly those. ``on_revoke(partitions)`` is called before
    partitions are given up (also on ``close``), so the owner can finish and commit what it
    holds; ``on_assign(partitions)`` after new ones are assigned (``seek`` is allowed there).
    kafka-python runs both on its IO thread, where only ``commit(blocking=False)`` is allowed;
    confluent runs them inside ``poll_batch``/``close`` on the caller's thread.
    """

    topic: str
    max_records: int
    max_wait_s: float
    on_revoke: Callable[[set[int]], None] | None
    on_assign: Callable[[set[int]], None] | None

    @property
    def config(self) -> dict[str, Any]:
        """The settings as the client library took them (its own option names)."""

    def poll_batch(self) -> Sequence[Record]:
        """Records until ``max_records`` are in hand, or ``max_wait_s`` has passed and the
        consumer has caught up with the log (maybe none); see :data:`BACKLOG_WAIT_S`."""

    def mark_processed(self, records: Iterable[Record]) -> None:
        """These records are done: their offsets may be committed."""

    def seek(self, partition: int, offset: int) -> None:
        """Continue an assigned ``partition`` from ``offset``."""

    def processed(self) -> dict[int, int]:
        """Next offset after the processed records (or the seek), per assigned partition."""

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        """Commit ``offsets`` (default: the processed ones) where they moved; True if any.

        ``blocking=False`` sends the commit without waiting for the answer.
        Raises ClientError when a blocking commit fails.
        """

    @property
    def assignment(self) -> set[int]:
        """The partitions of the topic assigned to this consumer now."""

    def positions(self) -> dict[int, int]:
        """Next offset to be returned, per assigned partition."""

    def committed(self, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offsets of ``partitions``, assigned to this consumer or not
        (a request to the group's coordinator); partitions without one are left out."""

    def end_offsets(self) -> dict[int, int]:
        """Current end offsets of every partition of the topic (a request to the broker)."""

    def lag(self) -> dict[int, int]:
        """Records between the processed position and the high watermark of the last fetch,
        per assigned partition. Never makes a request: it neither blocks nor raises while the
        broker is away. Partitions not fetched or not processed yet are left out."""

    def close(self) -> None:
        """Leave the group (calling ``on_revoke``) without committing anything more."""


class Producer(Protocol):
    """Produces records asynchronously; each one's outcome comes to its delivery callback."""

    @property
    def config(self) -> dict[str, Any]:
        """The settings as the client library took them (its own option names)."""

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue one record. Raises ClientTimeoutError when it cannot even be queued in time
        (the broker is away and the buffer full), ClientError when the client refuses it
        (e.g. too large); ``on_delivery`` is not called then."""

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` s (None: no limit) for every queued record's delivery report;
        return how many are still outstanding (0: every callback has been called)."""

    def close(self, timeout: float | None = None) -> None:
        """Flush up to ``timeout`` s, then give up on the rest (their callbacks get an error)
        and release the client. Never raises for Kafka's sake."""


def batch_wait(deadline: float, behind: Callable[[], bool]) -> float | None:
    """How long the next poll of a micro-batch may wait, or None when the batch is cut:
    until ``deadline``, then in short polls while ``behind()``, up to
    :data:`BACKLOG_WAIT_S` more."""
    left = deadline - time.monotonic()
    if left > 0:
        return left
    if left <= -BACKLOG_WAIT_S or not behind():
        return None
    return min(0.1, BACKLOG_WAIT_S + left)


def make_consumer(
    connection: KafkaConnection,
    settings: ConsumerSettings,
    *,
    on_revoke: Callable[[set[int]], None] | None = None,
    on_assign: Callable[[set[int]], None] | None = None,
) -> BatchConsumer:
    """A :class:`BatchConsumer` of ``connection.client`` as ``settings`` say.

    With ``settings.partitions`` the consumer reads exactly those partitions (no group
    rebalancing: ``on_assign`` is called once, inside the first ``poll_batch``, and
    ``on_revoke`` never), and still commits its offsets under its group, so that the group's
    lag shows. With ``settings.process`` the client runs in a child process that fetches
    ahead (:class:`stream.clients.fetcher.FetchProcess`).
    Raises ConfigError for a missing library or bad settings.
    """
    callbacks = dict(on_revoke=on_revoke, on_assign=on_assign)
    if settings.process:
        from stream.clients.fetcher import FetchProcess

        return FetchProcess(connection, settings, **callbacks)
    if connection.client == "confluent":
        from stream.clients.confluent import ConfluentConsumer

        return ConfluentConsumer(connection, settings, **callbacks)
    from stream.clients.kafka_python import KafkaPythonConsumer

    return KafkaPythonConsumer(connection, settings, **callbacks)


def make_producer(client: str, config: Mapping[str, Any], *, process: bool = False) -> Producer:
    """A :class:`Producer` of ``client``; ``config`` uses kafka-python's option names and holds
    ``bootstrap_servers``. Like kafka-python's, it waits for the cluster to answer first
    (``bootstrap_timeout_ms``, 30 s): ClientTimeoutError if it does not. With ``process``
    the client runs in a child process (:class:`stream.clients.sender.SendProcess`).
    Raises ConfigError for an unknown client, a missing library or bad settings.
    """
    if process:
        from stream.clients.sender import SendProcess

        return SendProcess(check_client(client), config)
    if check_client(client) == "confluent":
        from stream.clients.confluent import ConfluentProducer

        return ConfluentProducer(config)
    from stream.clients.kafka_python import KafkaPythonProducer

    return KafkaPythonProducer(config)
