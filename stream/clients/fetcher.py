"""A :class:`~stream.clients.BatchConsumer` whose Kafka client runs in a process of its own.

kafka-python fetches records in pure Python (their batches read by
:mod:`stream.clients.unpack`): ~4 us of CPU a record here, holding the interpreter lock
while it works. In the learner's process that time adds to the learner's own.
:class:`FetchProcess` moves the client (either one, built by
:func:`~stream.clients.make_consumer`) into a child process (:mod:`stream.clients.child`),
and fetches the next micro-batch there while the learner works on this one: the two run on
two cores.

The child is the group member; this side keeps the processed offsets (``mark_processed``,
``processed``) and asks the child for everything else over a socket pair, one command at a
time, answered in order:

- ``poll_batch`` returns the batch asked for last time and asks for the next at once (one
  batch ahead: the child's fetch is the bounded queue that gives backpressure). A full batch
  from the child means it was behind the log: a micro-batch then takes records from the
  next one too, so micro-batches are cut where a consumer in this process would cut them
  (:data:`~stream.clients.BACKLOG_WAIT_S`), not where the child's polls happen to end;
- the rebalance callbacks run where the child's client calls them (inside its poll or close,
  on kafka-python's IO thread): the child sends ``revoke``/``assign`` and serves commands
  (``commit``, ``seek``, ...) until this side, which runs ``on_revoke``/``on_assign`` as soon
  as the message comes (inside whichever call is waiting for the child), answers ``resume``.
  A poll or close asked for meanwhile waits for the callback's end, on the child's main
  thread. On revoke, the records of the revoked partitions fetched and not yet handed out
  are dropped: they were not processed, so the offsets committed leave them to the next
  owner. Should the partition come back, the client keeps its position past them: it is
  sought back to the first record dropped before ``on_assign`` runs (where the daemon may
  seek to where its state stands);
- a ``seek`` outside a callback drops the records of that partition fetched ahead (they come
  from the old position);
- ``positions`` are those of the batch this side last returned: the records fetched ahead
  and not yet returned do not count.

Records arrive as columns (values, keys, partitions, offsets, timestamps; headers only where
a record has any) and are turned into :class:`~stream.clients.Message` tuples here.

>>> _without(([b"a", b"b"], [None, b"k"], [0, 1], [5, 7], [1, 2], [(1, [("h", b"x")])]), {0})
([b'b'], [b'k'], [1], [7], [2], [(0, [('h', b'x')])])
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from itertools import repeat
from typing import Any

from stream.clients import Message, Record
from stream.clients.child import DIED, Child, ChildProcess
from stream.clients.settings import ConsumerSettings, KafkaConnection
from stream.errors import ClientError

logger = logging.getLogger(__name__)

#: The child polls at least this many records at a time (or for ``max_wait_s``), and this
#: side hands them out ``max_records`` at a time: each kafka-python poll costs ~5 ms of its
#: own, a third of the fetch at 1,024 records a poll (a bare consumer here: ~80,000
#: events/s polling 1,024 at a time, ~130,000 polling 4,096).
FETCH_RECORDS = 4096
_new_message = partial(tuple.__new__, Message)

# what the child sends of its own accord, and its answers to a poll
_REVOKE, _ASSIGN = "revoke", "assign"
_BATCH, _POLL_ERROR = "batch", "poll error"
#: What a callback's thread answers itself (with a commit that does not block): none blocks.
_IN_CALLBACK = frozenset({"seek", "assignment", "lag"})


class FetchProcess(ChildProcess):
    """The consumer of :func:`~stream.clients.make_consumer` (same arguments; the child's
    consumer polls at least :data:`FETCH_RECORDS` at a time), in a child process: see the
    module's notes."""

    def __init__(
        self,
        connection: KafkaConnection,
        settings: ConsumerSettings,
        *,
        on_revoke: Callable[[set[int]], None] | None = None,
        on_assign: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.topic = settings.topic
        self.max_records = settings.max_records
        self.max_wait_s = settings.max_wait_s
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._next: dict[int, int] = {}
        self._inbox: deque[tuple[str, Any]] = deque()  # batches not yet taken
        self._ahead: list[Message] = []  # of the last batch taken, not yet handed out
        self._asked = False  # a poll is outstanding: its batch has not arrived
        self._stale: set[int] = set()  # sought outside a callback while a poll was out
        self._callbacks = 0  # > 0 while on_revoke/on_assign runs
        self._restart: dict[int, int] = {}  # revoked: the first record dropped, by partition
        self._closed = False
        self._fetch_records = max(self.max_records, FETCH_RECORDS)  # what the child polls for
        self._full = False  # the last batch from the child was full: it was behind the log
        super().__init__("fetch process", "consumer", dict(
            connection=connection,
            settings=replace(settings, max_records=self._fetch_records, process=False)))

    def take(self, kind: str, number: int, payload: Any) -> None:
        """Run a callback, keep a batch, keep the answer to an outer call."""
        if kind in (_REVOKE, _ASSIGN):
            self._callback(kind, payload)
        elif kind in (_BATCH, _POLL_ERROR):
            self._asked = False
            self._inbox.append((kind, payload))
        else:
            super().take(kind, number, payload)

    def _callback(self, kind: str, partitions: set[int]) -> None:
        """Run ``on_revoke``/``on_assign`` while the child waits inside its client's callback."""
        self._callbacks += 1
        try:
            if kind == _REVOKE:
                # not handed out: not processed, not committed
                self._restart.update(self._drop(partitions))
                if self.on_revoke is not None:
                    self.on_revoke(partitions)
                for p in partitions:
                    self._next.pop(p, None)
            else:
                # A partition that comes back keeps the client's position, past the records
                # dropped on revoke: it goes back to the first of them (the owner's on_assign
                # may seek elsewhere).
                restart, self._restart = self._restart, {}
                for p in sorted(partitions & restart.keys()):
                    self.call("seek", p, restart[p])
                if self.on_assign is not None:
                    self.on_assign(partitions)
        finally:
            self._callbacks -= 1
            self.send("resume")

    def _drop(self, partitions: set[int]) -> dict[int, int]:
        """Forget the records of ``partitions`` fetched and not handed out yet; the first
        offset dropped, by partition."""
        first = {p: offset for p, offset in self._waiting().items() if p in partitions}
        self._ahead = [m for m in self._ahead if m.partition not in partitions]
        self._inbox = deque((kind, _without(payload, partitions) if kind == _BATCH else payload)
                            for kind, payload in self._inbox)
        return first

    # -- the interface ------------------------------------------------------------------
    def poll_batch(self) -> list[Message]:
        with self._lock:
            # a full batch from the child means it was behind the log: a micro-batch takes
            # records from the next one too, so batches are cut as the child's are
            # (BACKLOG_WAIT_S), not where the child's fetches happen to end
            while len(self._ahead) < self.max_records and (self._full or not self._ahead):
                self._ask()
                if not self._inbox:
                    self.take(*self.receive())
                    continue
                kind, payload = self._inbox.popleft()
                self._ask()  # the next batch is fetched while this one is learned
                if kind == _POLL_ERROR:
                    raise payload
                self._full = len(payload[3]) >= self._fetch_records
                fetched = self._messages(payload)
                self._ahead = self._ahead + fetched if self._ahead else fetched
                if not self._ahead and not self._full:
                    return []
            out, self._ahead = self._ahead[:self.max_records], self._ahead[self.max_records:]
            return out

    def _ask(self) -> None:
        """Ask the child for a batch, unless one is on its way or waiting here."""
        if not self._inbox and not self._asked:
            self.send("poll")
            self._asked = True

    def _messages(self, columns: tuple) -> list[Message]:
        values, keys, partitions, offsets, timestamps, headers = columns
        out = list(map(_new_message, zip(repeat(self.topic), partitions, offsets, keys, values,
                                         timestamps, repeat(()))))
        for i, h in headers:
            out[i] = out[i]._replace(headers=h)
        if self._stale:
            stale, self._stale = self._stale, set()
            out = [m for m in out if m.partition not in stale]
        return out

    def mark_processed(self, records: Iterable[Record]) -> None:
        self._next.update({r.partition: r.offset + 1 for r in records})

    def seek(self, partition: int, offset: int) -> None:
        with self._lock:
            self.call("seek", partition, offset)
            if not self._callbacks:  # what was fetched before comes from the old position
                self._drop({partition})
                if self._asked:
                    self._stale.add(partition)
            self._next[partition] = offset

    def processed(self) -> dict[int, int]:
        return dict(self._next)

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        return self.call("commit", dict(self._next) if offsets is None else dict(offsets),
                          blocking)

    @property
    def assignment(self) -> set[int]:
        return self.call("assignment")

    def positions(self) -> dict[int, int]:
        with self._lock:
            positions = self.call("positions")
            for p, offset in self._waiting().items():  # fetched, not returned yet: not passed
                positions[p] = min(positions.get(p, offset), offset)
            return positions

    def _waiting(self) -> dict[int, int]:
        """The first offset of the records fetched and not handed out yet, by partition."""
        first: dict[int, int] = {}
        for m in self._ahead:
            first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
        for kind, payload in self._inbox:
            if kind == _BATCH:
                for p, offset in zip(payload[2], payload[3], strict=True):
                    first[p] = min(first.get(p, offset), offset)
        return first

    def committed(self, partitions: Iterable[int]) -> dict[int, int]:
        return self.call("committed", sorted(partitions))

    def end_offsets(self) -> dict[int, int]:
        return self.call("end_offsets")

    def lag(self) -> dict[int, int]:
        return self.call("lag", self._next)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call("close")
        except ClientError as exc:
            if exc.name != DIED:
                raise
            logger.warning("%s", exc)
        finally:
            self.end()


# -- the child ----------------------------------------------------------------------------
class ConsumerCommands:
    """What a fetch process's child answers: its client's consumer, called back in turn."""

    kinds = {"poll": (_BATCH, _POLL_ERROR)}  # the answer's kinds, where not reply and error

    def __init__(self, child: Child, spec: dict) -> None:
        from stream.clients import make_consumer

        self.child = child
        self.consumer = make_consumer(
            spec["connection"], spec["settings"],
            on_revoke=partial(self._callback, _REVOKE), on_assign=partial(self._callback, _ASSIGN))
        self.config = self.consumer.config

    def _callback(self, kind: str, partitions: set[int]) -> None:
        self.child.callback(kind, set(partitions), _answers_in_callback)

    def do_poll(self) -> tuple:
        return _columns(self.consumer.poll_batch())

    def do_seek(self, partition: int, offset: int) -> None:
        self.consumer.seek(partition, offset)

    def do_commit(self, offsets: dict[int, int], blocking: bool) -> bool:
        return self.consumer.commit(offsets, blocking)

    def do_assignment(self) -> set[int]:
        return self.consumer.assignment

    def do_positions(self) -> dict[int, int]:
        return self.consumer.positions()

    def do_committed(self, partitions: list[int]) -> dict[int, int]:
        return self.consumer.committed(partitions)

    def do_end_offsets(self) -> dict[int, int]:
        return self.consumer.end_offsets()

    def do_lag(self, processed: dict[int, int]) -> dict[int, int]:
        topic = self.consumer.topic
        self.consumer.mark_processed([_new_message((topic, p, offset - 1, None, None, -1, ()))
                                      for p, offset in processed.items()])
        return self.consumer.lag()

    def do_close(self) -> None:
        self.consumer.close()


def _columns(records: Sequence[Record]) -> tuple:
    """A batch as columns: far cheaper to pickle than one object a record."""
    return ([r.value for r in records], [r.key for r in records],
            [r.partition for r in records], [r.offset for r in records],
            [r.timestamp for r in records],
            [(i, list(r.headers)) for i, r in enumerate(records) if r.headers])


def _without(columns: tuple, partitions: set[int]) -> tuple:
    """``columns`` less the records of ``partitions``."""
    keep = [i for i, p in enumerate(columns[2]) if p not in partitions]
    moved = {i: j for j, i in enumerate(keep)}  # old position -> new
    headers = [(moved[i], h) for i, h in columns[5] if i in moved]
    return (*([column[i] for i in keep] for column in columns[:5]), headers)


def _answers_in_callback(message: tuple) -> bool:
    """Whether a command is answered on a callback's thread: none that blocks."""
    command = message[1]
    return command in _IN_CALLBACK or (command == "commit" and not message[3])
