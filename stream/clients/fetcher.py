"""A :class:`~stream.clients.BatchConsumer` whose Kafka client runs in a process of its own.

kafka-python fetches and parses records in pure Python: ~7 us a record here, the whole of a
core at its ceiling, and it holds the interpreter lock while it does. In the learner's
process that time adds to the learner's own. :class:`FetchProcess` moves the client (either
one, built by :func:`~stream.clients.make_consumer`) into a child process, ``python -m
stream.clients.fetcher``, and fetches the next micro-batch there while the learner works on
this one: the two run on two cores.

The child is the group member; this side keeps the processed offsets (``mark_processed``,
``processed``) and asks the child for everything else over a socket pair, one command at a
time, answered in order:

- ``poll_batch`` returns the batch asked for last time and asks for the next at once (one
  batch ahead: the child's fetch is the bounded queue that gives backpressure);
- the rebalance callbacks run where the child's client calls them (inside its poll or close,
  on kafka-python's IO thread): the child sends ``revoke``/``assign`` and serves commands
  (``commit``, ``seek``, ...) until this side, which runs ``on_revoke``/``on_assign`` as soon
  as the message comes (inside whichever call is waiting for the child), answers ``resume``.
  A poll or close asked for meanwhile waits for the callback's end, on the child's main
  thread. On revoke, the records of the revoked partitions fetched and not yet handed out
  are dropped: they were not processed, so the offsets committed leave them to the next
  owner (and the daemon, should the partition come back, seeks to where it stood);
- a ``seek`` outside a callback drops the records of that partition fetched ahead (they come
  from the old position);
- ``positions`` are those of the batch this side last returned: the records fetched ahead
  and not yet returned do not count.

Records arrive as columns (values, keys, partitions, offsets, timestamps; headers only where
a record has any) and are turned into :class:`~stream.clients.Message` tuples here. The child
ends when this side closes it or goes away (end of file on its socket).

>>> _without(([b"a", b"b"], [None, b"k"], [0, 1], [5, 7], [1, 2], [(1, [("h", b"x")])]), {0})
([b'b'], [b'k'], [1], [7], [2], [(0, [('h', b'x')])])
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import repeat
from multiprocessing.connection import Connection
from typing import Any

from stream.clients import Message, Record
from stream.errors import ClientError

logger = logging.getLogger(__name__)

#: The child polls at least this many records at a time (or for ``max_wait_s``), and this
#: side hands them out ``max_records`` at a time: each kafka-python poll costs ~5 ms of its
#: own, a third of the fetch at 1,024 records a poll (a bare consumer here: ~80,000
#: events/s polling 1,024 at a time, ~130,000 polling 4,096).
FETCH_RECORDS = 4096
#: Seconds the child may take to start, connect and answer its first command.
START_TIMEOUT_S = 120.0
_new_message = partial(tuple.__new__, Message)

# messages from the child: (kind, payload)
_REPLY, _ERROR, _REVOKE, _ASSIGN = "reply", "error", "revoke", "assign"
_BATCH, _POLL_ERROR = "batch", "poll error"  # the answers to a poll
#: What a callback's thread answers itself (with a commit that does not block): none blocks.
_IN_CALLBACK = frozenset({"seek", "assignment", "lag"})
_DIED = "FetchProcessDied"  # the name of the ClientError when the child is gone


class FetchProcess:
    """The consumer of :func:`~stream.clients.make_consumer` (same arguments), in a child
    process: see the module's notes. Raises what the child's client raised, pickled across
    (ClientError, ConfigError); ClientError when the child dies."""

    def __init__(
        self,
        client: str,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        max_records: int = 1024,
        max_wait_s: float = 0.5,
        client_config: Mapping[str, Any] | None = None,
        on_revoke: Callable[[set[int]], None] | None = None,
        on_assign: Callable[[set[int]], None] | None = None,
        partitions: Iterable[int] | None = None,
    ) -> None:
        self.topic = topic
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._next: dict[int, int] = {}
        self._inbox: deque[tuple[str, Any]] = deque()  # batches and callbacks not yet taken
        self._ahead: list[Message] = []  # of the last batch taken, not yet handed out
        self._asked = False  # a poll is outstanding: its batch has not arrived
        self._stale: set[int] = set()  # sought outside a callback while a poll was out
        self._callbacks = 0  # > 0 while on_revoke/on_assign runs
        self._sent = 0  # commands sent: each answer names its command by this number
        self._answers: dict[int, tuple[str, Any]] = {}  # answers that came before awaited
        self._lock = threading.RLock()  # one caller talks to the child at a time
        self._closed = False
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stream.clients.fetcher", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        spec = dict(client=client, bootstrap=bootstrap, topic=topic, group=group,
                    max_records=max(max_records, FETCH_RECORDS), max_wait_s=max_wait_s,
                    client_config=dict(client_config or {}),
                    partitions=None if partitions is None else sorted(partitions))
        try:
            self._config = self._call("open", spec, timeout=START_TIMEOUT_S)
        except BaseException:
            self._kill()
            raise

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    # -- talking to the child -------------------------------------------------------------
    def _receive(self, timeout: float | None = None) -> tuple[str, int, Any]:
        """The child's next message: (kind, the command's number or 0, payload)."""
        try:
            if timeout is not None and not self._conn.poll(timeout):
                raise ClientError(f"fetch process: no answer in {timeout:.0f} s",
                                  "FetchProcessTimeout")
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise ClientError(f"fetch process {self._process.pid} died "
                              f"(exit status {self._process.poll()})", _DIED,
                              False) from exc

    def _send(self, command: str, *args: Any) -> int:
        """Send ``command``; its number, which its answer carries."""
        self._sent += 1
        try:
            self._conn.send_bytes(pickle.dumps((self._sent, command, *args),
                                               pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            raise ClientError(f"fetch process {self._process.pid} is gone",
                              _DIED, False) from exc
        return self._sent

    def _take(self, kind: str, answers: int, payload: Any) -> None:
        """Take in a message that is not the answer awaited: run a callback, keep a batch,
        keep the answer to an outer call (one that a callback's call overtook)."""
        if kind in (_REVOKE, _ASSIGN):
            self._callback(kind, payload)
        elif kind in (_BATCH, _POLL_ERROR):
            self._asked = False
            self._inbox.append((kind, payload))
        else:
            self._answers[answers] = (kind, payload)

    def _call(self, command: str, *args: Any, timeout: float | None = None) -> Any:
        """Send ``command`` and wait for its answer; a batch that comes first is kept for
        ``poll_batch``, a callback that comes first is run now."""
        with self._lock:
            number = self._send(command, *args)
            while number not in self._answers:
                self._take(*self._receive(timeout))
            kind, payload = self._answers.pop(number)
            if kind == _ERROR:
                raise payload
            return payload

    def _callback(self, kind: str, partitions: set[int]) -> None:
        """Run ``on_revoke``/``on_assign`` while the child waits inside its client's callback."""
        self._callbacks += 1
        try:
            if kind == _REVOKE:
                self._drop(partitions)  # not handed out: not processed, not committed
                if self.on_revoke is not None:
                    self.on_revoke(partitions)
                for p in partitions:
                    self._next.pop(p, None)
            elif self.on_assign is not None:
                self.on_assign(partitions)
        finally:
            self._callbacks -= 1
            self._send("resume")

    def _drop(self, partitions: set[int]) -> None:
        """Forget the records of ``partitions`` fetched and not handed out yet."""
        self._ahead = [m for m in self._ahead if m.partition not in partitions]
        self._inbox = deque((kind, _without(payload, partitions) if kind == _BATCH else payload)
                            for kind, payload in self._inbox)

    # -- the interface ------------------------------------------------------------------
    def poll_batch(self) -> list[Message]:
        with self._lock:
            while not self._ahead:
                if not self._inbox and not self._asked:
                    self._send("poll")
                    self._asked = True
                if not self._inbox:
                    self._take(*self._receive())
                    continue
                kind, payload = self._inbox.popleft()
                if not self._inbox and not self._asked:
                    self._send("poll")  # the next batch is fetched while this one is learned
                    self._asked = True
                if kind == _POLL_ERROR:
                    raise payload
                self._ahead = self._messages(payload)
                if not self._ahead:
                    return []
            out, self._ahead = self._ahead[:self.max_records], self._ahead[self.max_records:]
            return out

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
            self._call("seek", partition, offset)
            if not self._callbacks:  # what was fetched before comes from the old position
                self._drop({partition})
                if self._asked:
                    self._stale.add(partition)
            self._next[partition] = offset

    def processed(self) -> dict[int, int]:
        return dict(self._next)

    def commit(self, offsets: dict[int, int] | None = None, blocking: bool = True) -> bool:
        return self._call("commit", dict(self._next) if offsets is None else dict(offsets),
                          blocking)

    @property
    def assignment(self) -> set[int]:
        return self._call("assignment")

    def positions(self) -> dict[int, int]:
        with self._lock:
            positions = self._call("positions")
            for m in self._ahead:  # fetched, not returned yet: not passed
                positions[m.partition] = min(positions.get(m.partition, m.offset), m.offset)
            for kind, payload in self._inbox:
                if kind == _BATCH:
                    for p, offset in zip(payload[2], payload[3], strict=True):
                        positions[p] = min(positions.get(p, offset), offset)
            return positions

    def end_offsets(self) -> dict[int, int]:
        return self._call("end_offsets")

    def lag(self) -> dict[int, int]:
        return self._call("lag", self._next)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call("close")
        except ClientError as exc:
            if exc.name != _DIED:
                raise
            logger.warning("%s", exc)
        finally:
            self._conn.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill()

    def _kill(self) -> None:
        self._process.kill()
        self._process.wait()


# -- the child ----------------------------------------------------------------------------
class _Child:
    """Serves one parent over ``conn``: builds the client, then answers commands in order.

    The main thread reads commands and runs polls; a rebalance callback (on the client's
    thread for kafka-python) reads and answers the commands sent meanwhile, all but ``poll``
    and ``close``, which it leaves to the main thread. One thread reads at a time.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.consumer = None
        self._reading = threading.Lock()
        self._sending = threading.Lock()
        self._left: deque[list] = deque()  # poll and close, read inside a callback

    def send(self, *message: Any) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self._sending:
            self.conn.send_bytes(data)

    def _read(self) -> list | None:
        """The next command for the main thread, or None after a short wait without one."""
        if self._left:
            return self._left.popleft()
        if not self.conn.poll(0.05):  # not holding the lock: a callback may read meanwhile
            return None
        with self._reading:
            if self._left or not self.conn.poll(0):  # a callback read it
                return None
            return pickle.loads(self.conn.recv_bytes())

    def serve(self) -> None:
        """Answer commands until ``close`` (or the parent goes away)."""
        while True:
            message = self._read()
            if message is not None and not self.answer(*message):
                return

    def answer(self, number: int, command: str, *args: Any) -> bool:
        """Run command ``number`` and send its answer; False after ``close``."""
        if command == "poll":
            try:
                batch = _columns(self.consumer.poll_batch())
            except Exception as exc:  # the parent raises it: the child goes on
                self.send(_POLL_ERROR, number, _picklable(exc))
            else:
                self.send(_BATCH, number, batch)
            return True
        if command == "resume":  # a late one: nothing waits for it
            return True
        try:
            self.send(_REPLY, number, getattr(self, f"do_{command}")(*args))
        except Exception as exc:
            self.send(_ERROR, number, _picklable(exc))
        return command != "close"

    def callback(self, kind: str, partitions: set[int]) -> None:
        """Inside the client's callback: tell the parent, answer it until it resumes. The
        client may call it on a thread of its own (kafka-python's IO thread) where a blocking
        call fails: such commands wait for the main thread."""
        with self._reading:
            self.send(kind, 0, set(partitions))
            while True:
                message = pickle.loads(self.conn.recv_bytes())
                command = message[1]
                if command == "resume":
                    return
                if command in _IN_CALLBACK or (command == "commit" and not message[3]):
                    self.answer(*message)
                else:
                    self._left.append(message)

    # commands
    def do_open(self, spec: dict) -> dict:
        from stream.clients import make_consumer

        spec = dict(spec)
        self.consumer = make_consumer(
            spec.pop("client"), spec.pop("bootstrap"), spec.pop("topic"), spec.pop("group"),
            on_revoke=partial(self.callback, _REVOKE), on_assign=partial(self.callback, _ASSIGN),
            **spec)
        return {k: v for k, v in self.consumer.config.items() if _is_picklable(v)}

    def do_seek(self, partition: int, offset: int) -> None:
        self.consumer.seek(partition, offset)

    def do_commit(self, offsets: dict[int, int], blocking: bool) -> bool:
        return self.consumer.commit(offsets, blocking)

    def do_assignment(self) -> set[int]:
        return self.consumer.assignment

    def do_positions(self) -> dict[int, int]:
        return self.consumer.positions()

    def do_end_offsets(self) -> dict[int, int]:
        return self.consumer.end_offsets()

    def do_lag(self, processed: dict[int, int]) -> dict[int, int]:
        topic = self.consumer.topic
        self.consumer.mark_processed([_new_message((topic, p, offset - 1, None, None, -1, ()))
                                      for p, offset in processed.items()])
        return self.consumer.lag()

    def do_close(self) -> None:
        self.consumer.close()


def _columns(records: list) -> tuple:
    """A batch as columns: far cheaper to pickle than one object a record."""
    return ([r.value for r in records], [r.key for r in records],
            [r.partition for r in records], [r.offset for r in records],
            [r.timestamp for r in records],
            [(i, list(r.headers)) for i, r in enumerate(records) if r.headers])


def _without(columns: tuple, partitions: set[int]) -> tuple:
    """``columns`` less the records of ``partitions``."""
    keep = [i for i, p in enumerate(columns[2]) if p not in partitions]
    headers = [(keep.index(i), h) for i, h in columns[5] if columns[2][i] not in partitions]
    return (*([column[i] for i in keep] for column in columns[:5]), headers)


def _is_picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ClientError that says what it was."""
    if _is_picklable(exc):
        return exc
    return ClientError(f"fetch process: {exc!r}", type(exc).__name__)


def main(argv: list[str]) -> int:
    """``python -m stream.clients.fetcher FD``: serve the parent on socket ``FD``."""
    logging.basicConfig(level=os.environ.get("DWELL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s fetcher %(levelname)s %(name)s: %(message)s")
    child = _Child(Connection(int(argv[0])))
    try:
        child.serve()
    except (EOFError, OSError):  # the parent went away: no client thread may hold us up
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
