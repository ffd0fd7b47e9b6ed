"""Pacer logic on a fake clock: no real time passes."""

from __future__ import annotations

import pytest

from producers.pacing import Pacer
from stream.errors import ConfigError


class FakeClock:
    """A monotonic clock that moves only when slept on (or advanced by the test)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.reads = 0

    def clock(self) -> float:
        self.reads += 1
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds

    def pacer(self, **kwargs) -> Pacer:
        return Pacer(clock=self.clock, sleep=self.sleep, **kwargs)


def test_default_never_sleeps() -> None:
    fake = FakeClock()
    pacer = fake.pacer()
    for ts in (0, 10**9, 5, 2 * 10**9):
        assert pacer.wait(ts) == 0.0
    assert fake.sleeps == [] and fake.reads == 0
    assert pacer.mode == "fast"


def test_rate_spreads_events_over_time() -> None:
    fake = FakeClock()
    pacer = fake.pacer(rate=1000)
    start = fake.now
    for _ in range(5000):
        pacer.wait()
    elapsed = fake.now - start
    assert elapsed == pytest.approx(5.0, abs=0.01)  # event i is due at i/1000 s: 4.999 s
    assert pacer.slept_s == pytest.approx(elapsed)
    assert len(fake.sleeps) <= 5000


def test_high_rate_sleeps_in_chunks() -> None:
    fake = FakeClock()
    pacer = fake.pacer(rate=100_000)
    for _ in range(100_000):
        pacer.wait()
    assert fake.now - 1000.0 == pytest.approx(1.0, abs=0.01)
    assert len(fake.sleeps) <= 1000  # about one sleep per millisecond, not one per event
    assert min(fake.sleeps) >= 0.001


def test_speed_divides_event_time_gaps() -> None:
    fake = FakeClock()
    pacer = fake.pacer(speed=2)
    times = []
    for ts in (0, 1000, 3000, 3000, 7000):
        pacer.wait(1_600_000_000_000 + ts)
        times.append(fake.now - 1000.0)
    assert times == pytest.approx([0.0, 0.5, 1.5, 1.5, 3.5])


def test_speed_cuts_long_gaps() -> None:
    fake = FakeClock()
    pacer = fake.pacer(speed=1, max_sleep_s=5.0)
    pacer.wait(0)
    pacer.wait(86_400_000)  # a day later in event time: waits only 5 s
    assert fake.now - 1000.0 == pytest.approx(5.0)
    pacer.wait(86_401_000)  # then the schedule runs from that event
    assert fake.now - 1000.0 == pytest.approx(6.0)


def test_speed_sends_out_of_order_events_at_once() -> None:
    fake = FakeClock()
    pacer = fake.pacer(speed=1)
    pacer.wait(10_000)
    pacer.wait(5_000)
    assert fake.sleeps == []


def test_falling_behind_does_not_burst() -> None:
    fake = FakeClock()
    pacer = fake.pacer(rate=10, max_lag_s=1.0)
    pacer.wait()
    fake.now += 30.0  # the sender stalled for 30 s
    pacer.wait()  # sent at once; the schedule restarts here
    assert fake.sleeps == []
    pacer.wait()
    assert fake.sleeps == [pytest.approx(0.1)]


def test_from_mode_and_validation() -> None:
    assert Pacer.from_mode(None).mode == "fast"
    assert Pacer.from_mode("fast").mode == "fast"
    assert Pacer.from_mode("rate=500").rate == 500.0
    assert Pacer.from_mode("speed=60").mode == "speed=60"
    for bad in ("rate", "rate=abc", "warp=2", "speed=0", "rate=-1"):
        with pytest.raises(ConfigError):
            Pacer.from_mode(bad)
    with pytest.raises(ConfigError, match="not both"):
        Pacer(rate=1, speed=1)
