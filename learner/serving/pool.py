"""The popular pool: videos by views with a decaying weight, what ``/rank`` ranks by default.

Each view weighs ``2 ** ((ts - now) / half_life)``: a view one half-life older than the newest
event counts half. Time is event time (the events' ``ts_ms``), so a replay of old logs decays
as the feed did. Weights are kept relative to a reference time that moves forward with the
stream (rescaled before they could overflow), so adding a batch is one ``np.add.at``.

The videos tracked are bounded (``tracked``): an :class:`~learner.core.ids.idmap.IdMap` with that
capacity gives their rows, and the least recently viewed is forgotten when a new one comes.

>>> pool = PopularityPool(size=2, half_life_s=60.0, tracked=10)
>>> pool.add(["a", "b", "b", 7], np.array([0, 0, 0, 60_000]))
>>> pool.top()
(['b', 7], array([1., 1.]))
>>> pool.top(3)[0], pool.newest_ms
(['b', 7, 'a'], 60000)
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence

import numpy as np

from learner.core.ids.idmap import IdMap

#: Rescale the weights once the newest event is this many half-lives past the reference
#: (2 ** 60 stays far from float64's range, and keeps 1e-18 of relative precision).
_RESCALE_HALF_LIVES = 60.0


class PopularityPool:
    """The ``size`` most viewed videos by decayed views, among ``tracked`` recently viewed ones.

    Thread-safe: one thread adds (the topic tail), request handlers read :meth:`top`.
    """

    def __init__(self, size: int, half_life_s: float, tracked: int) -> None:
        if not 1 <= size <= tracked:
            raise ValueError(f"pool size must be in 1..tracked ({tracked}), not {size}")
        if not half_life_s > 0:
            raise ValueError(f"half-life must be positive, not {half_life_s}")
        self.size, self.tracked = size, tracked
        self._half_life_ms = half_life_s * 1000.0
        self._rows = IdMap(tracked)
        self._ids = np.empty(0, dtype=object)  # the video of each row
        self._weight = np.zeros(0, dtype=np.float64)  # relative to 2 ** (ref / half-life)
        self._ref_ms: int | None = None
        self.newest_ms: int | None = None  # newest event time seen
        self.events = 0
        self._lock = threading.Lock()
        self._top: tuple[list[Hashable], np.ndarray] | None = None  # cached until an add

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, video_ids: Sequence[Hashable], ts_ms: np.ndarray) -> None:
        """Count one view of each ``video_ids[i]`` at event time ``ts_ms[i]``."""
        if not len(video_ids):
            return
        ts = np.asarray(ts_ms, dtype=np.int64)
        with self._lock:
            newest = int(ts.max())
            if self._ref_ms is None:
                self._ref_ms = newest
            self.newest_ms = newest if self.newest_ms is None else max(self.newest_ms, newest)
            if (self.newest_ms - self._ref_ms) / self._half_life_ms > _RESCALE_HALF_LIVES:
                self._weight *= np.exp2((self._ref_ms - self.newest_ms) / self._half_life_ms)
                self._ref_ms = self.newest_ms
            rows = self._rows.lookup(video_ids)
            if len(self._rows) > self._ids.size:
                grow = max(len(self._rows), 2 * self._ids.size) - self._ids.size
                self._ids = np.concatenate([self._ids, np.empty(grow, dtype=object)])
                self._weight = np.concatenate([self._weight, np.zeros(grow)])
            self._weight[self._rows.last_evicted] = 0.0  # rows that now hold new videos
            self._ids[rows] = np.fromiter(video_ids, dtype=object, count=len(video_ids))
            # a view far older than the reference weighs nothing, rather than underflow
            np.add.at(self._weight, rows, np.exp2(np.maximum(
                (ts - self._ref_ms) / self._half_life_ms, -1000.0)))
            self.events += len(video_ids)
            self._top = None

    def top(self, n: int | None = None) -> tuple[list[Hashable], np.ndarray]:
        """The ``n`` (default :attr:`size`) most popular videos, most popular first, and their
        decayed views as of the newest event."""
        n = self.size if n is None else n
        with self._lock:
            if self._top is not None and len(self._top[0]) >= min(n, len(self._rows)):
                ids, weights = self._top
                return ids[:n], weights[:n]
            live = min(len(self._rows), self._weight.size)
            weight = self._weight[:live]
            m = min(max(n, self.size), live)
            best = np.argpartition(-weight, m - 1)[:m] if 0 < m < live else np.arange(live)
            best = best[np.argsort(-weight[best], kind="stable")]
            scale = (np.exp2((self._ref_ms - self.newest_ms) / self._half_life_ms)
                     if self.newest_ms is not None and self._ref_ms is not None else 1.0)
            self._top = (self._ids[best].tolist(), weight[best] * scale)
            ids, weights = self._top
            return ids[:n], weights[:n]

    def weights(self, video_ids: Sequence[Hashable]) -> np.ndarray:
        """The decayed views of ``video_ids`` (0 for a video the pool does not track)."""
        with self._lock:
            rows = self._rows.lookup(video_ids, add=False)
            out = np.zeros(len(video_ids))
            seen = rows >= 0
            out[seen] = self._weight[rows[seen]]
            if self.newest_ms is not None and self._ref_ms is not None:
                out *= np.exp2((self._ref_ms - self.newest_ms) / self._half_life_ms)
            return out
