"""The dead-letter topic: invalid records with their raw bytes, reason and source position.

Each dead letter keeps the original key and value and carries headers ``dwell.reason``,
``dwell.detail``, ``dwell.source.topic``, ``dwell.source.partition`` and
``dwell.source.offset``. :meth:`DeadLetterQueue.flush` waits for every acknowledgement and
raises if one failed, so the owner commits source offsets only after their dead letters
are durable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from stream.errors import DwellError
from stream.event import Reason

logger = logging.getLogger(__name__)
MAX_DETAIL_BYTES = 1024


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
        self._pending = []
        self._producer = KafkaProducer(**{
            "acks": "all", "retries": 10, "linger_ms": 5,
            "max_request_size": 4 * 1024 * 1024, "client_id": "dwell-dlq",
            **dict(client_config or {}), "bootstrap_servers": bootstrap.split(","),
        })

    def send(self, record: ConsumerRecord, reason: Reason, detail: str) -> None:
        future = self._producer.send(
            self.topic,
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record, reason, detail),
        )
        self._pending.append(future)

    def flush(self) -> None:
        """Block until every dead letter sent so far is acknowledged; raise if one failed."""
        if not self._pending:
            return
        self._producer.flush()
        failed = [f.exception for f in self._pending if f.failed()]
        self._pending = []
        if failed:
            raise DeadLetterError(f"{len(failed)} dead letters not written: {failed[0]!r}")

    def close(self) -> None:
        self._producer.close()
