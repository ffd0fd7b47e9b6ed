"""Vague items for a stream: items a user was never seen with, drawn per event.

The paper treats items a user was not shown as vague, not negative. For each event the
sampler draws ``num_neg`` items from the learner's memory: uniformly over the known item
pool, or by popularity (uniformly over a ring of the most recent item occurrences, which
is proportional to recent popularity at O(1) cost per draw). Draws that hit an item the
user has interacted with are redrawn up to ``retries`` times, then dropped.

>>> import numpy as np
>>> s = NegativeSampler(num_neg=2, seed=0, retries=20)
>>> s.observe(np.array([0, 0, 1]), np.array([0, 1, 2]))
>>> users, items = s.sample(np.array([0]), n_items=3)
>>> users.tolist(), items.tolist()
([0, 0], [2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learner.core import ring
from learner.core.errors import ConfigError
from learner.core.ids.keyset import KeySet
from learner.core.settings import SAMPLER_MODES

PAIR_SHIFT = np.int64(1 << 31)


class NegativeSampler:
    """Draws unseen (user, item) pairs; remembers every pair it has observed."""

    MODES = SAMPLER_MODES

    def __init__(
        self, num_neg: int = 1, mode: str = "uniform", seed: int | Sequence[int] = 0,
        history: int = 100_000, retries: int = 3,
    ) -> None:
        if mode not in self.MODES:
            raise ConfigError(f"unknown sampler {mode!r}; choose from {self.MODES}")
        self.num_neg, self.mode, self.retries = num_neg, mode, retries
        self.rng = np.random.default_rng(seed)
        self._seen = KeySet()  # (user, item) pair keys
        self._recent = np.zeros(history, dtype=np.int64)
        self._recent_count = 0
        self.dropped = 0

    @staticmethod
    def _keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * PAIR_SHIFT + items.astype(np.int64)

    def observe(self, users: np.ndarray, items: np.ndarray) -> None:
        """Remember interactions (user rows, item rows) of a batch."""
        self._seen.add(self._keys(users, items))
        ring.write(self._recent, self._recent_count, items[-self._recent.size :])
        self._recent_count += items.size

    def _draw(self, size: int, n_items: int) -> np.ndarray:
        if self.mode == "popularity" and self._recent_count:
            filled = min(self._recent_count, self._recent.size)
            return self._recent[self.rng.integers(0, filled, size)]
        return self.rng.integers(0, n_items, size)

    def _unseen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return ~self._seen.contains(self._keys(users, items))

    def forget(self, users: np.ndarray, items: np.ndarray) -> None:
        """Forget every pair of the user rows ``users`` or the item rows ``items``, and drop
        those items from the popularity ring: the rows now stand for other (new) ids."""
        if users.size or items.size:
            self._seen.discard(lambda keys: np.isin(keys // PAIR_SHIFT, users)
                               | np.isin(keys % PAIR_SHIFT, items))
        filled = min(self._recent_count, self._recent.size)
        if items.size and filled:
            ring = self._recent[:filled]
            if self._recent_count > self._recent.size:  # full: the oldest is at the next slot
                ring = np.roll(self._recent, -(self._recent_count % self._recent.size))
            stale = np.isin(ring, items)
            if stale.any():  # the rest, oldest first again from slot 0
                self._recent = np.zeros_like(self._recent)
                self._recent[: filled - int(stale.sum())] = ring[~stale]
                self._recent_count = filled - int(stale.sum())

    def sample(self, users: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """``num_neg`` unseen items for each user row given: (user rows, item rows)."""
        if self.num_neg <= 0 or n_items == 0 or users.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        users = np.repeat(users, self.num_neg)
        items = self._draw(users.size, n_items)
        ok = self._unseen(users, items)
        for _ in range(self.retries):
            bad = np.flatnonzero(~ok)
            if not bad.size:
                break
            items[bad] = self._draw(bad.size, n_items)
            ok[bad] = self._unseen(users[bad], items[bad])
        self.dropped += int((~ok).sum())
        return users[ok], items[ok]

    def state_dict(self) -> dict:
        return {"seen": self._seen.array().copy(),
                "recent": self._recent.copy(), "recent_count": self._recent_count,
                "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self._seen = KeySet(state["seen"])  # sorted again: old checkpoints' were not
        self._recent = state["recent"].copy()
        self._recent_count = int(state["recent_count"])
        self.dropped = int(state["dropped"])


class Reservoir:
    """A bounded ring of recent genuine events (rows, features, labels) for meta batches.

    >>> r = Reservoir(size=3, n_feats=0)
    >>> r.add(np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8]), np.zeros((4, 0), np.int64),
    ...       np.array([1.0, 0.0, 1.0, 0.0]))
    >>> len(r), sorted(r.users.tolist())
    (3, [2, 3, 4])
    """

    def __init__(self, size: int, n_feats: int) -> None:
        self.size = size
        self.users = np.zeros(size, dtype=np.int64)
        self.items = np.zeros(size, dtype=np.int64)
        self.feats = np.zeros((size, n_feats), dtype=np.int64)
        self.labels = np.zeros(size, dtype=np.float32)
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, self.size)

    def add(self, users, items, feats, labels) -> None:
        keep = slice(-self.size, None)
        users, items, feats, labels = users[keep], items[keep], feats[keep], labels[keep]
        slots = (self._count + np.arange(users.size)) % self.size
        self.users[slots], self.items[slots] = users, items
        self.feats[slots], self.labels[slots] = feats, labels
        self._count += users.size

    def forget(self, users: np.ndarray, items: np.ndarray) -> None:
        """Drop the events of the user rows ``users`` or the item rows ``items`` (the rows now
        stand for other ids); the rest stay, oldest first from slot 0."""
        n = len(self)
        if not n or not (users.size or items.size):
            return
        order = np.arange(n)
        if self._count > self.size:  # full ring: the oldest event is at the next slot
            order = np.roll(order, -(self._count % self.size))
        stale = np.isin(self.users[order], users) | np.isin(self.items[order], items)
        if not stale.any():
            return
        keep = order[~stale]
        for name in ("users", "items", "feats", "labels"):
            old = getattr(self, name)
            new = np.zeros_like(old)
            new[: keep.size] = old[keep]
            setattr(self, name, new)
        self._count = keep.size

    def state_dict(self) -> dict:
        return {"users": self.users.copy(), "items": self.items.copy(),
                "feats": self.feats.copy(), "labels": self.labels.copy(), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.users, self.items = state["users"].copy(), state["items"].copy()
        self.feats, self.labels = state["feats"].copy(), state["labels"].copy()
        self.size, self._count = self.users.size, int(state["count"])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Positions of ``n`` events drawn uniformly without replacement (fewer if short)."""
        return rng.choice(len(self), size=min(n, len(self)), replace=False)

