"""The dead-letter topic: invalid records with their raw bytes, reason and source position.

Each dead letter keeps the original key and value and carries headers ``dwell.reason``,
``dwell.detail``, ``dwell.source.topic``, ``dwell.source.partition`` and
``dwell.source.offset``. :meth:`DeadLetterQueue.flush` waits for every acknowledgement and
raises if one failed, so the owner commits source offsets only after their dead letters
are durable. A dead letter that failed is sent again by that flush and waited for by the
next one: nothing is dropped, and the owner retries by flushing again later.

No dead letter may block its partition. :func:`create_dead_letter_topic` makes the topic
able to hold whatever the source topic holds, and the producer's request size follows the
topic's limit. A letter still larger than the topic takes (a topic made beforehand with a
smaller limit) is written as an *envelope* (:func:`envelope`): the first
``ENVELOPE_VALUE_BYTES`` of the value, with the original's size and SHA-256 in headers and
``dwell.truncated: 1``; the original stays in the source topic for its retention. That is
decided before sending, from the letter's size and the topic's limit, and again when the
broker or the client refuses a letter as too large: the limit is read again, and only the
letters over it become envelopes (kafka-python's idempotent producer fails every letter in
flight with the one that was too large; those are sent again as they were). A topic that
refuses even the envelope holds the commits until an operator raises its limit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from kafka.errors import KafkaError

from stream.admin import create_topic, max_message_bytes
from stream.clients import DEFAULT_CLIENT, Producer, Record, make_producer
from stream.errors import ClientError, DwellError
from stream.event import Reason

logger = logging.getLogger(__name__)
MAX_DETAIL_BYTES = 1024
FLUSH_TIMEOUT_S = 30.0
#: An envelope keeps this much of the value and of the key.
ENVELOPE_VALUE_BYTES = 4096
ENVELOPE_KEY_BYTES = 1024
#: What a dead letter may add to its source record (headers: the detail, the topic's name,
#: an envelope's hashes): the dead-letter topic is made this much larger than the source.
HEADROOM_BYTES = 16 * 1024
#: The framing of a record batch that holds one record, rounded up (its header is 61 bytes).
RECORD_OVERHEAD = 128
#: The request size a producer is given at least and at most (librdkafka's range).
REQUEST_BYTES_RANGE = (1_000, 1_000_000_000)
#: Names of a "record too large" refusal: kafka-python's exception classes, librdkafka's codes.
SIZE_ERRORS = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError",
                         "MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
#: A letter refused as too large this many times is sent as an envelope whatever the limit says.
REFUSALS_BEFORE_ENVELOPE = 2


class DeadLetterError(DwellError):
    """A dead letter could not be written; source offsets must not be committed."""

    retriable = True


_REASONS = {reason: reason.value.encode() for reason in Reason}
Headers = list[tuple[str, bytes]]


def dead_letter_headers(record: Record, reason: Reason, detail: str) -> Headers:
    """The headers of the dead letter for ``record``."""
    return [
        ("dwell.reason", _REASONS[reason]),
        ("dwell.detail", detail.encode()[:MAX_DETAIL_BYTES]),
        ("dwell.source.topic", record.topic.encode()),
        ("dwell.source.partition", b"%d" % record.partition),
        ("dwell.source.offset", b"%d" % record.offset),
    ]


def letter_size(value: bytes | None, key: bytes | None, headers: Headers) -> int:
    """An upper bound of the bytes a batch of this one record takes on the broker (what a
    topic's ``max.message.bytes`` limits)."""
    return (RECORD_OVERHEAD + len(value or b"") + len(key or b"")
            + sum(len(name) + len(data) + 10 for name, data in headers))


def truncatable(record: Record) -> bool:
    """Whether the envelope of ``record`` would be smaller than the record."""
    return (len(record.value or b"") > ENVELOPE_VALUE_BYTES
            or len(record.key or b"") > ENVELOPE_KEY_BYTES)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def envelope(record: Record, reason: Reason, detail: str
             ) -> tuple[bytes | None, bytes | None, Headers]:
    """The truncated dead letter of ``record``: value, key and headers.

    The value is cut to its first ``ENVELOPE_VALUE_BYTES``, and headers give the original
    value's size and SHA-256 (``dwell.original.size``, ``dwell.original.sha256``, hex) with
    ``dwell.truncated: 1``; a key over ``ENVELOPE_KEY_BYTES`` is cut too, its size and hash
    in ``dwell.original.key.size`` and ``dwell.original.key.sha256``.
    """
    value, key = record.value, record.key
    original = value or b""
    headers = [*dead_letter_headers(record, reason, detail),
               ("dwell.truncated", b"1"),
               ("dwell.original.size", b"%d" % len(original)),
               ("dwell.original.sha256", _digest(original))]
    if key is not None and len(key) > ENVELOPE_KEY_BYTES:
        headers += [("dwell.original.key.size", b"%d" % len(key)),
                    ("dwell.original.key.sha256", _digest(key))]
        key = key[:ENVELOPE_KEY_BYTES]
    return (None if value is None else value[:ENVELOPE_VALUE_BYTES]), key, headers


def _size_refusal(outcome: object) -> bool:
    return isinstance(outcome, ClientError) and outcome.name in SIZE_ERRORS


def create_dead_letter_topic(
    bootstrap: str, source: str, topic: str, options: Mapping[str, Any] | None = None,
) -> int | None:
    """Create ``topic`` (one partition) able to hold any record of ``source``, unless it
    exists; return the largest record batch it takes, None if that cannot be read.

    Its ``max.message.bytes`` is the source's plus ``HEADROOM_BYTES``. A topic that exists
    with less is left as it is (its letters too large become envelopes): a warning says so.
    """
    try:
        wanted = max_message_bytes(bootstrap, source, options=options) + HEADROOM_BYTES
    except KafkaError as exc:  # no such topic yet, or no right to read its settings
        logger.warning("cannot read the settings of %s (%r): %s takes the cluster's default "
                       "record size", source, exc, topic)
        wanted = None
    create_topic(bootstrap, topic, partitions=1, options=options,
                 config=None if wanted is None else {"max.message.bytes": wanted})
    limit = _read_limit(bootstrap, topic, options)
    if limit is not None and wanted is not None and limit < wanted:
        logger.warning("dead-letter topic %s takes records up to %d bytes, %s up to %d: larger "
                       "dead letters are written as envelopes (their first %d bytes)", topic,
                       limit, source, wanted - HEADROOM_BYTES, ENVELOPE_VALUE_BYTES)
    return limit


def _read_limit(bootstrap: str, topic: str, options: Mapping[str, Any] | None,
                timeout: float = 30.0) -> int | None:
    try:
        return max_message_bytes(bootstrap, topic, timeout, options)
    except KafkaError as exc:
        logger.warning("cannot read max.message.bytes of %s: %r", topic, exc)
        return None


_NOT_ACKNOWLEDGED = "not acknowledged"


class _Letter:
    """One dead letter and its delivery outcome: pending, None (written) or the error.

    ``truncated``: sent as an envelope; ``refused``: times refused as too large so far.
    """

    __slots__ = ("record", "reason", "detail", "truncated", "refused", "outcome")

    def __init__(self, record: Record, reason: Reason, detail: str, truncated: bool = False,
                 refused: int = 0) -> None:
        self.record, self.reason, self.detail = record, reason, detail
        self.truncated, self.refused = truncated, refused
        self.outcome: ClientError | str | None = _NOT_ACKNOWLEDGED

    def delivered(self, error: ClientError | None) -> None:
        self.outcome = error

    def again(self) -> _Letter:
        """The same letter, to be sent again after this attempt failed."""
        refused = self.refused + _size_refusal(self.outcome)
        return _Letter(self.record, self.reason, self.detail, self.truncated, refused)


class DeadLetterQueue:
    """Writes invalid records to the dead-letter topic with acks=all, with either client.

    ``max_message_bytes`` is the topic's limit (:func:`create_dead_letter_topic`); None when
    unknown. ``written`` and ``truncated`` count the letters acknowledged, and the envelopes
    among them.
    """

    def __init__(
        self, bootstrap: str, topic: str, client_config: Mapping[str, Any] | None = None,
        client: str = DEFAULT_CLIENT, process: bool = False,
        max_message_bytes: int | None = None,
    ) -> None:
        self.topic = topic
        self.client = client
        self.process = process  # the producer in a child process (stream.clients.sender)
        self.limit = max_message_bytes
        self.written = self.truncated = 0
        self._bootstrap = bootstrap
        self._options = dict(client_config or {})
        self._pending: list[_Letter] = []
        self._producer: Producer | None = make_producer(client, self._producer_config(),
                                                        process=process)

    def _producer_config(self) -> dict[str, Any]:
        """Settings of a new producer: a user's kafka options over the request and batch
        sizes the topic's limit allows, over dwell's defaults."""
        # Long batches: a flush (before each commit) sends them at once anyway, and
        # kafka-python wakes its sender thread (a syscall) for each new batch: a dead letter
        # cost 60 us with these against 81-97 with linger 5 ms and 16 KiB batches.
        sizes: dict[str, int] = {"max_request_size": 4 << 20, "batch_size": 1 << 20}
        if self.limit is not None:  # no letter refused under the limit; no batch over it
            # (half: whatever framing a client leaves out of its batch size; a letter larger
            # than the batch size goes in a batch of its own)
            low, high = REQUEST_BYTES_RANGE
            sizes = {"max_request_size": min(max(self.limit, low), high),
                     "batch_size": max(1, min(1 << 20, self.limit // 2))}
        return {"acks": "all", "retries": 10, "linger_ms": 500, "client_id": "dwell-dlq",
                **sizes, **self._options, "bootstrap_servers": self._bootstrap.split(",")}

    @property
    def producer_config(self) -> dict[str, Any]:
        """The producer's settings as its client library took them."""
        return self._producer.config if self._producer is not None else {}

    def send(self, record: Record, reason: Reason, detail: str) -> None:
        self._send(_Letter(record, reason, detail))

    def _send(self, letter: _Letter) -> None:
        self._pending.append(letter)
        if self._producer is None:
            letter.delivered(ClientError("no dead-letter producer (Kafka unreachable)"))
            return
        record = letter.record
        value, key = record.value, record.key
        headers = dead_letter_headers(record, letter.reason, letter.detail)
        if not letter.truncated and truncatable(record) and self._too_large(letter, headers):
            letter.truncated = True
            logger.warning("dead letter of %s partition %d offset %d (%d bytes, key and headers "
                           "included) is larger than %s takes (%s bytes): written as an "
                           "envelope", record.topic, record.partition, record.offset,
                           letter_size(value, key, headers), self.topic,
                           self.limit if self.limit is not None else "limit unknown, refused")
        if letter.truncated:
            value, key, headers = envelope(record, letter.reason, letter.detail)
        try:
            self._producer.produce(self.topic, value=value, key=key, headers=headers,
                                   on_delivery=letter.delivered)
        except ClientError as exc:  # refused at once: the next flush sends it again
            letter.delivered(exc)

    def _too_large(self, letter: _Letter, headers: Headers) -> bool:
        """Whether ``letter`` goes as an envelope: over the topic's limit, or refused as too
        large where the limit is unknown or says it fits (then the second time)."""
        if letter.refused >= REFUSALS_BEFORE_ENVELOPE or (letter.refused and self.limit is None):
            return True
        size = letter_size(letter.record.value, letter.record.key, headers)
        return self.limit is not None and size > self.limit

    @property
    def pending(self) -> int:
        """Dead letters sent and not yet acknowledged by a flush."""
        return len(self._pending)

    def flush(self) -> None:
        """Block until every dead letter sent so far is acknowledged.

        Raises :class:`DeadLetterError` if one failed; the failed ones are sent again and
        stay pending, so a later ``flush`` succeeds once the topic is writable. When they
        were sent again otherwise (some as envelopes, or under a new limit read from the
        topic), this flush waits for them once more first.
        """
        failed = self._flush_once()
        if failed and self._send_again(failed):
            failed = self._flush_once()
            if failed:
                self._send_again(failed)
        if failed:
            raise DeadLetterError(
                f"{len(failed)} dead letters not written (sent again): {failed[0].outcome!r}")

    def _flush_once(self) -> list[_Letter]:
        """Wait for every pending letter; count the written ones; return the failed ones."""
        if not self._pending:
            return []
        if self._producer is not None:
            self._producer.flush(FLUSH_TIMEOUT_S)
        pending, self._pending = self._pending, []
        failed = []
        for letter in pending:
            if letter.outcome is None:
                self.written += 1
                self.truncated += letter.truncated
            else:
                failed.append(letter)
        return failed

    def _send_again(self, failed: list[_Letter]) -> bool:
        """Send ``failed`` again on a fresh producer; True if that is not what failed: the
        topic's limit changed, or some letters now go as envelopes."""
        limit = self.limit
        if limit is not None and any(_size_refusal(letter.outcome) for letter in failed):
            self.limit = _read_limit(self._bootstrap, self.topic, self._options,
                                     timeout=5.0) or limit
        # An idempotent producer that met a fatal error refuses every later send: start afresh.
        self._close_producer(timeout=1)
        try:
            self._producer = make_producer(self.client, self._producer_config(),
                                           process=self.process)
        except ClientError as exc:
            logger.warning("dead-letter producer: %r", exc)
            self._producer = None
        reshaped = self.limit != limit
        for letter in failed:
            again = letter.again()
            self._send(again)
            reshaped |= again.truncated and not letter.truncated
        return reshaped

    def _close_producer(self, timeout: float) -> None:
        # unacknowledged dead letters are dropped here; their source offsets were not committed
        if self._producer is not None:
            self._producer.close(timeout=timeout)

    def close(self) -> None:
        self._close_producer(timeout=FLUSH_TIMEOUT_S)
