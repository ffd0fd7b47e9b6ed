"""A map of int64 keys to int64 values with batch operations, for the id maps' integer ids.

An open-addressing hash table (linear probing, at most half full, backward-shift deletion)
whose batch operations are compiled loops (numba, no interpreter lock held), hashed as
:mod:`learner.core.ids.keyset` hashes. One key, :data:`EMPTY` (the least int64), marks an empty slot
and cannot be stored: :class:`~learner.core.ids.idmap.IdMap` keeps that one id in its dict.

A micro-batch's 1,024 ids looked up cost ~10 us here, against ~35 us for a dict's ``get``
over the same ids as Python ints (``docs/BENCHMARKS.md``).

>>> import numpy as np
>>> m = IntMap()
>>> m.put(np.array([7, -3, 10**15]), np.array([0, 1, 2]))
>>> m.get(np.array([-3, 8, 10**15])).tolist(), len(m)
([1, -1, 2], 3)
>>> m.get_or_put(np.array([5, 7, 5, 6]), first=3).tolist()
[3, 0, 3, 4]
>>> m.delete(np.array([-3, 8, 5, 6]))
>>> m.get(np.array([-3, 7])).tolist(), sorted(m.items()[0].tolist())
([-1, 0], [7, 1000000000000000])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from learner.core.ids.keyset import _slot, _slots_for
from learner.core.jit import JitOptions

EMPTY = np.iinfo(np.int64).min
_JIT: JitOptions = {"cache": True, "nogil": True}


@njit(**_JIT)
def _get(keys_table, values_table, keys, missing):
    mask = keys_table.size - 1
    out = np.empty(keys.size, np.int64)
    for j in range(keys.size):
        key = keys[j]
        i = _slot(key, mask)
        value = missing
        while keys_table[i] != EMPTY:
            if keys_table[i] == key:
                value = values_table[i]
                break
            i = (i + 1) & mask
        out[j] = value
    return out


@njit(**_JIT)
def _put(keys_table, values_table, keys, values):
    """Set each key's value (room assured by the caller); return how many keys were new."""
    mask = keys_table.size - 1
    added = 0
    for j in range(keys.size):
        key = keys[j]
        i = _slot(key, mask)
        while keys_table[i] != key:
            if keys_table[i] == EMPTY:
                keys_table[i] = key
                added += 1
                break
            i = (i + 1) & mask
        values_table[i] = values[j]
    return added


@njit(**_JIT)
def _get_or_put(keys_table, values_table, keys, first):
    """The value of each key; a key not in the map is put with the next value from ``first``
    on, in order of first appearance (room for every key assured by the caller). Returns the
    values and how many keys were put."""
    mask = keys_table.size - 1
    out = np.empty(keys.size, np.int64)
    added = 0
    for j in range(keys.size):
        key = keys[j]
        i = _slot(key, mask)
        while keys_table[i] != key and keys_table[i] != EMPTY:
            i = (i + 1) & mask
        if keys_table[i] == EMPTY:
            keys_table[i] = key
            values_table[i] = first + added
            added += 1
        out[j] = values_table[i]
    return out, added


@njit(**_JIT)
def _delete(keys_table, values_table, keys):
    """Remove ``keys`` (absent ones ignored), shifting later entries of a probe run back so
    that every key stays reachable from its home slot; return how many were removed."""
    mask = keys_table.size - 1
    removed = 0
    for key in keys:
        i = _slot(key, mask)
        while keys_table[i] != EMPTY and keys_table[i] != key:
            i = (i + 1) & mask
        if keys_table[i] == EMPTY:
            continue
        removed += 1
        hole, j = i, (i + 1) & mask
        while keys_table[j] != EMPTY:
            home = _slot(keys_table[j], mask)
            # the entry at j may fill the hole when its home is not in (hole, j], cyclically:
            # when it lies at least as far from its home as from the hole
            if ((j - home) & mask) >= ((j - hole) & mask):
                keys_table[hole], values_table[hole] = keys_table[j], values_table[j]
                hole = j
            j = (j + 1) & mask
        keys_table[hole] = EMPTY
    return removed


class IntMap:
    """int64 keys (not :data:`EMPTY`) to int64 values: ``get``, ``put`` and ``delete`` a
    batch at a time."""

    def __init__(self) -> None:
        self._rebuild(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)

    def __len__(self) -> int:
        return self._count

    def get(self, keys: np.ndarray, missing: int = -1) -> np.ndarray:
        """The value of each key, ``missing`` for keys not in the map."""
        return _get(self._keys, self._values, keys, missing)

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Set ``keys`` (distinct, none :data:`EMPTY`) to ``values``."""
        self._make_room(keys.size)
        self._count += _put(self._keys, self._values, keys, values)

    def _make_room(self, more: int) -> None:
        if 2 * (self._count + more) > self._keys.size:  # room for all, at most half full
            self._rebuild(*self.items(), self._count + more)

    def get_or_put(self, keys: np.ndarray, first: int) -> np.ndarray:
        """The value of each key (none :data:`EMPTY`); keys not in the map are put, valued
        ``first``, ``first + 1``, ... in order of first appearance."""
        self._make_room(keys.size)
        out, added = _get_or_put(self._keys, self._values, keys, first)
        self._count += added
        return out

    def delete(self, keys: np.ndarray) -> None:
        """Remove ``keys``; absent keys are ignored."""
        self._count -= _delete(self._keys, self._values, keys)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys and their values, in no particular order."""
        used = self._keys != EMPTY
        return self._keys[used], self._values[used]

    def _rebuild(self, keys: np.ndarray, values: np.ndarray, room: int) -> None:
        slots = _slots_for(room)
        self._keys = np.full(slots, EMPTY, np.int64)
        self._values = np.zeros(slots, np.int64)
        self._count = _put(self._keys, self._values, keys, values)
