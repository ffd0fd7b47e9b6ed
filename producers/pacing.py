"""Pacing of a replay: as fast as possible, a fixed rate, or a multiple of real event time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream.errors import ConfigError

logger = logging.getLogger(__name__)


class Pacer:
    """Decide how long to wait before each send; call ``wait(ts_ms)`` once per event.

    Modes (at most one of ``rate`` and ``speed``):

    - neither: as fast as possible; ``wait`` returns at once and never reads the clock.
    - ``rate=N``: N events per second. Event *i* is due ``i / N`` s after the first.
    - ``speed=X``: X times real event time. An event is due ``(ts_ms - ts0) / X`` ms after
      the first one (``ts0``). A gap longer than ``max_sleep_s`` (default 5 s of wall time,
      after dividing by X) is cut to ``max_sleep_s`` and the schedule restarts from that
      event, so a night without events does not stall the replay. Events out of time order
      are sent at once: sort with ``order_by_time`` first.

    The pacer sleeps only when it is at least ``min_sleep_s`` (1 ms) ahead of schedule, so
    at high rates it sleeps once per batch of events, not once per event. If the sender
    falls behind by more than ``max_lag_s`` (1 s), the schedule restarts from now instead
    of bursting to catch up. ``clock`` and ``sleep`` are injectable for tests.

    >>> fake = [0.0]
    >>> pacer = Pacer(rate=1000, clock=lambda: fake[0],
    ...               sleep=lambda s: fake.__setitem__(0, fake[0] + s))
    >>> for _ in range(5000):
    ...     _ = pacer.wait(0)
    >>> round(fake[0], 2)  # event i is due i / 1000 s after the first
    5.0
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        speed: float | None = None,
        max_sleep_s: float = 5.0,
        min_sleep_s: float = 0.001,
        max_lag_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and speed is not None:
            raise ConfigError("pacing: give rate or speed, not both")
        if rate is not None and not rate > 0:
            raise ConfigError(f"pacing: rate must be > 0 events/s, got {rate}")
        if speed is not None and not speed > 0:
            raise ConfigError(f"pacing: speed must be > 0, got {speed}")
        if not max_sleep_s > 0:
            raise ConfigError(f"pacing: max_sleep_s must be > 0, got {max_sleep_s}")
        self.rate, self.speed = rate, speed
        self.max_sleep_s, self.min_sleep_s, self.max_lag_s = max_sleep_s, min_sleep_s, max_lag_s
        self._clock, self._sleep = clock, sleep
        self._origin_wall: float | None = None  # wall time the schedule is measured from
        self._origin_ts = 0  # event time (speed) at the origin
        self._count = 0  # events since the origin (rate)
        self.slept_s = 0.0  # total time spent sleeping

    @classmethod
    def from_mode(cls, mode: str | None, **kwargs) -> Pacer:
        """Build from ``"fast"`` (or None/""), ``"rate=N"`` or ``"speed=X"``.

        >>> Pacer.from_mode("speed=60").speed
        60.0
        """
        if not mode or mode == "fast":
            return cls(**kwargs)
        name, _, value = mode.partition("=")
        if name not in ("rate", "speed") or not value:
            raise ConfigError(f"pacing mode {mode!r}: use fast, rate=N or speed=X")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"pacing mode {mode!r}: {value!r} is not a number") from None
        return cls(rate=number, **kwargs) if name == "rate" else cls(speed=number, **kwargs)

    @property
    def mode(self) -> str:
        """The mode as text: ``"fast"``, ``"rate=N"`` or ``"speed=X"``."""
        if self.rate is not None:
            return f"rate={self.rate:g}"
        return f"speed={self.speed:g}" if self.speed is not None else "fast"

    def wait(self, ts_ms: int = 0) -> float:
        """Sleep until the event with event time ``ts_ms`` is due; return the seconds slept."""
        if self.rate is None and self.speed is None:
            return 0.0
        now = self._clock()
        origin = self._origin_wall
        if origin is None:
            self._restart(now, ts_ms)
            origin = now
        if self.rate is not None:
            due = origin + self._count / self.rate
        else:
            assert self.speed is not None  # rate or speed: the fast mode returned above
            due = origin + (ts_ms - self._origin_ts) / 1000.0 / self.speed
        if due - now < -self.max_lag_s:  # far behind: send now and measure from here
            self._restart(now, ts_ms)
            due = now
        self._count += 1
        ahead = due - now
        if ahead < self.min_sleep_s:
            return 0.0
        if self.speed is not None and ahead > self.max_sleep_s:
            ahead = self.max_sleep_s
            self._restart(now + ahead, ts_ms)
        self._sleep(ahead)
        self.slept_s += ahead
        return ahead

    def _restart(self, wall: float, ts_ms: int) -> None:
        """Measure the schedule from an event that is due at ``wall``."""
        self._origin_wall, self._origin_ts, self._count = wall, ts_ms, 0
