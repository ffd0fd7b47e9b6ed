"""No secret in any log: a filter that masks secrets in every record a handler writes.

Two nets, so that a message that slips through one is caught by the other:

- by name: the value after any key that names a secret (``password``, ``secret``, ``token``,
  ``sasl_oauth...``, ``ssl_key...``, with kafka-python's or librdkafka's spelling:
  ``sasl_plain_password``, ``sasl.password``) in ``KEY=VALUE``, ``KEY: VALUE`` and dict
  reprs (``'KEY': 'VALUE'``, ``"KEY": "VALUE"``);
- by value: every secret the process knows of (:func:`remember`, from the configuration, and
  the values under secret keys of any mapping logged as an argument), wherever it appears.

:func:`install` puts the filter on every handler of the root logger and holds the Kafka
clients' own loggers at INFO (their DEBUG logs their whole configuration) unless asked.

>>> redact("Starting KafkaAdminClient with configuration: {'sasl_plain_password': 'pw'}")
"Starting KafkaAdminClient with configuration: {'sasl_plain_password': '***'}"
>>> redact("sasl.password=pw ssl_check_hostname=False")
'sasl.password=*** ssl_check_hostname=False'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
#: What a secret setting's name contains (lower case; ``.`` and ``_`` both match ``[._]``).
SECRET_WORDS = r"password|passwd|secret|token|credential|sasl[._]oauth\w*|ssl[._]key\w*"
_SECRET_KEY = re.compile(SECRET_WORDS, re.IGNORECASE)
_KEY = rf"[\w.\-]*(?:{SECRET_WORDS})[\w.\-]*"
_VALUE = r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|[^\s,;)}\]]+"""
#: ``KEY=VALUE``, ``KEY: VALUE``, ``'KEY': 'VALUE'``, ``"KEY": "VALUE"``.
_PAIR = re.compile(rf"""(?P<key>['"]?{_KEY}['"]?\s*[:=]\s*)(?P<value>{_VALUE})""",
                   re.IGNORECASE)
#: Shorter known values are masked by name only: masking "pw" everywhere would garble logs.
MIN_VALUE_LENGTH = 4
#: Logger names of the Kafka client libraries.
KAFKA_LOGGERS = ("kafka", "confluent_kafka")

_known: set[str] = set()
_lock = threading.Lock()


def is_secret(key: str) -> bool:
    """Whether a setting named ``key`` holds a secret.

    >>> is_secret("sasl_plain_password"), is_secret("sasl.oauthbearer.config")
    (True, True)
    >>> is_secret("sasl_plain_username"), is_secret("ssl_cafile")
    (False, False)
    """
    return bool(_SECRET_KEY.search(key))


def remember(secrets: Iterable[Any]) -> None:
    """Mask these values wherever they appear, from now on, in this process."""
    with _lock:
        _known.update(str(s) for s in secrets if s is not None and len(str(s)) >= MIN_VALUE_LENGTH)


def remember_mapping(options: Mapping[Any, Any]) -> None:
    """:func:`remember` the values under the secret keys of ``options``."""
    remember(v for k, v in options.items() if isinstance(k, str) and is_secret(k))


def _masked_pair(match: re.Match) -> str:
    value = match["value"]
    quote = value[-1] if value[-1:] in ("'", '"') and len(value) > 1 else ""
    return f"{match['key']}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """``text`` with the values of secret keys and every known secret masked."""
    text = _PAIR.sub(_masked_pair, text)
    for secret in sorted(_known, key=len, reverse=True):  # a longer secret may hold another
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: each record's message (with its arguments), exception and stack
    masked by :func:`redact` before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        for arg in [args] if isinstance(args, Mapping) else list(args or ()):
            if isinstance(arg, Mapping):  # a configuration: learn its secrets
                remember_mapping(arg)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it; show no args
            message, record.args = str(record.msg), None
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def kafka_debug_asked(env: Mapping[str, str]) -> bool:
    """Whether ``DWELL_DEBUG_KAFKA`` asks for the Kafka clients' DEBUG logs."""
    return env.get("DWELL_DEBUG_KAFKA", "").strip().lower() in ("1", "true", "yes", "on")


def install(kafka_level: int) -> None:
    """Put a :class:`RedactingFilter` on every handler of the root logger (once), and set the
    Kafka clients' loggers to ``kafka_level``: INFO or above unless their DEBUG is asked for
    (it logs their whole configuration, which the filter alone then keeps clean)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in KAFKA_LOGGERS:
        logging.getLogger(name).setLevel(kafka_level)
