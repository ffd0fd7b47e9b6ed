"""A growing set of int64 keys with batch lookups, whose cost per batch does not grow with it.

The negative sampler remembers every (user, item) pair it has seen: one key per pair, a
batch's worth added and looked up at a time, for as long as the stream runs. One sorted
array answers a lookup by binary search, but inserting into it rewrites it whole: at ten
million pairs that is 80 MB a micro-batch. :class:`KeySet` keeps two sorted arrays: the new
keys go into a small one, merged into the large one only once it holds more than
``max(merge_at, 16 * sqrt(len))`` keys, so a batch costs O(sqrt(len)) amortised.

>>> import numpy as np
>>> s = KeySet(merge_at=2)
>>> s.add(np.array([5, 3, 5]))
>>> s.add(np.array([9, 1]))
>>> s.contains(np.array([1, 2, 3, 9])).tolist(), len(s), s.array().tolist()
([True, False, True, True], 4, [1, 3, 5, 9])
>>> s.discard(lambda keys: keys > 4)
>>> s.array().tolist()
[1, 3]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


def _found(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys)
    found = pos < sorted_keys.size
    found[found] = sorted_keys[pos[found]] == keys[found]
    return found


class KeySet:
    """A set of int64 keys: ``add`` and ``contains`` a batch at a time."""

    def __init__(self, keys: np.ndarray = _EMPTY, merge_at: int = 1 << 14) -> None:
        self._main = np.unique(np.asarray(keys, dtype=np.int64))  # sorted, distinct
        self._new = _EMPTY  # sorted, distinct, none in _main
        self.merge_at = merge_at

    def __len__(self) -> int:
        return self._main.size + self._new.size

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` is in the set."""
        keys = np.asarray(keys, dtype=np.int64)
        found = _found(self._main, keys)
        if self._new.size:
            found |= _found(self._new, keys)
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add ``keys`` (repeats and known keys allowed)."""
        keys = np.unique(np.asarray(keys, dtype=np.int64))
        keys = keys[~self.contains(keys)]
        if not keys.size:
            return
        self._new = np.insert(self._new, np.searchsorted(self._new, keys), keys)
        if self._new.size > max(self.merge_at, 16 * math.isqrt(self._main.size)):
            self._main, self._new = self.array(), _EMPTY

    def discard(self, stale: Callable[[np.ndarray], np.ndarray]) -> None:
        """Drop the keys for which ``stale(keys)`` (a mask over a sorted key array) is true."""
        for name in ("_main", "_new"):
            keys = getattr(self, name)
            if keys.size:
                drop = stale(keys)
                if drop.any():
                    setattr(self, name, keys[~drop])

    def array(self) -> np.ndarray:
        """Every key, sorted."""
        if not self._new.size:
            return self._main
        merged = np.concatenate([self._main, self._new])
        merged.sort(kind="stable")  # two sorted runs: a merge
        return merged
