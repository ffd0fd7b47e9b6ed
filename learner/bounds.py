"""The allowed values of settings: a :class:`Range` for a number, :class:`Choices` for a name.

Each setting declares its own next to it (a :class:`learner.service.config.Config` field's metadata,
or the ``type=`` of a subcommand's flag, :class:`Flag`) and is checked when the settings are
read, before anything starts. The problems read as the end of a one-line error that names
the flag: ``--batch-size must be >= 1 (got 0)``.

>>> Range(1).problem(0)
'must be >= 1 (got 0)'
>>> Range(0, 1, low_open=True).problem(float("nan"))
'must be a finite number > 0 and <= 1 (got nan)'
>>> Choices(("gmf", "neumf", "deepfm")).problem("mf")
"must be gmf, neumf or deepfm (got 'mf')"
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: The largest value of a Kafka INT32 field (sizes, counts, milliseconds).
INT32_MAX = 2**31 - 1
#: The longest duration dwell accepts, in seconds (a year): longer overflows some waits.
MAX_SECONDS = 365 * 24 * 3600.0
#: The highest TCP port.
MAX_PORT = 65_535


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where the side is open); None: no bound on that side.

    A float must also be finite (neither nan nor inf).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The rule in words: ``>= 1``, ``> 0 and <= 1``, ``between 0 and 65,535``."""
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        high = (None if self.high is None
                else f"{'<' if self.high_open else '<='} {_num(self.high)}")
        if low and high and not (self.low_open or self.high_open):
            return f"between {_num(self.low)} and {_num(self.high)}"
        return " and ".join(filter(None, (low, high))) or "any number"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def problem(self, value: float) -> str | None:
        """None if ``value`` is allowed, else what is wrong: ``must be >= 1 (got 0)``."""
        if self.contains(value):
            return None
        finite = "a finite number " if isinstance(value, float) else ""
        return f"must be {finite}{self.describe()} (got {value!r})"

    def outside(self, kind: type) -> list[Any]:
        """Values of ``kind`` just outside the range (and nan, inf for floats): for tests."""
        step = 1 if kind is int else 0.5
        bad: list[Any] = []
        if self.low is not None:
            bad.append(kind(self.low) if self.low_open else kind(self.low - step))
        if self.high is not None:
            bad.append(kind(self.high) if self.high_open else kind(self.high + step))
        if kind is float:
            bad += [math.nan, math.inf]
        return bad


def _num(value: float) -> str:
    """``65,535``, ``0.5``, ``1e+12``: a bound as a person reads it."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:g}"


@dataclass(frozen=True)
class Choices:
    """One of ``values``, or a name that matches ``pattern`` (described as ``shown``)."""

    values: tuple[str, ...]
    pattern: str | None = None
    shown: str = ""

    def describe(self) -> str:
        """The names in words: ``gmf, neumf or deepfm``."""
        names = self.values + ((self.shown,) if self.shown else ())
        return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))

    def problem(self, value: str) -> str | None:
        if value in self.values or (self.pattern and re.fullmatch(self.pattern, value)):
            return None
        return f"must be {self.describe()} (got {value!r})"


@dataclass(frozen=True)
class Pattern:
    """A string that ``regex`` matches whole, described as ``shown``; ``bad`` are strings it
    must refuse (for tests).

    >>> TOPIC.problem("a b")
    "must be 1 to 249 of a-z A-Z 0-9 . _ - (got 'a b')"
    """

    regex: str
    shown: str
    bad: tuple[str, ...] = ("",)

    def describe(self) -> str:
        return self.shown

    def problem(self, value: str) -> str | None:
        if re.fullmatch(self.regex, value):
            return None
        return f"must be {self.describe()} (got {value!r})"


_NAME = r"[A-Za-z0-9._-]{1,249}"
_HOST = r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
#: A Kafka topic name (what the broker accepts).
TOPIC = Pattern(_NAME, "1 to 249 of a-z A-Z 0-9 . _ -", ("", "a b", "x" * 250))
#: A topic name, or empty for the default.
TOPIC_OR_DEFAULT = Pattern(f"(?:{_NAME})?", "empty or 1 to 249 of a-z A-Z 0-9 . _ -",
                           ("a b", "t/x"))
#: A consumer group id: printable, 1 to 255 characters.
GROUP = Pattern(r"[^\x00-\x1f\x7f]{1,255}", "1 to 255 printable characters", ("", "a\nb"))
#: A host name or address.
HOST = Pattern(_HOST, "a host name or IP address", ("", "a b", "host:1"))
#: A host name or address, or empty for the default.
HOST_OR_DEFAULT = Pattern(f"(?:{_HOST})?", "empty or a host name or IP address", ("a b",))
#: A log's column mapping entry (``dwell replay --map``, ``dwell eval --map``).
FIELD_COLUMN = Pattern(r"[A-Za-z_][\w.]*=.+", "FIELD=COLUMN", ("user_id", "=x", "a b=c"))
#: Kafka bootstrap servers: host:port[,host:port].
BOOTSTRAP = Pattern(rf"{_HOST}:\d{{1,5}}(?:,{_HOST}:\d{{1,5}})*",
                    "host:port[,host:port]", ("", "localhost", "a:b", "h:1,"))


class Flag:
    """An argparse ``type=`` for a number of ``kind`` within ``rule`` (or a name within
    ``rule`` when it is :class:`Choices`); with ``many``, a comma list of them (a tuple).

    A bad value is an argparse error naming the flag: ``argument --rate: must be > 0 (got 0)``.
    """

    def __init__(self, kind: Callable[[str], Any], rule: Range | Choices,
                 many: bool = False) -> None:
        self.kind, self.rule, self.many = kind, rule, many
        self.__name__ = getattr(kind, "__name__", "value")  # argparse names the type by it

    def __call__(self, text: str) -> Any:
        if not self.many:
            return self._one(text)
        values = tuple(self._one(part.strip()) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma list (got {text!r})")
        return values

    def _one(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            what = {int: "an integer", float: "a number"}.get(self.kind, "a value")
            raise argparse.ArgumentTypeError(f"expected {what} (got {text!r})") from None
        problem = self.rule.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value


def positive_int(high: int | None = None, many: bool = False) -> Flag:
    """A flag type: an integer >= 1 (and <= ``high``)."""
    return Flag(int, Range(1, high), many)


def bad_values(flag: Flag) -> Sequence[str]:
    """Command-line values that ``flag`` must refuse: for tests."""
    return refused(flag.rule, flag.kind)


def refused(rule: Range | Choices | Pattern, kind: type) -> list[str]:
    """Command-line values that a setting of ``kind`` under ``rule`` must refuse: for tests."""
    if isinstance(rule, Choices):
        return ["no-such-" + rule.values[0]]
    if isinstance(rule, Pattern):
        return list(rule.bad)
    return [repr(v) if isinstance(v, float) else str(v) for v in rule.outside(kind)]


def csv(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    """An argparse type: a comma list of ``kind``."""
    def parse(value: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def column_mapping(items: list[str] | None) -> dict[str, str] | None:
    """``--map`` entries (checked by :data:`FIELD_COLUMN`) as a field -> column mapping.

    >>> column_mapping(["user_id=uid", "context.tab=tab"])
    {'user_id': 'uid', 'context.tab': 'tab'}
    """
    return dict(item.split("=", 1) for item in items) if items else None
