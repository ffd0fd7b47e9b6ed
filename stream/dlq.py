"""The dead-letter topic: invalid records with their raw bytes, reason and source position.

Each dead letter keeps the original key and value and carries headers ``dwell.reason``,
``dwell.detail``, ``dwell.source.topic``, ``dwell.source.partition`` and
``dwell.source.offset``. :meth:`DeadLetterQueue.flush` waits for every acknowledgement and
raises if one failed, so the owner commits source offsets only after their dead letters
are durable. A dead letter that failed is sent again by that flush and waited for by the
next one: nothing is dropped, and the owner retries by flushing again later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stream.clients import DEFAULT_CLIENT, Producer, Record, make_producer
from stream.errors import ClientError, DwellError
from stream.event import Reason

logger = logging.getLogger(__name__)
MAX_DETAIL_BYTES = 1024
FLUSH_TIMEOUT_S = 30.0


class DeadLetterError(DwellError):
    """A dead letter could not be written; source offsets must not be committed."""

    retriable = True


_REASONS = {reason: reason.value.encode() for reason in Reason}


def dead_letter_headers(record: Record, reason: Reason, detail: str):
    """The headers of the dead letter for ``record``."""
    return [
        ("dwell.reason", _REASONS[reason]),
        ("dwell.detail", detail.encode()[:MAX_DETAIL_BYTES]),
        ("dwell.source.topic", record.topic.encode()),
        ("dwell.source.partition", b"%d" % record.partition),
        ("dwell.source.offset", b"%d" % record.offset),
    ]


_NOT_ACKNOWLEDGED = "not acknowledged"


class _Letter:
    """One dead letter and its delivery outcome: pending, None (written) or the error."""

    __slots__ = ("record", "reason", "detail", "outcome")

    def __init__(self, record: Record, reason: Reason, detail: str) -> None:
        self.record, self.reason, self.detail = record, reason, detail
        self.outcome: ClientError | str | None = _NOT_ACKNOWLEDGED

    def delivered(self, error: ClientError | None) -> None:
        self.outcome = error


class DeadLetterQueue:
    """Writes invalid records to the dead-letter topic with acks=all, with either client."""

    def __init__(
        self, bootstrap: str, topic: str, client_config: Mapping[str, Any] | None = None,
        client: str = DEFAULT_CLIENT, process: bool = False,
    ) -> None:
        self.topic = topic
        self.client = client
        self.process = process  # the producer in a child process (stream.clients.sender)
        self._pending: list[_Letter] = []
        # Long batches: a flush (before each commit) sends them at once anyway, and
        # kafka-python wakes its sender thread (a syscall) for each new batch: a dead letter
        # cost 60 us with these against 81-97 with linger 5 ms and 16 KiB batches.
        self._config = {
            "acks": "all", "retries": 10, "linger_ms": 500, "batch_size": 1 << 20,
            "max_request_size": 4 * 1024 * 1024, "client_id": "dwell-dlq",
            **dict(client_config or {}), "bootstrap_servers": bootstrap.split(","),
        }
        self._producer: Producer | None = make_producer(client, self._config, process=process)

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
        try:
            self._producer.produce(
                self.topic, value=record.value, key=record.key,
                headers=dead_letter_headers(record, letter.reason, letter.detail),
                on_delivery=letter.delivered,
            )
        except ClientError as exc:  # refused at once: the next flush sends it again
            letter.delivered(exc)

    @property
    def pending(self) -> int:
        """Dead letters sent and not yet acknowledged by a flush."""
        return len(self._pending)

    def flush(self) -> None:
        """Block until every dead letter sent so far is acknowledged.

        Raises :class:`DeadLetterError` if one failed; the failed ones are sent again and
        stay pending, so a later ``flush`` succeeds once the topic is writable.
        """
        if not self._pending:
            return
        if self._producer is not None:
            self._producer.flush(FLUSH_TIMEOUT_S)
        pending, self._pending = self._pending, []
        failed = [letter for letter in pending if letter.outcome is not None]
        if not failed:
            return
        # An idempotent producer that met a fatal error refuses every later send: start afresh.
        self._close_producer(timeout=1)
        try:
            self._producer = make_producer(self.client, self._config, process=self.process)
        except ClientError as exc:
            logger.warning("dead-letter producer: %r", exc)
            self._producer = None
        for letter in failed:
            self._send(_Letter(letter.record, letter.reason, letter.detail))
        raise DeadLetterError(
            f"{len(failed)} dead letters not written (sent again): {failed[0].outcome!r}"
        )

    def _close_producer(self, timeout: float) -> None:
        # unacknowledged dead letters are dropped here; their source offsets were not committed
        if self._producer is not None:
            self._producer.close(timeout=timeout)

    def close(self) -> None:
        self._close_producer(timeout=FLUSH_TIMEOUT_S)
