"""The interface of :mod:`stream.clients` on confluent-kafka (librdkafka): the fast client.

confluent-kafka is optional (``pip install 'dwell[fast]'``) and imported only when a client is
made. Settings come with kafka-python's option names and are translated by
:func:`librdkafka_config`: an explicit table (:data:`RENAMED`) where librdkafka's name differs,
else the rule "underscores become dots"; names that already hold a dot are librdkafka's own
and pass as they are (so ``--kafka-options`` may carry librdkafka-only settings).

Differences from kafka-python that this module hides:

- rebalance callbacks run inside ``poll_batch``/``close`` on the caller's thread, so ``seek``
  from ``on_assign`` is collected and handed to ``assign`` (librdkafka cannot seek a
  partition it has not started fetching);
- librdkafka knows a partition's position only once a message of it has been returned:
  before that :meth:`ConfluentConsumer.positions` uses the seek, else the committed offset,
  else the start or end of the log (``auto.offset.reset``), asked once;
- delivery reports and logs are served by ``poll``: the producer polls after every record,
  and waits on a full queue (``BufferError``) by polling, up to ``max_block_ms``;
- librdkafka partitions keys with CRC32 by default, kafka-python (like Java) with murmur2:
  the producer here uses librdkafka's ``murmur2_random``, so a key lands on the same
  partition whichever client wrote it;
- ``Producer.close`` of librdkafka waits for every queued record without a limit: here
  ``close(timeout)`` flushes for ``timeout`` and then purges what is left;
- a librdkafka consumer can lose every broker for good (seen with librdkafka 2.16.0;
  confluentinc/librdkafka#5301): a single-node KRaft broker that shuts down answers a last
  Metadata request with no brokers, and when the connection drops just before that answer
  is handled, the client forgets the broker and cancels its own re-bootstrap. It then never
  reconnects (``metadata.recovery.rebootstrap.trigger.ms`` does not help), and a
  synchronous commit queued to the lost coordinator never returns (a learner hung after a
  broker restart). Here a blocking commit is given up after the
  network timeout plus :data:`COMMIT_MARGIN_S`, and a consumer whose handle cannot reach
  the cluster while a new one can is given a new handle: its partitions are revoked (as
  lost) and the group assigns them again; with explicit partitions they are assigned again
  from the processed positions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stream.clients import FAST_INSTALL, DeliveryCallback, Message, Record, batch_wait
from stream.clients.settings import ConsumerSettings, KafkaConnection
from stream.errors import ClientError, ClientTimeoutError, ConfigError

logger = logging.getLogger(__name__)
#: librdkafka's own log lines, served by poll.
rdkafka_logger = logging.getLogger("stream.clients.librdkafka")

#: kafka-python option -> librdkafka property, where the rule (``_`` to ``.``) does not give
#: it. None: a kafka-python setting without a librdkafka counterpart; dropped (logged).
RENAMED: dict[str, str | None] = {
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",  # true: https, false: none
    "max_request_size": "message.max.bytes",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "api_version": None,  # librdkafka asks the broker
    "api_version_auto_timeout_ms": None,
    "max_poll_records": None,  # the consumer's batch size sets consume()'s count
    "sasl_kerberos_domain_name": None,
    "buffer_memory": None,
}
#: Consumers only: kafka-python's client-side request timeout is librdkafka's network request
#: timeout there (librdkafka's request.timeout.ms is a producer property).
CONSUMER_RENAMED: dict[str, str | None] = {"request_timeout_ms": "socket.timeout.ms"}
#: librdkafka consumer settings dwell starts from (a user's kafka options override them).
#: librdkafka stops fetching a partition whose local queue holds ``queued.min.messages``
#: records and then waits ``fetch.queue.backoff.ms`` (1 s by default) before it fetches
#: again: a consumer that drains its queue fast can sit idle for most of that second. With
#: 10 ms and 4 MiB partition fetches, a bare consumer drained 730,000-820,000 records/s
#: here against 280,000-740,000 with the defaults (three runs each, alternating; 418,280
#: records of 113 bytes, 4 partitions, one broker on loopback). The queue stays bounded by
#: ``queued.max.messages.kbytes`` as before.
FETCH_DEFAULTS: dict[str, Any] = {"fetch.queue.backoff.ms": 10,
                                  "max.partition.fetch.bytes": 4 << 20}
#: Taken by the clients here, not by librdkafka: how long to wait for a first answer from the
#: cluster, and how long ``produce`` may wait for room in a full queue.
BOOTSTRAP_TIMEOUT_MS = 30_000
MAX_BLOCK_MS = 60_000
#: A blocking commit is given up this long after librdkafka's network timeout
#: (``socket.timeout.ms``): librdkafka itself answers within that timeout unless the
#: consumer has lost every broker (see the module's notes), and then it never does.
COMMIT_MARGIN_S = 15.0


def librdkafka_config(options: Mapping[str, Any], role: str = "producer") -> dict[str, Any]:
    """``options`` (kafka-python names, or librdkafka's own) as librdkafka properties.

    ``role`` is ``"producer"`` or ``"consumer"``. Raises ConfigError for a value librdkafka
    cannot take (a Python object such as ``ssl_context``).

    >>> librdkafka_config({"security_protocol": "SASL_SSL", "sasl_plain_username": "u",
    ...                    "bootstrap_servers": ["a:1", "b:2"], "linger.ms": 2})
    {'security.protocol': 'SASL_SSL', 'sasl.username': 'u', 'bootstrap.servers': 'a:1,b:2', \
'linger.ms': 2}
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if "." in key:
            name: str | None = key
        elif role == "consumer" and key in CONSUMER_RENAMED:
            name = CONSUMER_RENAMED[key]
        elif key in RENAMED:
            name = RENAMED[key]
        else:
            name = key.replace("_", ".")
        if name is None:
            logger.info("kafka option %s has no librdkafka counterpart: ignored", key)
            continue
        converted = _value(key, value)
        if converted is not None:
            out[name] = converted
    return out


def _value(key: str, value: Any) -> Any:
    if key == "ssl_check_hostname" and isinstance(value, bool):
        return "https" if value else "none"
    if value is None:
        return "none" if key == "compression_type" else None
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str | int | float | bool):
        return value
    raise ConfigError(f"kafka option {key}: a {type(value).__name__} cannot be given to "
                      "librdkafka (the confluent client)")


def _library():
    try:
        import confluent_kafka
    except ImportError as exc:
        raise ConfigError(f"the confluent Kafka client needs confluent-kafka: {FAST_INSTALL}"
                          ) from exc
    return confluent_kafka


def _kafka_error(exc: BaseException):
    """The librdkafka KafkaError inside a KafkaException, or None."""
    err = exc.args[0] if exc.args else None
    return err if hasattr(err, "code") and hasattr(err, "name") else None


def client_error(exc: BaseException, what: str) -> ClientError:
    """The ClientError for a confluent-kafka exception."""
    err = _kafka_error(exc)
    if err is None:
        error = ClientError(f"{what}: {exc!r}", type(exc).__name__)
    else:
        timeouts = {"_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT_QUEUE"}
        kind = ClientTimeoutError if err.name() in timeouts else ClientError
        error = kind(f"{what}: {err.str()}", err.name(), err.retriable())
    error.__cause__ = exc
    return error


def _log_error(err) -> None:
    """librdkafka's error callback: connection trouble and fatal errors, for the log."""
    level = logging.ERROR if err.fatal() else logging.WARNING
    logger.log(level, "kafka: %s (%s)", err.str(), err.name())


def _construct(kind: Callable[[dict], Any], conf: dict[str, Any], what: str, ck) -> Any:
    try:
        return kind({**conf, "logger": rdkafka_logger, "error_cb": _log_error})
    except (ck.KafkaException, TypeError, ValueError) as exc:
        err = _kafka_error(exc)
        raise ConfigError(f"Kafka {what} configuration: {err.str() if err else exc}") from exc


class ConfluentConsumer:
    """Polls micro-batches of at most ``max_records`` records or ``max_wait_s`` seconds."""

    _unannounced: set[int] | frozenset[int] = frozenset()  # assigned, on_assign not called
    # -- the handle check (see the module's notes); class attributes, so tests can shorten them
    #: after this long without a message, ask the cluster for the topic's metadata (at most
    #: this often), waiting up to HANDLE_CHECK_TIMEOUT_S
    HANDLE_CHECK_IDLE_S = 15.0
    HANDLE_CHECK_TIMEOUT_S = 5.0
    #: a handle that has not reached the cluster for this long is replaced if a new one does
    HANDLE_REPLACE_AFTER_S = 30.0
    _subscribed = True  # False: explicit partitions
    _owned: frozenset[int] = frozenset()  # assigned through _assigned, not revoked since
    _lost: frozenset[int] = frozenset()  # a replaced handle's partitions, revoke pending
    _reassign: frozenset[int] = frozenset()  # explicit partitions for a new handle
    _last_message = float("inf")  # monotonic time of the last message (set by __init__)
    _checked_at = float("-inf")
    _unreachable_since: float | None = None
    _callback_depth = 0  # > 0 while a rebalance callback runs
    _commit_limit = 60.0 + COMMIT_MARGIN_S

    def __init__(
        self,
        connection: KafkaConnection,
        settings: ConsumerSettings,
        *,
        on_revoke: Callable[[set[int]], None] | None = None,
        on_assign: Callable[[set[int]], None] | None = None,
    ) -> None:
        ck = self._ck = _library()
        self.topic = topic = settings.topic
        self.max_records = settings.max_records
        self.max_wait_s = settings.max_wait_s
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._start: dict[int, int] = {}  # where an unfetched partition starts (positions)
        self._seeks: dict[int, int] | None = None  # collected while on_assign runs
        self._closed = False
        options = settings.client_config(connection)
        self._timeout = options.pop("bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS) / 1000
        options.pop("max_block_ms", None)
        self._config = {
            "auto.offset.reset": "earliest", "client.id": f"dwell-{settings.group}",
            **FETCH_DEFAULTS, **librdkafka_config(options, "consumer"),
            "bootstrap.servers": connection.bootstrap, "group.id": settings.group,
            "enable.auto.commit": False,
        }
        self._commit_limit = (float(self._config.get("socket.timeout.ms", 60_000)) / 1000
                              + COMMIT_MARGIN_S)
        self._consumer = self._handle()
        try:  # like kafka-python: fail now when nobody answers
            self._consumer.list_topics(topic, timeout=self._timeout)
        except ck.KafkaException as exc:
            self._consumer.close()
            raise client_error(exc, f"cannot reach Kafka at {connection.bootstrap}") from exc
        self._last_message = time.monotonic()
        if settings.partitions is None:
            self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)
        else:
            self._subscribed = False
            self._unannounced = set(settings.partitions)

    def _handle(self):
        """A new librdkafka consumer with this consumer's settings (not subscribed yet)."""
        return _construct(self._ck.Consumer, {**self._config, "on_commit": self._commit_done},
                          "consumer", self._ck)

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    # -- rebalance callbacks: inside consume() or close(), on the caller's thread -----------
    def _assigned(self, consumer, partitions) -> None:
        if consumer is not self._consumer:  # a replaced handle (closing): confluent-kafka
            return                           # assigns/unassigns for it by itself
        mine = {tp.partition for tp in partitions}
        logger.info("partitions assigned: %s", sorted(mine))
        for p in mine:
            self._start.pop(p, None)
        self._seeks = {}
        self._callback_depth += 1
        try:
            if self.on_assign is not None:
                self.on_assign(mine)
            for tp in partitions:
                if tp.partition in self._seeks:
                    tp.offset = self._seeks[tp.partition]
        finally:
            self._seeks = None
            self._callback_depth -= 1
        consumer.assign(partitions)
        self._owned = self._owned | mine

    def _revoked(self, consumer, partitions) -> None:
        if consumer is not self._consumer:
            return
        mine = {tp.partition for tp in partitions}
        logger.info("partitions revoked: %s", sorted(mine))
        self._owned = self._owned - mine
        if self.on_revoke is not None:
            self._callback_depth += 1
            try:
                self.on_revoke(mine)
            finally:
                self._callback_depth -= 1
        for p in mine:
            self._next.pop(p, None)
            self._committed.pop(p, None)
            self._start.pop(p, None)

    def _commit_done(self, err, partitions) -> None:
        """Result of a commit (served by poll): forget a failed one so that it is sent again."""
        failed = [tp for tp in partitions or () if tp.error is not None]
        if err is None and not failed:
            return
        logger.warning("offset commit failed (%s): will retry at the next commit",
                       err.str() if err is not None else failed[0].error.str())
        self._forget({tp.partition: tp.offset for tp in partitions or ()
                      if (err is not None or tp.error is not None) and tp.topic == self.topic})

    # -- the interface ------------------------------------------------------------------------
    def poll_batch(self) -> list[Message]:
        if self._lost or self._reassign:  # a new handle took over since the last poll
            self._take_over()
        if self._unannounced:  # explicit assignment: on_assign once, inside the first poll
            self._assign_explicitly(sorted(self._unannounced))
            self._unannounced = set()
        deadline = time.monotonic() + self.max_wait_s
        out: list[Message] = []
        consume = self._consumer.consume
        while len(out) < self.max_records:
            remaining = batch_wait(deadline, self._behind)
            if remaining is None:
                break
            try:
                messages = consume(self.max_records - len(out), remaining)
            except self._ck.KafkaException as exc:
                raise client_error(exc, "poll") from exc
            for m in messages:
                err = m.error()
                if err is None:  # tuple.__new__: Message() costs ~0.1 us a record more
                    out.append(_new_tuple(Message, (m.topic(), m.partition(), m.offset(), m.key(),
                                                    m.value(), m.timestamp()[1],
                                                    m.headers() or ())))
                elif err.fatal():
                    raise ClientError(f"poll: {err.str()}", err.name(), False)
                elif err.code() != self._ck.KafkaError._PARTITION_EOF:
                    logger.warning("consumer: %s (%s)", err.str(), err.name())
        now = time.monotonic()
        if out:
            self._last_message = now
        elif now - self._last_message >= self.HANDLE_CHECK_IDLE_S:
            self._check_handle(now)
        return out

    def _behind(self) -> bool:
        """Whether an assigned partition has records in the log past what was consumed, as
        the last fetch's high watermark says (no request is made)."""
        ck = self._ck
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                if tp.offset < 0:
                    continue
                marks = self._consumer.get_watermark_offsets(tp, cached=True)
                if marks is not None and tp.offset < marks[1]:
                    return True
        except (ck.KafkaException, RuntimeError):
            return False
        return False

    # -- a handle that lost the cluster for good (see the module's notes) ---------------------
    def _check_handle(self, now: float) -> None:
        """Nothing came for a while: does this handle still reach the cluster? When it has not
        for HANDLE_REPLACE_AFTER_S while a new handle does, the new one takes over."""
        if now - self._checked_at < self.HANDLE_CHECK_IDLE_S:
            return
        self._checked_at = now
        ck = self._ck
        try:
            self._consumer.list_topics(self.topic, timeout=self.HANDLE_CHECK_TIMEOUT_S)
        except ck.KafkaException:
            if self._unreachable_since is None:
                self._unreachable_since = now
            if now - self._unreachable_since < self.HANDLE_REPLACE_AFTER_S:
                return
        else:
            self._unreachable_since = None
            return
        fresh = self._handle()
        try:
            fresh.list_topics(self.topic, timeout=self.HANDLE_CHECK_TIMEOUT_S)
        except ck.KafkaException:  # the cluster is away: a new handle would not help
            _close_quietly(fresh)
            return
        old = self._replace(fresh, f"no answer from Kafka for {now - self._unreachable_since:.0f} "
                                   "s while a new connection gets one")
        threading.Thread(target=_close_quietly, args=(old,), name="dwell-consumer-close",
                         daemon=True).start()  # closing may wait for good: not on this thread
        self._take_over()

    def _replace(self, handle, why: str):
        """Make ``handle`` this consumer's librdkafka consumer; return the old one, which is
        never called again from here. Its partitions are revoked (as lost), or assigned again
        to ``handle`` with explicit partitions, by :meth:`_take_over` in the next poll."""
        old, self._consumer = self._consumer, handle
        owned, self._owned = self._owned, frozenset()
        logger.warning("consumer: %s: a new librdkafka consumer takes over (partitions %s)",
                       why, sorted(owned))
        self._unreachable_since = None
        self._last_message = self._checked_at = time.monotonic()
        if self._subscribed:
            self._lost = self._lost | owned
            handle.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        else:
            self._reassign = self._reassign | owned
        return old

    def _take_over(self) -> None:
        """After a new handle took over: the old one's partitions are revoked (the group gives
        them out again), or, explicit ones, assigned to it from the processed positions (else
        where they start) without calling ``on_assign`` again."""
        self._revoke_lost()
        if self._reassign:
            partitions = sorted(self._reassign)
            try:
                unknown = [p for p in partitions if p not in self._next]
                starts = self._start_offsets(unknown) if unknown else {}
            except ClientError as exc:  # the cluster is away yet: next poll
                logger.warning("consumer: partitions %s not assigned again yet: %s",
                               partitions, exc)
                return
            self._consumer.assign([self._ck.TopicPartition(
                self.topic, p, self._next[p] if p in self._next else starts[p])
                for p in partitions])
            self._owned = self._owned | frozenset(partitions)
            self._reassign = frozenset()

    def _revoke_lost(self) -> None:
        if self._lost:
            lost, self._lost = self._lost, frozenset()
            self._revoked(self._consumer, [self._ck.TopicPartition(self.topic, p)
                                           for p in sorted(lost)])

    def _assign_explicitly(self, partitions: list[int]) -> None:
        """Assign with start offsets resolved here (committed, else the log's start or end).

        librdkafka's own look-up of the committed offsets on ``assign`` gives up for good when
        the group's coordinator is not ready yet (NOT_COORDINATOR on a fresh group), leaving
        the partitions without a position; here it is retried until the bootstrap timeout.
        """
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                starts = self._start_offsets(partitions)
                break
            except ClientError as exc:  # NOT_COORDINATOR on a fresh group, which librdkafka
                if time.monotonic() >= deadline:  # calls not retriable: retried all the same
                    raise
                logger.debug("start offsets of %s: %s; retrying", partitions, exc)
                time.sleep(0.2)
        self._assigned(self._consumer, [self._ck.TopicPartition(self.topic, p, starts[p])
                                        for p in partitions])

    def mark_processed(self, records: Iterable[Record]) -> None:
        self._next.update({r.partition: r.offset + 1 for r in records})

    def seek(self, partition: int, offset: int) -> None:
        if self._seeks is not None:  # inside on_assign: handed to assign()
            self._seeks[partition] = offset
        else:
            try:
                self._consumer.seek(self._ck.TopicPartition(self.topic, partition, offset))
            except self._ck.KafkaException as exc:
                raise client_error(exc, f"seek partition {partition}") from exc
        self._next[partition] = offset

    def processed(self) -> dict[int, int]:
        return dict(self._next)

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        chosen = dict(self._next) if offsets is None else dict(offsets)
        pending = {p: off for p, off in chosen.items() if self._committed.get(p) != off}
        if not pending:
            return False
        tps = [self._ck.TopicPartition(self.topic, p, off) for p, off in sorted(pending.items())]
        self._committed.update(pending)  # undone if it fails
        try:
            if blocking:
                result = self._commit_sync(tps)
                failed = [tp for tp in result or () if tp.error is not None]
                if failed:
                    error = failed[0].error
                    raise ClientError(f"offset commit, partition {failed[0].partition}: "
                                      f"{error.str()}", error.name(), error.retriable())
            else:
                self._consumer.commit(offsets=tps, asynchronous=True)
        except self._ck.KafkaException as exc:
            self._forget(pending)
            raise client_error(exc, "offset commit") from exc
        except BaseException:
            self._forget(pending)
            raise
        return True

    def _commit_sync(self, tps):
        """librdkafka's synchronous commit, given up after ``_commit_limit`` s.

        It waits on a thread of its own: librdkafka's wait has no limit, and never ends when
        the consumer has lost every broker (see the module's notes). confluent-kafka lets one
        thread at a time into a consumer, so a handle left inside such a commit can never be
        called again: a new one takes over, and the old one is closed if its commit ever
        returns. Inside a rebalance callback (this thread is already inside librdkafka) the
        commit is made here, without a limit.
        """
        handle = self._consumer
        if self._callback_depth:
            return handle.commit(offsets=tps, asynchronous=False)
        outcome: dict[str, Any] = {}

        def commit() -> None:
            try:
                outcome["result"] = handle.commit(offsets=tps, asynchronous=False)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome["error"] = exc

        thread = threading.Thread(target=commit, name="dwell-commit", daemon=True)
        thread.start()
        thread.join(self._commit_limit)
        if thread.is_alive():
            old = self._replace(self._handle(), f"a synchronous offset commit got no answer in "
                                                f"{self._commit_limit:.0f} s")
            threading.Thread(target=_close_after, args=(thread, old), daemon=True,
                             name="dwell-consumer-close").start()
            raise ClientTimeoutError(f"offset commit: no answer in {self._commit_limit:.0f} s "
                                     "(the consumer lost the cluster: a new one takes over)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _forget(self, offsets: Mapping[int, int]) -> None:
        for p, off in offsets.items():
            if self._committed.get(p) == off:
                self._committed.pop(p, None)

    @property
    def assignment(self) -> set[int]:
        try:
            return {tp.partition for tp in self._consumer.assignment()}
        except RuntimeError:  # closed
            return set()

    def positions(self) -> dict[int, int]:
        parts = sorted(self.assignment)
        if not parts:
            return {}
        ck = self._ck
        try:
            known = self._consumer.position([ck.TopicPartition(self.topic, p) for p in parts])
        except ck.KafkaException as exc:
            raise client_error(exc, "positions") from exc
        out: dict[int, int] = {}
        for tp in known:
            if tp.offset >= 0:
                out[tp.partition] = tp.offset
            elif tp.partition in self._next:
                out[tp.partition] = self._next[tp.partition]
        unknown = [p for p in parts if p not in out and p not in self._start]
        if unknown:
            self._start.update(self._start_offsets(unknown))
        out.update({p: self._start[p] for p in parts if p not in out})
        return out

    def _start_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Where partitions not fetched yet start: the committed offset, else the log's start
        (or end, as ``auto.offset.reset`` says)."""
        ck = self._ck
        reset = str(self._config.get("auto.offset.reset", "earliest")).lower()
        latest = reset in ("latest", "largest", "end")
        try:
            committed = self._consumer.committed(
                [ck.TopicPartition(self.topic, p) for p in partitions], timeout=self._timeout)
            out = {}
            for tp in committed:
                if tp.offset >= 0:
                    out[tp.partition] = tp.offset
                    continue
                marks = self._consumer.get_watermark_offsets(
                    ck.TopicPartition(self.topic, tp.partition), timeout=self._timeout)
                if marks is None:
                    raise ClientTimeoutError(f"watermarks of partition {tp.partition}: timed out")
                out[tp.partition] = marks[1] if latest else marks[0]
        except ck.KafkaException as exc:
            raise client_error(exc, "positions") from exc
        return out

    def committed(self, partitions: Iterable[int]) -> dict[int, int]:
        ck = self._ck
        tps = [ck.TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        try:
            answer = self._consumer.committed(tps, timeout=self._timeout)
        except ck.KafkaException as exc:
            raise client_error(exc, "committed offsets") from exc
        return {tp.partition: tp.offset for tp in answer if tp.offset >= 0}

    def end_offsets(self) -> dict[int, int]:
        ck = self._ck
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout)
            described = metadata.topics.get(self.topic)
            if described is None or described.error is not None:
                return {}
            out = {}
            for p in sorted(described.partitions):
                marks = self._consumer.get_watermark_offsets(
                    ck.TopicPartition(self.topic, p), timeout=self._timeout, cached=False)
                if marks is None:
                    raise ClientTimeoutError(f"end offset of partition {p}: timed out")
                out[p] = marks[1]
        except ck.KafkaException as exc:
            raise client_error(exc, "end offsets") from exc
        return out

    def lag(self) -> dict[int, int]:
        # cached=True: the high watermark of the last fetch response; no request is made
        out = {}
        for p in self.assignment:
            position = self._next.get(p)
            if position is None:
                continue
            try:
                marks = self._consumer.get_watermark_offsets(
                    self._ck.TopicPartition(self.topic, p), cached=True)
            except (self._ck.KafkaException, RuntimeError):
                continue
            if marks is not None and marks[1] >= 0:
                out[p] = max(0, marks[1] - position)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._revoke_lost()  # a new handle took over since the last poll: on_revoke first
        try:
            self._consumer.close()
        except self._ck.KafkaException as exc:
            raise client_error(exc, "close") from exc


class ConfluentProducer:
    """librdkafka's producer: acks=all, idempotent, linger 5 ms, Java's partitioner and
    kafka-python's delivery timeout, unless told otherwise."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        ck = self._ck = _library()
        options = dict(config)
        bootstrap = options.pop("bootstrap_servers", None)
        timeout_s = options.pop("bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS) / 1000
        self._max_block_s = options.pop("max_block_ms", MAX_BLOCK_MS) / 1000
        # murmur2_random: a key goes to the partition kafka-python and Java choose for it
        # (librdkafka's own default hashes with CRC32), so both clients keep a user's events in
        # one partition, in order
        # delivery.timeout.ms: kafka-python's 120 s (librdkafka's own default is 300 s)
        conf = {"acks": "all", "linger.ms": 5, "partitioner": "murmur2_random",
                "delivery.timeout.ms": 120_000, **librdkafka_config(options, "producer")}
        if "enable.idempotence" not in conf:
            # kafka-python 3's rule: idempotent when durable, a warning otherwise
            conf["enable.idempotence"] = str(conf["acks"]).lower() in ("all", "-1")
            if not conf["enable.idempotence"]:
                logger.warning("acks=%s: the producer is not idempotent (a retry may duplicate "
                               "or reorder records)", conf["acks"])
        if bootstrap is not None:
            conf["bootstrap.servers"] = _value("bootstrap_servers", bootstrap)
        self._config = conf
        self._producer = _construct(ck.Producer, conf, "producer", ck)
        self._closed = False
        self._unpolled = 0  # produces since the last poll for delivery reports
        try:  # like kafka-python: fail now when nobody answers
            self._producer.list_topics(timeout=timeout_s)
        except ck.KafkaException as exc:
            self.close(0)
            raise client_error(exc, f"cannot reach Kafka at {bootstrap}") from exc

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        report = None if on_delivery is None else _reporter(on_delivery)
        producer = self._producer
        deadline = None
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=report, headers=headers)
                break
            except BufferError:  # the queue is full: serve deliveries, wait for room
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._max_block_s
                elif now >= deadline:
                    raise ClientTimeoutError(
                        f"produce to {topic}: queue full for {self._max_block_s:.0f} s "
                        "(is the broker away?)", "BufferError") from None
                producer.poll(0.1)
            except self._ck.KafkaException as exc:
                raise client_error(exc, f"produce to {topic}") from exc
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:  # serve delivery reports; a poll a produce cost
            self._unpolled = 0  # ~0.3 us, and flush serves them all anyway
            producer.poll(0)

    def flush(self, timeout: float | None = None) -> int:
        if timeout is None:
            return self._producer.flush()
        return self._producer.flush(max(0.0, timeout))

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            left = self.flush(timeout)
            if left:
                logger.warning("producer close: %d records not acknowledged after %s s are "
                               "given up", left, timeout)
                self._producer.purge(in_queue=True, in_flight=True, blocking=True)
                self._producer.flush(1.0)  # serves their delivery callbacks (with an error)
            self._producer.close()
        except (self._ck.KafkaException, RuntimeError) as exc:
            logger.warning("producer close: %r", exc)


def _close_quietly(handle) -> None:
    """Close a librdkafka consumer that is no longer used; its trouble is only logged."""
    try:
        handle.close()
    except Exception as exc:  # noqa: BLE001 - a handle given up on
        logger.info("closing a replaced consumer: %r", exc)


def _close_after(thread: threading.Thread, handle) -> None:
    """Close ``handle`` once ``thread`` (inside a call of it) is done, if it ever is."""
    thread.join()
    _close_quietly(handle)


_new_tuple = tuple.__new__
POLL_EVERY = 64  # produces between two polls for delivery reports


def _reporter(on_delivery: DeliveryCallback) -> Callable[[Any, Any], None]:
    def report(err, _msg) -> None:
        if err is None:
            on_delivery(None)
        else:
            on_delivery(ClientError(f"delivery failed: {err.str()}", err.name(),
                                    err.retriable()))
    return report
