"""uvicorn around the serving app, on a thread of its own (``dwell serve``'s main thread waits
for SIGINT or SIGTERM; the demo, the benchmark and the tests go on with their work).

The listening socket is bound before uvicorn starts, so port 0 gives a free port that is
known at once (:attr:`HttpServer.port`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn

logger = logging.getLogger(__name__)


class HttpServer:
    """One uvicorn server of ``app`` on ``host:port`` (port 0: any free one)."""

    def __init__(self, app: Callable[..., Awaitable[None]], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # answers go out at once (Nagle against the client's delayed ACK cost 40 ms an answer;
        # accepted sockets inherit it)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def start(self, timeout: float = 30.0) -> HttpServer:
        """Serve on a thread of its own; return once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="dwell-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (requests in flight are finished first) and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
