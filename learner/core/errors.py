"""The model core's errors: its own, so that the core needs nothing of the Kafka side.

The command line turns every :class:`CoreError`, like every ``stream.errors.DwellError``, into
one line and status 2 (a bad setting; nothing was started).
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the model core raises on purpose."""

    retriable: bool = False


class ConfigError(CoreError, ValueError):
    """A setting of the model core is missing, malformed or contradictory."""
