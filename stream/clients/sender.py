"""A :class:`~stream.clients.Producer` whose Kafka client runs in a process of its own.

kafka-python builds every record it sends in pure Python (~18 us of CPU a record here, a
model row or a dead letter), holding the learner's interpreter lock. :class:`SendProcess`
hands the records to the client (either one, built by
:func:`~stream.clients.make_producer`) in a child process (:mod:`stream.clients.child`),
``SHIP_RECORDS`` at a time in one message, without waiting: the child builds and sends
them on the other core.

Delivery reports come back with ``flush`` and ``close``, which ask the child for every
outcome since the last time and call each record's ``on_delivery`` here, on the caller's
thread. A record the child's client refused at once (too large, buffer full) is reported
then with its error. If the child dies, every record not yet reported is reported failed
(a ClientError), so a caller that flushes before committing, as the dead-letter queue
does, sends them again on a new producer.

>>> SHIP_RECORDS
256
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any

from stream.clients import DeliveryCallback
from stream.clients.child import DIED, Child, ChildProcess, picklable
from stream.errors import ClientError

logger = logging.getLogger(__name__)

#: Records queued here before they go to the child in one message (and at every flush).
SHIP_RECORDS = 256


class SendProcess(ChildProcess):
    """The producer of :func:`~stream.clients.make_producer` (same arguments), in a child
    process: see the module's notes. Never raises for Kafka's sake once built."""

    def __init__(self, client: str, config: Mapping[str, Any]) -> None:
        self._queued: list[tuple] = []  # (topic, value, key, headers), not yet shipped
        self._waiting: dict[int, DeliveryCallback | None] = {}  # record number -> callback
        self._numbered = 0
        self._closed = False
        super().__init__("send process", "producer", {"client": client, "config": dict(config)})

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        with self._lock:
            self._numbered += 1
            self._waiting[self._numbered] = on_delivery
            self._queued.append((topic, value, key, headers))
            if len(self._queued) >= SHIP_RECORDS:
                self._ship()

    def _ship(self) -> None:
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        try:
            self.send("produce", self._numbered - len(queued) + 1, queued)
        except ClientError as exc:
            self._fail_all(exc)

    def _report(self, outcomes: list[tuple[int, ClientError | None]]) -> None:
        for number, error in outcomes:
            callback = self._waiting.pop(number, None)
            if callback is not None:
                callback(error)

    def _fail_all(self, exc: ClientError) -> None:
        """The child is gone: every record not yet reported failed."""
        logger.warning("%s: %d records not acknowledged", exc, len(self._waiting))
        self._report([(number, exc) for number in list(self._waiting)])

    def flush(self, timeout: float | None = None) -> int:
        with self._lock:
            self._ship()
            try:
                self._report(self.call("flush", timeout))
            except ClientError as exc:
                if exc.name != DIED:
                    raise
                self._fail_all(exc)
            return len(self._waiting)

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ship()
            try:
                self._report(self.call("close", timeout))
            except ClientError as exc:
                self._fail_all(exc)
            finally:
                self.end()
            if self._waiting:  # the client gave up on these without a report
                self._fail_all(ClientError("producer closed before acknowledging"))


class ProducerCommands:
    """What a send process's child answers: its client's producer."""

    one_way = frozenset({"produce"})  # no answer: outcomes come with flush and close

    def __init__(self, child: Child, spec: dict) -> None:
        from stream.clients import make_producer

        self.producer = make_producer(spec["client"], spec["config"])
        self.config = self.producer.config
        self._outcomes: deque[tuple[int, ClientError | None]] = deque()  # the client's thread

    def _delivered(self, number: int, error: ClientError | None) -> None:
        self._outcomes.append((number, None if error is None else picklable(error)))

    def _drained(self) -> list[tuple[int, ClientError | None]]:
        out = []
        while self._outcomes:  # popleft is atomic: a report may come meanwhile
            out.append(self._outcomes.popleft())
        return out

    def do_produce(self, first: int, records: list[tuple]) -> None:
        for number, (topic, value, key, headers) in enumerate(records, first):
            try:
                self.producer.produce(topic, value, key, headers,
                                      on_delivery=partial(self._delivered, number))
            except ClientError as exc:
                self._delivered(number, exc)

    def do_flush(self, timeout: float | None) -> list[tuple[int, ClientError | None]]:
        self.producer.flush(timeout)
        return self._drained()

    def do_close(self, timeout: float | None) -> list[tuple[int, ClientError | None]]:
        self.producer.close(timeout)
        return self._drained()
