"""A Kafka client in a process of its own: the socket to it, numbered commands, its loop.

kafka-python fetches, parses and builds records in pure Python, holding the interpreter
lock: in the learner's process that time adds to the learner's own. A client in a child
process (``python -m stream.clients.child``) runs on the other core instead.
:class:`ChildProcess` is this side: it starts the child, sends numbered commands and waits
for their answers; :class:`Child` is the child's loop. What a child serves is built by its
first command, ``open``: a consumer (:mod:`stream.clients.fetcher`) or a producer
(:mod:`stream.clients.sender`).

Messages are pickled tuples over a socket pair: ``(number, command, *args)`` to the child,
``(kind, number, payload)`` back, where ``number`` is the command's (0 for what the child
sends of its own accord, such as a rebalance callback). An answer that comes while another
is awaited (a callback's command overtook it) is kept until its caller asks. The child ends
when this side closes it, or goes away (end of file on its socket).

>>> picklable(ValueError("x"))
ValueError('x')
>>> picklable(RuntimeError(lambda: 0)).name
'RuntimeError'
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from stream import redact
from stream.errors import ClientError

logger = logging.getLogger(__name__)
_E = TypeVar("_E", bound=BaseException)  # picklable() keeps the type it is given

#: Seconds a child may take to start, connect and answer ``open``.
START_TIMEOUT_S = 120.0
REPLY, ERROR = "reply", "error"
#: The name of the ClientError when the child is gone.
DIED = "ChildProcessDied"
#: What a child can serve: ``open``'s kind -> the module and class of its commands.
SERVES = {"consumer": ("stream.clients.fetcher", "ConsumerCommands"),
          "producer": ("stream.clients.sender", "ProducerCommands")}


class ChildProcess:
    """This side of a child that serves ``kind`` built from ``spec`` (see :data:`SERVES`).

    Raises what the child's client raised, pickled across (ClientError, ConfigError), and a
    ClientError named :data:`DIED` (not retriable) when the child is gone.
    """

    def __init__(self, what: str, kind: str, spec: dict[str, Any]) -> None:
        self._what = what  # in messages: "fetch process", "send process"
        self._sent = 0  # commands sent: each answer names its command by this number
        self._answers: dict[int, tuple[str, Any]] = {}  # came while another was awaited
        self._lock = threading.RLock()  # one caller talks to the child at a time
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stream.clients.child", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._config = self.call("open", kind, spec, timeout=START_TIMEOUT_S)
        except BaseException:
            self.end(wait_s=0)
            raise

    @property
    def config(self) -> dict[str, Any]:
        """The client's settings as its library took them (those that pickle)."""
        return self._config

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    def send(self, command: str, *args: Any) -> int:
        """Send ``command``; its number, which its answer carries."""
        with self._lock:
            self._sent += 1
            try:
                self._conn.send_bytes(pickle.dumps((self._sent, command, *args),
                                                   pickle.HIGHEST_PROTOCOL))
            except OSError as exc:
                raise ClientError(f"{self._what} {self.pid} is gone", DIED, False) from exc
            return self._sent

    def receive(self, timeout: float | None = None) -> tuple[str, int, Any]:
        """The child's next message: (kind, the command's number or 0, payload)."""
        try:
            if timeout is not None and not self._conn.poll(timeout):
                raise ClientError(f"{self._what}: no answer in {timeout:.0f} s",
                                  "ChildProcessTimeout")
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise ClientError(f"{self._what} {self.pid} died (exit status "
                              f"{self._process.poll()})", DIED, False) from exc

    def take(self, kind: str, number: int, payload: Any) -> None:
        """Take in a message that is not the answer awaited (subclasses take more kinds)."""
        self._answers[number] = (kind, payload)

    def call(self, command: str, *args: Any, timeout: float | None = None) -> Any:
        """Send ``command`` and wait for its answer; what comes first goes to :meth:`take`."""
        with self._lock:
            number = self.send(command, *args)
            while number not in self._answers:
                self.take(*self.receive(timeout))
            kind, payload = self._answers.pop(number)
            if kind == ERROR:
                raise payload
            return payload

    def end(self, wait_s: float = 30.0) -> None:
        """Close the socket and wait for the child to exit (killed after ``wait_s``)."""
        self._conn.close()
        try:
            self._process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Child:
    """The child's loop: reads commands in order and answers each one.

    The main thread reads commands. A client that calls back (a rebalance) on a thread of
    its own, kafka-python's IO thread, answers the commands that come meanwhile from that
    thread through :meth:`callback`, all but those that would block there, which it leaves
    to the main thread. One thread reads at a time.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.commands: Any = None  # built by ``open``: its do_* methods answer commands
        self._reading = threading.Lock()
        self._sending = threading.Lock()
        self._left: deque[tuple] = deque()  # read inside a callback, for the main thread

    def send(self, *message: Any) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self._sending:
            self.conn.send_bytes(data)

    def _read(self) -> tuple | None:
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
        """Run command ``number`` and send its answer (none for the commands' ``one_way``);
        False after ``close``."""
        if command == "resume":  # a late one: nothing waits for it
            return True
        if command == "open":
            ok, failed, run = REPLY, ERROR, self.open
        else:
            ok, failed = getattr(self.commands, "kinds", {}).get(command, (REPLY, ERROR))
            run = getattr(self.commands, f"do_{command}")
        try:
            result = run(*args)
        except Exception as exc:  # the parent raises it: the child goes on
            self.send(failed, number, picklable(exc))
        else:
            if command not in getattr(self.commands, "one_way", ()):
                self.send(ok, number, result)
        return command != "close"

    def open(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        module, name = SERVES[kind]
        self.commands = getattr(importlib.import_module(module), name)(self, spec)
        return {k: v for k, v in self.commands.config.items() if _is_picklable(v)}

    def callback(self, kind: str, payload: Any, answers_here: Callable[[tuple], bool]) -> None:
        """Inside a client's callback: send ``(kind, 0, payload)``, then answer commands until
        the parent sends ``resume``; those that ``answers_here`` refuses wait for the main
        thread."""
        with self._reading:
            self.send(kind, 0, payload)
            while True:
                message = pickle.loads(self.conn.recv_bytes())
                if message[1] == "resume":
                    return
                if answers_here(message):
                    self.answer(*message)
                else:
                    self._left.append(message)


def _is_picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def picklable(exc: _E) -> _E | ClientError:
    """``exc`` if it survives pickling, else a ClientError that says what it was."""
    if _is_picklable(exc):
        return exc
    return ClientError(f"in a child process: {exc!r}", type(exc).__name__)


def main(argv: list[str]) -> int:
    """``python -m stream.clients.child FD``: serve the parent on socket ``FD``."""
    logging.basicConfig(level=os.environ.get("DWELL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s child %(levelname)s %(name)s: %(message)s")
    level = logging.getLogger().getEffectiveLevel()
    redact.install(logging.DEBUG if redact.kafka_debug_asked(os.environ)
                   else max(level, logging.INFO))
    child = Child(Connection(int(argv[0])))
    try:
        child.serve()
    except (EOFError, OSError):  # the parent went away: no client thread may hold us up
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
