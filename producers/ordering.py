"""Event-time ordering of replayed events."""

from __future__ import annotations

from collections.abc import Iterable


def order_by_time(events: Iterable[dict]) -> list[dict]:
    """Return the events sorted by ``ts_ms``, keeping file order among equal times (stable).

    Some logs (KuaiRand-27K's like/hate subset) are not in time order; a replay should be.

    >>> [e["ts_ms"] for e in order_by_time([{"ts_ms": 2}, {"ts_ms": 1}])]
    [1, 2]
    """
    return sorted(events, key=lambda event: event["ts_ms"])
