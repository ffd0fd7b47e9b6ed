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

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from stream.errors import DwellError
from stream.event import Reason

logger = logging.getLogger(__name__)
MAX_DETAIL_BYTES = 1024
FLUSH_TIMEOUT_S = 30.0


class DeadLetterError(DwellError):
    """A dead letter could not be written; source offsets must not be committed."""

    retriable = True


def dead_letter_headers(record: ConsumerRecord, reason: Reason, detail: str):
    """The headers of the dead letter for ``record``."""
    return [
        ("dwell.reason", reason.value.encode()),
        ("dwell.detail", detail.encode()[:MAX_DETAIL_BYTES]),
        ("dwell.source.topic", record.topic.encode()),
        ("dwell.source.partition", str(record.partition).encode()),
        ("dwell.source.offset", str(record.offset).encode()),
    ]


class DeadLetterQueue:
    """Writes invalid records to the dead-letter topic with acks=all."""

    def __init__(
        self, bootstrap: str, topic: str, client_config: Mapping[str, Any] | None = None
    ) -> None:
        self.topic = topic
        self._pending: list[tuple[Any, ConsumerRecord, Reason, str]] = []
        self._config = {
            "acks": "all", "retries": 10, "linger_ms": 5,
            "max_request_size": 4 * 1024 * 1024, "client_id": "dwell-dlq",
            **dict(client_config or {}), "bootstrap_servers": bootstrap.split(","),
        }
        self._producer = KafkaProducer(**self._config)

    def send(self, record: ConsumerRecord, reason: Reason, detail: str) -> None:
        future = self._producer.send(
            self.topic,
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record, reason, detail),
        )
        self._pending.append((future, record, reason, detail))

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
        try:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:  # e.g. a producer gone fatal: its batches never complete
            logger.warning("dead-letter flush: %r", exc)
        pending, self._pending = self._pending, []
        failed = [(f.exception or "not acknowledged", *rest)
                  for f, *rest in pending if not f.succeeded()]
        if failed:
            # An idempotent producer that met a fatal error refuses every later send.
            self._close_producer(timeout=1)
            self._producer = KafkaProducer(**self._config)
        for _exc, record, reason, detail in failed:
            self.send(record, reason, detail)
        if failed:
            raise DeadLetterError(
                f"{len(failed)} dead letters not written (sent again): {failed[0][0]!r}"
            )

    def _close_producer(self, timeout: float) -> None:
        try:
            self._producer.close(timeout=timeout)
        except KafkaError as exc:
            logger.warning("dead-letter producer close: %r (unacknowledged dead letters are "
                           "dropped here; their source offsets were not committed)", exc)

    def close(self) -> None:
        self._close_producer(timeout=FLUSH_TIMEOUT_S)
