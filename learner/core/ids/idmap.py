"""Id maps: arbitrary user and video ids (strings or integers) to dense embedding rows.

Rows are handed out in order of first sight, so a table of ``len(idmap)`` rows covers every id
seen so far. Integer and string ids are distinct keys (``7`` is not ``"7"``).

With a ``capacity``, rows are handed out until the map holds ``capacity`` ids; after that each
new id takes the row of the least recently seen id, which is evicted (forgotten). Recency is a
clock that ticks once per :meth:`IdMap.lookup` that adds: every id of a lookup is seen at the
same time, and ids of one lookup never evict each other. The rows recycled by the last lookup
that added are :attr:`IdMap.last_evicted`: whoever owns per-row state (embeddings, optimiser
moments) must reset those rows before using them for their new ids.

>>> m = IdMap()
>>> m.lookup(["a", 7, "a"]).tolist(), len(m)
([0, 1, 0], 2)
>>> lru = IdMap(capacity=2)
>>> lru.lookup(["a", "b"]).tolist(), lru.lookup(["a"]).tolist(), lru.lookup(["c"]).tolist()
([0, 1], [0], [1])
>>> "b" in lru, lru.last_evicted.tolist(), lru.evictions
(False, [1], 1)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import repeat

import numpy as np

from learner.core.errors import ConfigError
from learner.core.ids.columns import IntIds, StrIds
from learner.core.ids.intmap import EMPTY, IntMap

_NONE = np.zeros(0, dtype=np.int64)
_NEVER = np.iinfo(np.int64).max


def _is_int_key(key: Hashable) -> bool | np.bool_:
    """Whether ``key`` is held by the compiled map: an integer (not a bool) in int64, not
    :data:`~learner.core.ids.intmap.EMPTY` (numpy's bool for a numpy integer)."""
    return ((type(key) is int or isinstance(key, np.integer)) and EMPTY < key <= _NEVER)


class _Split:
    """A lookup's ids in two parts: the integers (their positions, and the keys as int64)
    and the others (positions, and the keys)."""

    int_at: np.ndarray | None  # None: every id is an integer (:meth:`positions`)

    def __init__(self, ids: Sequence[Hashable]) -> None:
        n = len(ids)
        keys: np.ndarray | None
        kinds: set[type]
        if type(ids) is StrIds:  # no integers: no type to check
            self.int_at, self.ints, self.other_at, self.others = (_NONE, _NONE, np.arange(n),
                                                                  ids.values)
            return
        if type(ids) is IntIds:
            keys, kinds, ids = ids.array, {int}, ids.values
        else:
            keys, kinds = None, set(map(type, ids))
        if keys is None and kinds == {int}:
            try:
                keys = np.fromiter(ids, np.int64, n)
            except OverflowError:
                keys = None
        if keys is not None and not (keys == EMPTY).any():
            self.int_at, self.ints, self.other_at, self.others = None, keys, _NONE, []
            return
        if not any(kind is not bool and issubclass(kind, (int, np.integer)) for kind in kinds):
            self.int_at, self.ints, self.other_at, self.others = _NONE, _NONE, np.arange(n), ids
            return  # no integers (strings, most often): no call a key
        is_int = np.fromiter(map(_is_int_key, ids), bool, n)
        self.int_at, self.other_at = np.flatnonzero(is_int), np.flatnonzero(~is_int)
        self.ints = np.fromiter((ids[j] for j in self.int_at.tolist()), np.int64,
                                self.int_at.size)
        self.others = [ids[j] for j in self.other_at.tolist()]

    def positions(self, n: int) -> np.ndarray:
        return np.arange(n) if self.int_at is None else self.int_at


class IdMap:
    """Assigns a dense row number to each distinct id; with a capacity, least recently seen
    ids are evicted and their rows reused.

    Integer ids live in a compiled hash map (:class:`~learner.core.ids.intmap.IntMap`; a batch of
    :class:`~learner.core.ids.columns.IntIds` is looked up without reading a Python int),
    other ids in a dict."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigError(f"id map capacity must be at least 1 (or None), not {capacity}")
        self.capacity = capacity
        self._ints = IntMap()
        self._others: dict[Hashable, int] = {}
        self._reset_capacity_state()
        self.last_evicted = _NONE  # rows recycled by the last adding lookup (new ids in them)
        self.evictions = 0  # ids evicted so far

    def _reset_capacity_state(self) -> None:
        # Bounded maps only: the id held by each row, and when each row was last seen.
        self._ids: list[Hashable] = self._row_ids() if self.capacity is not None else []
        self._last_seen = np.zeros(len(self._ids), dtype=np.int64)
        self.clock = 0  # lookups that added so far

    def __len__(self) -> int:
        return len(self._ints) + len(self._others)

    def __contains__(self, key: Hashable) -> bool:
        if _is_int_key(key):
            return bool(self._ints.get(np.array([key], np.int64))[0] >= 0)
        return key in self._others

    def _find(self, split: _Split, n: int) -> np.ndarray:
        """The rows of the split ids, -1 for unknown ones."""
        if split.int_at is None:
            return self._ints.get(split.ints)
        out = np.empty(n, np.int64)
        if split.ints.size:
            out[split.int_at] = self._ints.get(split.ints)
        # a C-level map: a generator over the ids cost ~0.15 us an id more
        out[split.other_at] = np.fromiter(map(self._others.get, split.others,
                                              repeat(-1, len(split.others))),
                                          np.int64, len(split.others))
        return out

    def lookup(self, ids: Sequence[Hashable], add: bool = True) -> np.ndarray:
        """Rows of ``ids`` as int64; unknown ids get new rows (``add``) or -1.

        ``add=False`` is a pure query: it neither adds ids nor counts as seeing them.
        With a capacity, raises ConfigError when ``ids`` holds more distinct ids than the
        capacity (they could not all have rows at once).
        """
        split = _Split(ids)
        if add and self.capacity is None and split.int_at is None:  # integers: one call
            self.last_evicted = _NONE
            return self._ints.get_or_put(split.ints, len(self))
        out = self._find(split, len(ids))
        if not add:
            return out
        self.last_evicted = _NONE
        missing = np.flatnonzero(out < 0)
        if missing.size and self.capacity is None and not split.ints.size:
            self._add_others(split.others, out, missing)  # strings, most often
        elif missing.size:
            self._assign(split, out, missing)
            if split.int_at is None:  # the rows of the ids that were missing
                out[missing] = self._ints.get(split.ints[missing])
            else:
                out = self._find(split, len(ids))
        if self.capacity is not None:
            self.clock += 1
            self._last_seen[out] = self.clock
        return out

    def _add_others(self, ids: Sequence[Hashable], out: np.ndarray, missing: np.ndarray,
                    ) -> None:
        """An unbounded map's new rows for ``ids`` (none an integer) at positions
        ``missing``, in order of first appearance, written into ``out``: C-level maps only."""
        keys = list(map(ids.__getitem__, missing.tolist()))
        fresh = dict.fromkeys(keys)
        n = len(self)
        self._others.update(zip(fresh, range(n, n + len(fresh)), strict=True))
        out[missing] = np.fromiter(map(self._others.__getitem__, keys), np.int64, len(keys))

    def _fresh(self, split: _Split, out: np.ndarray,
               ) -> tuple[np.ndarray, list[Hashable], np.ndarray]:
        """The unknown integer ids, and the other unknown ids, each once; and where each
        first appears, integers first (the caller orders the new rows by it)."""
        ints, int_first = _NONE, _NONE
        if split.ints.size:
            at = split.positions(out.size)
            unknown = out[at] < 0
            ints, first = np.unique(split.ints[unknown], return_index=True)
            int_first = at[unknown][first]
            order = np.argsort(int_first, kind="stable")
            ints, int_first = ints[order], int_first[order]
        unknown = np.flatnonzero(out[split.other_at] < 0)
        keys = list(map(split.others.__getitem__, unknown.tolist()))
        # each key's first position: dicts keep the last value, so built back to front (the
        # keys come out in some order; the caller orders the rows by these positions)
        others = dict(zip(reversed(keys), reversed(split.other_at[unknown].tolist()),
                          strict=True))
        return ints, list(others), np.concatenate([int_first, np.fromiter(
            others.values(), np.int64, len(others))])

    def _assign(self, split: _Split, out: np.ndarray, missing: np.ndarray) -> None:
        """Rows for the unknown ids (at positions ``missing`` of ``out``), in order of first
        appearance: new rows, then (with a capacity) the least recently seen rows."""
        ints, others, first = self._fresh(split, out)
        fresh = first.size
        n_rows = len(self) if self.capacity is None else len(self._ids)
        capacity = self.capacity if self.capacity is not None else n_rows + fresh
        known = np.unique(out[out >= 0]) if self.capacity is not None else _NONE
        if known.size + fresh > capacity:
            raise ConfigError(
                f"id map capacity {capacity} is too small: one lookup holds "
                f"{known.size + fresh} distinct ids; the capacity must be at least the "
                "distinct ids of a batch (at least the batch size)"
            )
        grow = min(fresh, max(0, capacity - n_rows))
        rows = np.arange(n_rows, n_rows + grow, dtype=np.int64)
        need = fresh - grow
        if need:
            victims = self._victims(known, need)
            rows = np.concatenate([rows, victims])
            gone = [self._ids[row] for row in victims.tolist()]
            self._ints.delete(np.fromiter((k for k in gone if _is_int_key(k)), np.int64))
            for key in gone:
                if not _is_int_key(key):
                    del self._others[key]
            self.last_evicted = victims
            self.evictions += need
        by_first = np.empty(fresh, np.int64)  # the rows in order of first appearance
        by_first[np.argsort(first, kind="stable")] = rows
        int_rows, other_rows = by_first[: ints.size], by_first[ints.size:].tolist()
        self._ints.put(ints, int_rows)
        self._others.update(zip(others, other_rows, strict=True))
        if self.capacity is None:
            return
        if grow:
            self._ids.extend([None] * grow)
            if n_rows + grow > self._last_seen.size:
                grown = np.zeros(max(n_rows + grow, min(2 * self._last_seen.size, capacity)),
                                 dtype=np.int64)
                grown[: self._last_seen.size] = self._last_seen
                self._last_seen = grown
        for key, row in zip([*ints.tolist(), *others], [*int_rows.tolist(), *other_rows],
                            strict=True):
            self._ids[row] = key

    def _victims(self, keep: np.ndarray, need: int) -> np.ndarray:
        """The ``need`` least recently seen rows outside ``keep``, oldest first (ties: lowest
        row first among those chosen)."""
        age = self._last_seen[: len(self._ids)].copy()
        age[keep] = _NEVER
        pick = np.argpartition(age, need - 1)[:need] if need < age.size else np.arange(age.size)
        return pick[np.lexsort((pick, age[pick]))].astype(np.int64)

    def ids_at(self, rows: np.ndarray) -> list[Hashable]:
        """The id each of ``rows`` holds now (None for a row no id holds), without scanning
        the ids one by one in Python (only those of ``rows`` and the non-integer ids).

        >>> m = IdMap()
        >>> _ = m.lookup([5, "x", 9])
        >>> m.ids_at(np.array([2, 1, 0, 7]))
        [9, 'x', 5, None]
        """
        rows = np.asarray(rows, np.int64)
        if self.capacity is not None:
            held = len(self._ids)
            return [self._ids[r] if r < held else None for r in rows.tolist()]
        n = len(self)
        keys, values = self._ints.items()
        by_row = np.zeros(n, np.int64)
        is_int = np.zeros(n, bool)
        by_row[values], is_int[values] = keys, True
        inside = rows < n
        out: list[Hashable] = [None] * rows.size
        ints = np.flatnonzero(inside)[is_int[rows[inside]]]
        for at, key in zip(ints.tolist(), by_row[rows[ints]].tolist(), strict=True):
            out[at] = key
        if self._others and ints.size < rows.size:
            others = {row: key for key, row in self._others.items()}
            for at in np.setdiff1d(np.arange(rows.size), ints).tolist():
                out[at] = others.get(int(rows[at]))
        return out

    def _row_ids(self) -> list[Hashable]:
        """Every id, in row order."""
        ids: list[Hashable] = [None] * len(self)
        keys, rows = self._ints.items()
        for key, row in zip(keys.tolist(), rows.tolist(), strict=True):
            ids[row] = key
        for key, row in self._others.items():
            ids[row] = key
        return ids

    def state_dict(self) -> dict:
        """The ids in row order (enough to rebuild an unbounded map); with a capacity, also
        when each row was last seen, the clock and the evictions so far."""
        if self.capacity is None:
            return {"ids": self._row_ids(), "evictions": self.evictions}
        n = len(self._ids)
        return {"ids": list(self._ids), "last_seen": self._last_seen[:n].copy(),
                "clock": self.clock, "evictions": self.evictions}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. The capacity stays this map's own: a map restored with
        more ids than its capacity keeps them (no new rows) and evicts as new ids come. A
        state without recency (an unbounded map's, or an old one) restores every row as seen
        at time zero."""
        ids = list(state["ids"])
        split = _Split(ids)
        self._ints = IntMap()
        self._ints.put(split.ints, split.positions(len(ids)).astype(np.int64))
        self._others = dict(zip(split.others, split.other_at.tolist(), strict=True))
        self.evictions = int(state.get("evictions", 0))
        self.last_evicted = _NONE
        self._reset_capacity_state()
        if self.capacity is not None and "last_seen" in state:
            self._last_seen = np.asarray(state["last_seen"], dtype=np.int64).copy()
            self.clock = int(state["clock"])
