"""Error hierarchy, in the manner of kafka-python: each class says whether retrying can help."""

from __future__ import annotations


class DwellError(Exception):
    """Base class of every error dwell raises on purpose."""

    retriable: bool = False


class ConfigError(DwellError):
    """A configuration value is missing, malformed or contradictory."""


class BrokerError(DwellError):
    """The local Kafka broker could not be fetched, started, reached or stopped."""

    retriable = True


class BrokerNotInstalledError(BrokerError):
    """The Kafka jars are not in the cache and could not be fetched."""

    retriable = False


class DataError(DwellError):
    """An input file cannot be read as the format it was declared to be."""


class ClientError(DwellError):
    """A Kafka client call failed, or a record was not delivered.

    The same error for either client (``stream.clients``): ``name`` is the client's own name
    for what went wrong (a kafka-python exception class, a librdkafka error code such as
    ``MSG_SIZE_TOO_LARGE``), for counting; the client's own exception is the ``__cause__``.
    """

    retriable = True

    def __init__(self, message: str, name: str = "", retriable: bool | None = None) -> None:
        super().__init__(message)
        self.name = name or type(self).__name__
        if retriable is not None:
            self.retriable = retriable

    def __reduce__(self) -> tuple:
        """Pickled whole, name and retriable with it (the fetch process sends its errors)."""
        return type(self), (str(self), self.name, self.retriable)


class ClientTimeoutError(ClientError):
    """The broker did not answer in time: no bootstrap, or a record could not even be queued."""


class ConnectError(ClientError):
    """The Kafka cluster did not answer in time, or refused the connection's security
    settings: nothing was started. The message says what was tried, for how long, and what to
    check."""

    retriable = False
