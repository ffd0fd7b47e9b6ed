"""Local single-node Apache Kafka broker for development and tests.

A thin driver over ``deploy/kafka/kafka.sh``, which fetches the Kafka jars from Maven Central
once, formats a KRaft storage folder the first time, and runs the broker in the background.
The data folder keeps the topics across ``stop()``/``start()``.

    broker = LocalBroker(Path("/tmp/dwell-kafka"), port=9092, controller_port=9093)
    bootstrap = broker.start()   # "127.0.0.1:9092", answers Kafka requests
    ...
    broker.stop()
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stream.errors import BrokerError, BrokerNotInstalledError

log = logging.getLogger(__name__)

#: Exit statuses of kafka.sh (see its usage message).
_EXIT_NOT_RUNNING = 3
_EXIT_NOT_INSTALLED = 4

#: Seconds allowed for a first fetch of the jars (Maven downloads ~46 jars, ~40 MB).
FETCH_TIMEOUT_S = 900.0


def kafka_script() -> Path:
    """Path of kafka.sh: env ``DWELL_KAFKA_SCRIPT``, else ``deploy/kafka/kafka.sh`` in the repo."""
    override = os.environ.get("DWELL_KAFKA_SCRIPT")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "kafka.sh"


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def _run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run kafka.sh with ``args``; raise BrokerNotInstalledError if it cannot run at all."""
    script = kafka_script()
    if not script.is_file():
        raise BrokerNotInstalledError(f"kafka.sh not found at {script} (set DWELL_KAFKA_SCRIPT)")
    cmd = ["bash", str(script), *args]
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"{script.name} {args[0]} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise BrokerNotInstalledError(f"cannot run {script}: {exc}") from exc
    for line in proc.stderr.splitlines():
        log.debug("kafka.sh: %s", line)
    return proc


def _raise_for(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Raise the dwell error that matches a failed kafka.sh run."""
    if proc.returncode == 0:
        return
    detail = (proc.stderr.strip() or proc.stdout.strip() or "(no output)")[-4000:]
    message = f"{what} failed (kafka.sh exit {proc.returncode}):\n{detail}"
    if proc.returncode == _EXIT_NOT_INSTALLED:
        raise BrokerNotInstalledError(message)
    raise BrokerError(message)


def fetch(timeout: float = FETCH_TIMEOUT_S) -> Path:
    """Fetch the Kafka jars into the cache unless already there; return the libs folder."""
    proc = _run_script(["fetch"], timeout)
    _raise_for(proc, "fetching the Kafka jars")
    return Path(proc.stdout.strip().splitlines()[-1])


def wait_until_ready(bootstrap: str, timeout: float = 60.0) -> list[str]:
    """Retry a Kafka metadata request until the broker answers; return its topic names.

    Raises BrokerError with the last client error if it does not answer within ``timeout``.
    """
    from kafka.admin import KafkaAdminClient  # imported late: the driver is usable without it

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(
                f"Kafka at {bootstrap} did not answer within {timeout:.0f} s: {last!r}"
            )
        budget_ms = int(max(1.0, min(left, 10.0)) * 1000)
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="dwell-broker-probe",
                bootstrap_timeout_ms=budget_ms,
                request_timeout_ms=budget_ms,
            )
            return sorted(admin.list_topics())
        except Exception as exc:  # any client error means "not ready yet"
            last = exc
            log.debug("Kafka at %s not ready yet: %r", bootstrap, exc)
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        finally:
            if admin is not None:
                admin.close()


@dataclass(frozen=True)
class LocalBroker:
    """A single-node KRaft broker on 127.0.0.1 whose state lives in ``data_dir``."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"

    @classmethod
    def on_free_ports(cls, data_dir: Path, heap: str = "512m") -> LocalBroker:
        """A broker on two ports that are free now."""
        port, controller_port = free_ports(2)
        return cls(Path(data_dir), port, controller_port, heap)

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The broker's log (log4j)."""
        return Path(self.data_dir) / "server.log"

    def start(self, timeout: float = 60.0, *, owner_pid: int | None = None) -> str:
        """Start the broker (fetching the jars first if needed) and return its bootstrap.

        Returns once the broker answers a Kafka metadata request. A broker that is already
        running on this data folder and port is left as it is. With ``owner_pid`` the broker
        is stopped by a watchdog when that process exits (tests pass ``os.getpid()``).
        """
        fetch()
        args = ["start", "--port", str(self.port), "--controller-port", str(self.controller_port)]
        args += ["--data", str(self.data_dir), "--heap", self.heap]
        args += ["--timeout", str(max(1, int(timeout)))]
        if owner_pid is not None:
            args += ["--owner-pid", str(owner_pid)]
        started = time.monotonic()
        proc = _run_script(args, timeout + 60.0)
        _raise_for(proc, f"starting Kafka on {self.bootstrap}")
        left = max(5.0, timeout - (time.monotonic() - started))
        try:
            wait_until_ready(self.bootstrap, left)
        except BrokerError as exc:
            log_tail = _tail(self.log_file, 40)
            note = f"---- last lines of {self.log_file} ----"
            raise BrokerError(f"{exc}\n{note}\n{log_tail}") from exc
        elapsed = time.monotonic() - started
        log.info("Kafka running on %s (data %s, %.1f s)", self.bootstrap, self.data_dir, elapsed)
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` s. No-op if not running."""
        proc = _run_script(
            ["stop", "--data", str(self.data_dir), "--timeout", str(max(1, int(timeout)))],
            timeout + 30.0,
        )
        _raise_for(proc, f"stopping Kafka in {self.data_dir}")
        log.info("Kafka in %s: %s", self.data_dir, proc.stdout.strip())

    def status(self) -> bool:
        """True if the broker process of this data folder is running."""
        proc = _run_script(["status", "--data", str(self.data_dir)], 30.0)
        if proc.returncode == _EXIT_NOT_RUNNING:
            return False
        _raise_for(proc, f"asking the status of Kafka in {self.data_dir}")
        return True


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file, or a note that it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"(cannot read: {exc})"
