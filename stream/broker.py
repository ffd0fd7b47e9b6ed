"""Local Apache Kafka for development and tests: a single-node broker, or a small cluster.

A thin driver over ``deploy/kafka/kafka.sh``, which fetches the Kafka jars from Maven Central
once, formats a KRaft storage folder the first time, and runs each node (broker and controller
in one JVM) in the background. A data folder keeps the topics across ``stop()``/``start()``.

    broker = LocalBroker(Path("/tmp/dwell-kafka"), port=9092, controller_port=9093)
    bootstrap = broker.start()   # "127.0.0.1:9092", answers Kafka requests
    ...
    broker.stop()

    cluster = LocalCluster.on_free_ports(Path("/tmp/dwell-cluster"), nodes=3)
    bootstrap = cluster.start()  # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3", all brokers in
    cluster.kill(2)              # SIGKILL node 2's JVM; cluster.start_node(2) brings it back
    cluster.stop()
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from stream.errors import BrokerError, BrokerNotInstalledError

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def _poll_admin(bootstrap: str, timeout: float, ask: Callable[[Any], T | None],
                failure: Callable[[Exception | None], str]) -> T:
    """Ask a fresh admin client ``ask(admin)`` until it returns something other than None;
    a client error means "not ready yet". Raises BrokerError(``failure(last error)``) after
    ``timeout`` seconds."""
    from kafka.admin import KafkaAdminClient  # imported late: the driver is usable without it

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(failure(last))
        budget_ms = int(max(1.0, min(left, 10.0)) * 1000)
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="dwell-broker-probe",
                bootstrap_timeout_ms=budget_ms,
                request_timeout_ms=budget_ms,
            )
            answer = ask(admin)
            if answer is not None:
                return answer
        except Exception as exc:  # any client error means "not ready yet"
            last = exc
            log.debug("Kafka at %s not ready yet: %r", bootstrap, exc)
        finally:
            if admin is not None:
                admin.close()
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def wait_until_ready(bootstrap: str, timeout: float = 60.0) -> list[str]:
    """Retry a Kafka metadata request until the broker answers; return its topic names.

    Raises BrokerError with the last client error if it does not answer within ``timeout``.
    """
    return _poll_admin(
        bootstrap, timeout, lambda admin: sorted(admin.list_topics()),
        lambda last: f"Kafka at {bootstrap} did not answer within {timeout:.0f} s: {last!r}")


def wait_for_brokers(bootstrap: str, node_ids: Sequence[int], timeout: float = 60.0) -> None:
    """Wait until the cluster's metadata lists every broker of ``node_ids``, none fenced.

    Raises BrokerError naming the brokers still missing if that takes longer than ``timeout``.
    """
    wanted = set(node_ids)
    seen: set[int] = set()

    def registered(admin) -> bool | None:
        nonlocal seen
        brokers = admin.describe_cluster()["brokers"]
        seen = {b["broker_id"] for b in brokers if not b.get("is_fenced", False)}
        if wanted <= seen:
            return True
        log.debug("Kafka at %s: brokers %s registered, waiting for %s", bootstrap,
                  sorted(seen), sorted(wanted - seen))
        return None

    _poll_admin(bootstrap, timeout, registered,
                lambda last: f"Kafka at {bootstrap}: brokers {sorted(wanted - seen)} not "
                             f"registered within {timeout:.0f} s (last error: {last!r})")


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 characters of URL-safe base64) that never starts with '-'.

    kafka-storage reads an id that starts with '-' as an option.

    >>> cid = new_cluster_id()
    >>> len(cid), cid[0] != "-"
    (22, True)
    """
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return "A" + cluster_id[1:] if cluster_id.startswith("-") else cluster_id


@dataclass(frozen=True)
class LocalBroker:
    """A KRaft node (broker and controller) on 127.0.0.1 whose state lives in ``data_dir``.

    Alone it is a single-node cluster. As node ``node_id`` of a cluster it takes ``voters``,
    the static controller quorum (``"1@127.0.0.1:C1,2@127.0.0.1:C2,..."``, the same on every
    node), and ``cluster_id``, the same on every node; :class:`LocalCluster` sets these.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    node_id: int = 1
    voters: str | None = None
    cluster_id: str | None = None

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
        if self.node_id != 1 or self.voters is not None:
            args += ["--node-id", str(self.node_id)]
        if self.voters is not None:
            args += ["--voters", self.voters]
        if self.cluster_id is not None:
            args += ["--cluster-id", self.cluster_id]
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

    def kill(self) -> None:
        """SIGKILL the broker's JVM at once, as a crash would; return once it is gone.

        No-op if not running. The data folder stays as the crash left it; ``start()`` recovers.
        """
        proc = _run_script(["stop", "--data", str(self.data_dir), "--kill"], 60.0)
        _raise_for(proc, f"killing Kafka in {self.data_dir}")
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


class LocalCluster:
    """A cluster of KRaft nodes on 127.0.0.1, each broker and controller in one JVM.

    Node ``k`` (1..N) is a :class:`LocalBroker` with node id ``k`` in ``folder/node-k``, all
    with the same static controller quorum and cluster id (made at the first start and kept
    in ``folder/cluster.id``, so that a stopped cluster starts again). With 3 nodes, topics
    default to replication factor 3 and ``min.insync.replicas=2``, the internal ones included
    (see kafka.sh's usage message).
    """

    def __init__(
        self,
        folder: Path,
        ports: Sequence[int],
        controller_ports: Sequence[int],
        heap: str = "512m",
    ) -> None:
        if not ports or len(ports) != len(controller_ports):
            raise ValueError("a cluster needs one port and one controller port per node")
        if len(set(ports) | set(controller_ports)) != 2 * len(ports):
            raise ValueError(f"ports must all differ: {list(ports)}, {list(controller_ports)}")
        self.folder = Path(folder)
        self.voters = ",".join(
            f"{k}@127.0.0.1:{c}" for k, c in enumerate(controller_ports, start=1)
        )
        self.nodes: dict[int, LocalBroker] = {
            k: LocalBroker(self.folder / f"node-{k}", p, c, heap, k, self.voters)
            for k, (p, c) in enumerate(zip(ports, controller_ports, strict=True), start=1)
        }
        self._owner_pid: int | None = None

    @classmethod
    def on_free_ports(cls, folder: Path, nodes: int = 3, heap: str = "512m") -> LocalCluster:
        """A cluster of ``nodes`` nodes on ports that are free now."""
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        ports = free_ports(2 * nodes)
        return cls(Path(folder), ports[:nodes], ports[nodes:], heap)

    def _cluster_id(self) -> str:
        """The id in ``folder/cluster.id``, written there first if new."""
        path = self.folder / "cluster.id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.folder.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        path.write_text(cluster_id + "\n")
        return cluster_id

    @property
    def bootstrap(self) -> str:
        """Every node's address, ``127.0.0.1:P1,127.0.0.1:P2,...``."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def node(self, node: int) -> LocalBroker:
        """The node with id ``node`` (1..N)."""
        try:
            return self.nodes[node]
        except KeyError:
            raise ValueError(f"no node {node}: the nodes are {sorted(self.nodes)}") from None

    def start(self, timeout: float = 90.0, *, owner_pid: int | None = None) -> str:
        """Start every node, together, and return the bootstrap once all brokers are registered.

        The nodes must start together: a node answers only once a majority of the controller
        quorum is up. With ``owner_pid`` each node is stopped when that process exits, and
        :meth:`start_node` passes it on. Nodes already running are left as they are.
        """
        self._owner_pid = owner_pid
        started = time.monotonic()
        fetch()
        cluster_id = self._cluster_id()
        self._on_every_node(
            lambda node: replace(node, cluster_id=cluster_id).start(timeout, owner_pid=owner_pid)
        )
        left = max(5.0, timeout - (time.monotonic() - started))
        wait_for_brokers(self.bootstrap, list(self.nodes), left)
        log.info("Kafka cluster of %d nodes running on %s (%.1f s)", len(self.nodes),
                 self.bootstrap, time.monotonic() - started)
        return self.bootstrap

    def start_node(self, node: int, timeout: float = 90.0) -> None:
        """Start one node again; return once the cluster lists it as a broker again."""
        started = time.monotonic()
        member = replace(self.node(node), cluster_id=self._cluster_id())
        member.start(timeout, owner_pid=self._owner_pid)
        left = max(5.0, timeout - (time.monotonic() - started))
        wait_for_brokers(self.bootstrap, [node], left)
        log.info("Kafka node %d back in the cluster (%.1f s)", node, time.monotonic() - started)

    def stop_node(self, node: int, timeout: float = 30.0) -> None:
        """Stop one node gracefully (SIGTERM: controlled shutdown, leadership moves first)."""
        self.node(node).stop(timeout)

    def kill(self, node: int) -> None:
        """SIGKILL one node's JVM, as a crash would; return once the process is gone."""
        self.node(node).kill()
        log.info("Kafka node %d killed", node)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node, together. No-op for nodes not running."""
        self._on_every_node(lambda node: node.stop(timeout))

    def status(self) -> dict[int, bool]:
        """Whether each node's process is running, by node id."""
        return {k: node.status() for k, node in self.nodes.items()}

    def _on_every_node(self, call: Callable[[LocalBroker], object]) -> None:
        """Run ``call`` on every node in parallel; raise the first error after all finished."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            futures = [pool.submit(call, node) for node in self.nodes.values()]
        errors = [error for f in futures if (error := f.exception()) is not None]
        if errors:
            raise errors[0]
