"""Shared pytest fixtures: a real Kafka broker for the integration tests.

``kafka_bootstrap`` (session) is the bootstrap address of a real broker: ``DWELL_TEST_BOOTSTRAP``
if set, else a single-node KRaft broker started by ``stream.broker.LocalBroker`` on free ports
in a temporary folder and stopped at the end of the session. The broker is started only if a
test asks for it, so unit tests never pay for it.

``kafka_cluster`` (session) is a three-node KRaft cluster (``stream.broker.LocalCluster``) on
free ports, started only when a test asks for it; tests may kill and restart its nodes.
``replicated_topic`` is a fresh 4-partition topic on it with replication factor 3 and
``min.insync.replicas=2`` (:func:`create_replicated_topic`).

``kafka_client`` runs a test once per Kafka client of ``stream.clients`` (kafka-python and
confluent); the confluent runs are skipped where confluent-kafka is not installed.

Tests under ``tests/integration/`` get the ``integration`` marker automatically:
``pytest -m "not integration"`` runs the unit tests alone.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.admin import create_topic, delete_topic
from stream.broker import LocalBroker, LocalCluster, wait_until_ready
from stream.clients import CLIENTS

log = logging.getLogger(__name__)

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (also in pyproject.toml) and mute kafka-python's own deprecations."""
    config.addinivalue_line(
        "markers", "integration: needs a real Kafka broker (started by the session fixture)"
    )
    # kafka-python 3.0 loads its protocol schemas with importlib.resources.read_text/open_text,
    # deprecated since Python 3.11: ~200 warnings per session that are not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:(read_text|open_text) is deprecated:DeprecationWarning"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ with ``integration``."""
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address (``host:port``) of a real Kafka broker for this test session."""
    external = os.environ.get("DWELL_TEST_BOOTSTRAP")
    if external:
        wait_until_ready(external, timeout=30)
        yield external
        return
    broker = LocalBroker.on_free_ports(tmp_path_factory.mktemp("kafka"))
    try:
        # owner_pid: a watchdog stops the JVM even if this process is killed without cleanup.
        yield broker.start(timeout=90, owner_pid=os.getpid())
    finally:
        # Runs on success, failure, Ctrl-C, and when start() itself failed half-way.
        broker.stop(timeout=30)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node Kafka cluster (KRaft, each node broker and controller) for this session.

    The cluster object has ``.bootstrap`` and ``kill(node)``, ``stop_node(node)``,
    ``start_node(node)`` for nodes 1, 2 and 3. A test that stops or kills a node starts it
    again before it ends, so that the next test finds the cluster whole.
    """
    cluster = LocalCluster.on_free_ports(tmp_path_factory.mktemp("kafka-cluster"), nodes=3)
    try:
        # owner_pid: a watchdog per node stops its JVM even if this process dies uncleanly.
        cluster.start(timeout=120, owner_pid=os.getpid())
        yield cluster
    finally:
        cluster.stop(timeout=30)


def create_replicated_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    """Create ``name`` with replication factor 3 and ``min.insync.replicas=2``: a write with
    acks=all is acknowledged once two replicas have it, so one broker may die at any time."""
    create_topic(bootstrap, name, partitions=partitions, replication=3,
                 config={"min.insync.replicas": "2"})


@pytest.fixture
def replicated_topic(kafka_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 4-partition topic on ``kafka_cluster`` (replication 3, min.insync.replicas 2);
    deleted afterwards with its dead-letter topic."""
    name = _topic_name(request.node.nodeid)
    create_replicated_topic(kafka_cluster.bootstrap, name)
    yield name
    for leftover in (name, f"{name}.dlq"):
        try:
            delete_topic(kafka_cluster.bootstrap, leftover)
        except Exception as exc:  # best effort: a failed clean-up must not fail the test
            log.warning("could not delete topic %s: %r", leftover, exc)


@pytest.fixture(params=CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The name of a Kafka client (``--client``): a test that takes it runs with each."""
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="pip install 'dwell[fast]'")
    return request.param


def _topic_name(nodeid: str) -> str:
    """A unique, legal topic name that says which test made it."""
    test = re.sub(r"[^A-Za-z0-9-]+", "-", nodeid.rsplit("::", 1)[-1]).strip("-")[:80]
    return f"test-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, uniquely named 4-partition topic on the test broker; deleted afterwards."""
    name = _topic_name(request.node.nodeid)
    create_topic(kafka_bootstrap, name, partitions=4)
    yield name
    for leftover in (name, f"{name}.dlq"):
        try:
            delete_topic(kafka_bootstrap, leftover)
        except Exception as exc:  # best effort: a failed clean-up must not fail the test
            log.warning("could not delete topic %s: %r", leftover, exc)
