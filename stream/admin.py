"""Small Kafka administration helpers (topics and offsets) on kafka-python's admin client.

Each call opens a short-lived ``KafkaAdminClient`` and closes it: these helpers are for
set-up, tests and monitoring, not for a hot path. Every helper takes ``options``: client
settings such as SASL/TLS (``--kafka-options``), of which the admin client's own are used.
Errors of the Kafka client (``kafka.errors.KafkaError`` and subclasses) propagate, except
where a docstring says otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from stream.errors import ConnectError

log = logging.getLogger(__name__)

T = TypeVar("T")


def admin_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a client's ``options`` that the admin client understands.

    ``--kafka-options`` carries settings for every client (SASL/TLS, client ids, producer
    acks, ...); the admin client takes the connection and security ones and rejects the rest.

    >>> admin_options({"security_protocol": "SASL_SSL", "acks": "all"})
    {'security_protocol': 'SASL_SSL'}
    """
    known = KafkaAdminClient.DEFAULT_CONFIG
    return {k: v for k, v in (options or {}).items() if k in known}


@contextmanager
def admin_client(
    bootstrap: str, timeout: float = 30.0, options: Mapping[str, Any] | None = None
) -> Iterator[KafkaAdminClient]:
    """A KafkaAdminClient for ``bootstrap`` whose connect and request timeouts are ``timeout``.

    ``options`` are extra client settings (see :func:`admin_options`), e.g. SASL/TLS.
    """
    timeout_ms = max(1, int(timeout * 1000))
    admin = KafkaAdminClient(**{
        "client_id": "dwell-admin",
        **admin_options(options),
        "bootstrap_servers": bootstrap,
        "bootstrap_timeout_ms": timeout_ms,
        "request_timeout_ms": timeout_ms,
    })
    try:
        yield admin
    finally:
        admin.close()


def check_connection(
    bootstrap: str, timeout: float, options: Mapping[str, Any] | None = None
) -> None:
    """Return once the cluster at ``bootstrap`` answers a metadata request with ``options``'
    security settings; ConnectError after ``timeout`` s (or on a refusal) saying what was
    tried and what to check."""
    started = time.monotonic()
    try:
        with admin_client(bootstrap, timeout, options) as admin:
            admin.list_topics()
    except (KafkaError, OSError, ValueError) as exc:
        raise ConnectError(connect_failure(bootstrap, time.monotonic() - started, options,
                                           exc)) from exc


def connect_failure(
    bootstrap: str, seconds: float, options: Mapping[str, Any] | None, exc: BaseException
) -> str:
    """One line: the cluster at ``bootstrap`` gave no answer to these settings in ``seconds``."""
    options = options or {}
    security = str(options.get("security_protocol", "PLAINTEXT"))
    if "sasl_mechanism" in options:
        security += f", SASL {options['sasl_mechanism']}"
    return (f"no answer from Kafka at {bootstrap} ({security}) after {seconds:.1f} s "
            f"({type(exc).__name__}): check --bootstrap, that the brokers are up and reachable "
            "from here, and the security settings (--kafka-options, --kafka-options-file: "
            "security_protocol, sasl_*, ssl_*); --connect-timeout-s waits longer")


def _retry(call: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``call``, retrying retriable Kafka errors (coordinator loading, leader moving, ...).

    A fresh broker answers the first group request with COORDINATOR_NOT_AVAILABLE while it
    creates ``__consumer_offsets``; this waits that out. The last error is raised at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() >= deadline:
                raise
            log.debug("%s: %r; retrying", what, exc)
            time.sleep(0.2)


def list_topics(
    bootstrap: str, timeout: float = 30.0, options: Mapping[str, Any] | None = None
) -> list[str]:
    """Names of the topics on the cluster, internal ones included, sorted."""
    with admin_client(bootstrap, timeout, options) as admin:
        return sorted(admin.list_topics())


def _partitions(admin: KafkaAdminClient, topic: str) -> list[int]:
    """Partition ids of ``topic``; raise UnknownTopicOrPartitionError if it does not exist."""
    described = admin.describe_topics([topic])
    info = next((t for t in described if t.get("name") == topic), None)
    if info is None or info.get("error_code", 0) != 0 or not info.get("partitions"):
        raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
    return sorted(p["partition_index"] for p in info["partitions"])


def _known_partitions(admin: KafkaAdminClient, topic: str, timeout: float) -> list[int]:
    """:func:`_partitions`, retried while the broker asked does not know the topic yet (just
    created elsewhere in a cluster) or a broker is away."""
    return _retry(lambda: _partitions(admin, topic), timeout, f"partitions of {topic}")


def topic_partitions(
    bootstrap: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> list[int]:
    """Partition ids of ``topic`` (from the cluster's metadata, retried while a broker is
    away); raises ``UnknownTopicOrPartitionError`` if it does not exist."""
    with admin_client(bootstrap, timeout, options) as admin:
        return _known_partitions(admin, topic, timeout)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 4,
    replication: int | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> bool:
    """Create a topic and wait until every partition has a leader.

    ``replication`` is the replication factor; None takes the cluster's
    ``default.replication.factor`` (1 on a single-node broker, 3 on the local 3-node cluster
    of :class:`stream.broker.LocalCluster`). ``config`` holds topic settings, e.g.
    ``{"min.insync.replicas": "2"}``; unset ones take the cluster's defaults.

    Idempotent: a topic that already exists is left as it is (a warning is logged if its
    partition count differs). Returns True if this call created it, False if it existed.
    """
    spec = {
        name: {
            "num_partitions": partitions,
            "replication_factor": -1 if replication is None else replication,
            "configs": {str(k): str(v) for k, v in (config or {}).items()},
        }
    }
    timeout_ms = max(1, int(timeout * 1000))
    with admin_client(bootstrap, timeout, options) as admin:
        try:
            admin.create_topics(spec, timeout_ms=timeout_ms)
            created = True
            msg = "created topic %s (%d partitions, replication %s)"
            log.info(msg, name, partitions, "default" if replication is None else replication)
        except TopicAlreadyExistsError:
            created = False
            log.debug("topic %s already exists", name)
        admin.wait_for_topics([name], timeout_ms=timeout_ms)
        if not created:  # another client created it: a broker may not know it yet
            existing = len(_known_partitions(admin, name, timeout))
            if existing != partitions:
                msg = "topic %s exists with %d partitions, not the %d asked for"
                log.warning(msg, name, existing, partitions)
    return created


def describe_partitions(
    bootstrap: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> dict[int, dict[str, Any]]:
    """Leader, replicas and in-sync replicas (broker ids) of each partition of ``topic``.

    ``{partition: {"leader": id, "replicas": [ids], "isr": [ids]}}``; the leader is -1 while
    a partition has none. Raises ``UnknownTopicOrPartitionError`` if the topic does not exist.
    """
    with admin_client(bootstrap, timeout, options) as admin:
        described = admin.describe_topics([topic])
    info = next((t for t in described if t.get("name") == topic), None)
    if info is None or info.get("error_code", 0) != 0 or not info.get("partitions"):
        raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
    return {
        p["partition_index"]: {
            "leader": p["leader_id"],
            "replicas": sorted(p["replica_nodes"]),
            "isr": sorted(p["isr_nodes"]),
        }
        for p in sorted(info["partitions"], key=lambda p: p["partition_index"])
    }


def topic_config(
    bootstrap: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every setting of ``topic`` as the cluster applies it: its own and the defaults."""
    from kafka.admin import ConfigResource, ConfigResourceType

    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    with admin_client(bootstrap, timeout, options) as admin:
        result = admin.describe_configs([resource], config_filter="all")
    return {key: entry["value"] for key, entry in result["topic"][topic].items()}


def max_message_bytes(
    bootstrap: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> int:
    """The largest record batch ``topic`` takes (its ``max.message.bytes``, or the cluster's
    default). Raises ``UnknownTopicOrPartitionError`` if the topic does not exist."""
    value = topic_config(bootstrap, topic, timeout, options).get("max.message.bytes")
    if value is None:
        raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
    return int(value)


def delete_topic(
    bootstrap: str, name: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> bool:
    """Delete a topic. Returns True if deleted, False if it did not exist."""
    timeout_ms = max(1, int(timeout * 1000))
    with admin_client(bootstrap, timeout, options) as admin:
        try:
            admin.delete_topics([name], timeout_ms=timeout_ms)
        except UnknownTopicOrPartitionError:
            log.debug("topic %s does not exist; nothing to delete", name)
            return False
    log.info("deleted topic %s", name)
    return True


def end_offsets(
    bootstrap: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """The log-end offset (offset of the next record) of every partition of ``topic``.

    Raises ``kafka.errors.UnknownTopicOrPartitionError`` if the topic does not exist.
    """
    timeout_ms = max(1, int(timeout * 1000))
    with admin_client(bootstrap, timeout, options) as admin:
        specs = {TopicPartition(topic, p): OffsetSpec.LATEST for p in _partitions(admin, topic)}
        result = admin.list_partition_offsets(specs, timeout_ms=timeout_ms)
    return {tp.partition: int(o.offset) for tp, o in sorted(result.items())}


def committed_offsets(
    bootstrap: str, group: str, topic: str, timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic``, by partition.

    Only partitions with a committed offset appear: the result is empty for a group that
    does not exist or has committed nothing on this topic. A committed offset is the offset of
    the next record the group will read.
    """
    with admin_client(bootstrap, timeout, options) as admin:
        result = _retry(
            lambda: admin.list_group_offsets({group: None}), timeout, "list_group_offsets"
        )
    offsets = result.get(group, {})
    return {
        tp.partition: int(om.offset)
        for tp, om in sorted(offsets.items())
        if tp.topic == topic and om.offset is not None and om.offset >= 0
    }
