"""The settings a Kafka client is built from: one frozen object per concern.

- :class:`KafkaConnection`: where the cluster is and how to talk to it (bootstrap servers,
  the client library, extra client options with kafka-python's names: SASL/TLS, timeouts).
  Its secrets never show in its ``repr``.
- :class:`ConsumerSettings`: what a consumer reads and how (topic, group, micro-batch size
  and wait, explicit partitions, a process of its own, group session timing).

:func:`stream.clients.make_consumer` and every consumer class take these two objects: a new
consumer option is a field of :class:`ConsumerSettings` (with its default), read where the
clients build their library's consumer, and nothing else changes hands.

>>> KafkaConnection("k:9092", options={"sasl_plain_password": "hunter2"})
KafkaConnection(bootstrap='k:9092', client='kafka-python', options={'sasl_plain_password': '***'})
>>> KafkaConnection(client="kafka")
Traceback (most recent call last):
...
stream.errors.ConfigError: unknown Kafka client 'kafka': expected kafka-python or confluent
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.errors import ConfigError
from stream.redact import MASK, is_secret

#: The client names ``--client`` takes; the first is the default.
CLIENTS = ("kafka-python", "confluent")
DEFAULT_CLIENT = CLIENTS[0]


def check_client(name: str) -> str:
    """``name`` if it names a client, else ConfigError.

    >>> check_client("confluent")
    'confluent'
    """
    if name not in CLIENTS:
        raise ConfigError(f"unknown Kafka client {name!r}: expected {' or '.join(CLIENTS)}")
    return name


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the Kafka cluster: shared by consumers, producers and admin calls."""

    bootstrap: str = "127.0.0.1:9092"  # host:port[,host:port]
    client: str = DEFAULT_CLIENT
    #: Extra client settings with kafka-python's names (the confluent client translates
    #: them); may hold secrets, which :meth:`__repr__` masks.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_client(self.client)
        object.__setattr__(self, "options", dict(self.options))

    def __repr__(self) -> str:
        shown = {k: MASK if is_secret(str(k)) else v for k, v in self.options.items()}
        return (f"{type(self).__name__}(bootstrap={self.bootstrap!r}, client={self.client!r}, "
                f"options={shown!r})")

    def secrets(self) -> list[str]:
        """The values of the secret options (passwords, keys, tokens): for redaction."""
        return [str(v) for k, v in self.options.items() if is_secret(str(k))]


@dataclass(frozen=True)
class ConsumerSettings:
    """What a :class:`~stream.clients.BatchConsumer` reads, and how.

    ``partitions``: read exactly these (no group rebalancing; offsets still committed under
    ``group``). ``process``: the client runs in a child process that fetches ahead
    (:class:`stream.clients.fetcher.FetchProcess`). ``session_timeout_ms``: the group
    session timeout (heartbeats at a third of it); None leaves the client's own.
    """

    topic: str
    group: str
    max_records: int = 1024  # a micro-batch: at most this many records
    max_wait_s: float = 0.5  # ... or this long waiting for records once caught up
    partitions: tuple[int, ...] | None = None  # any iterable, kept as a sorted tuple
    process: bool = False
    session_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None:
            object.__setattr__(self, "partitions", tuple(sorted(self.partitions)))

    def client_config(self, connection: KafkaConnection) -> dict[str, Any]:
        """The consumer's client settings, with kafka-python's names: its own (the group
        session timing), under the connection's options (which win)."""
        own: dict[str, Any] = {}
        if self.session_timeout_ms is not None:
            own["session_timeout_ms"] = self.session_timeout_ms
            own["heartbeat_interval_ms"] = max(100, self.session_timeout_ms // 3)
        return {**own, **connection.options}
