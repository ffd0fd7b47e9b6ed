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
