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

from stream.errors import ConfigError

_NONE = np.zeros(0, dtype=np.int64)
_NEVER = np.iinfo(np.int64).max


class IdMap:
    """Assigns a dense row number to each distinct id; with a capacity, least recently seen
    ids are evicted and their rows reused."""

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigError(f"id map capacity must be at least 1 (or None), not {capacity}")
        self.capacity = capacity
        self._rows: dict[Hashable, int] = {}
        self._reset_capacity_state()
        self.last_evicted = _NONE  # rows recycled by the last adding lookup (new ids in them)
        self.evictions = 0  # ids evicted so far

    def _reset_capacity_state(self) -> None:
        # Bounded maps only: the id held by each row, and when each row was last seen.
        self._ids: list[Hashable] = list(self._rows) if self.capacity is not None else []
        self._last_seen = np.zeros(len(self._ids), dtype=np.int64)
        self.clock = 0  # lookups that added so far

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def lookup(self, ids: Sequence[Hashable], add: bool = True) -> np.ndarray:
        """Rows of ``ids`` as int64; unknown ids get new rows (``add``) or -1.

        ``add=False`` is a pure query: it neither adds ids nor counts as seeing them.
        With a capacity, raises ConfigError when ``ids`` holds more distinct ids than the
        capacity (they could not all have rows at once).
        """
        rows = self._rows
        # a C-level map: a generator over the ids cost ~0.15 us an id more
        out = np.fromiter(map(rows.get, ids, repeat(-1, len(ids))), np.int64, len(ids))
        if not add:
            return out
        self.last_evicted = _NONE
        missing = np.flatnonzero(out < 0)
        if self.capacity is None:
            if missing.size:  # new rows in order of first appearance
                for key in dict.fromkeys(ids[j] for j in missing.tolist()):
                    rows[key] = len(rows)
                out[missing] = [rows[ids[j]] for j in missing.tolist()]
            return out
        if missing.size:
            self._assign(ids, out, missing)
        self.clock += 1
        self._last_seen[out] = self.clock
        return out

    def _assign(self, ids: Sequence[Hashable], out: np.ndarray, missing: np.ndarray) -> None:
        """Rows for the unknown ids at positions ``missing`` of ``ids``, written into ``out``."""
        fresh: dict[Hashable, int] = dict.fromkeys(ids[j] for j in missing.tolist())
        n_rows, capacity = len(self._ids), self.capacity
        known = np.unique(out[out >= 0])
        if known.size + len(fresh) > capacity:
            raise ConfigError(
                f"id map capacity {capacity} is too small: one lookup holds "
                f"{known.size + len(fresh)} distinct ids; the capacity must be at least the "
                "distinct ids of a batch (at least the batch size)"
            )
        grow = min(len(fresh), max(0, capacity - n_rows))
        new_rows = np.arange(n_rows, n_rows + grow, dtype=np.int64)
        need = len(fresh) - grow
        if need:
            victims = self._victims(known, need)
            new_rows = np.concatenate([new_rows, victims])
            ids_of = self._ids
            for row in victims.tolist():
                del self._rows[ids_of[row]]
            self.last_evicted = victims
            self.evictions += need
        if grow:
            self._ids.extend([None] * grow)
            if n_rows + grow > self._last_seen.size:
                grown = np.zeros(max(n_rows + grow, min(2 * self._last_seen.size, capacity)),
                                 dtype=np.int64)
                grown[: self._last_seen.size] = self._last_seen
                self._last_seen = grown
        for key, row in zip(fresh, new_rows.tolist(), strict=True):
            fresh[key] = row
            self._rows[key] = row
            self._ids[row] = key
        out[missing] = np.fromiter((fresh[ids[j]] for j in missing.tolist()), np.int64,
                                   missing.size)

    def _victims(self, keep: np.ndarray, need: int) -> np.ndarray:
        """The ``need`` least recently seen rows outside ``keep``, oldest first (ties: lowest
        row first among those chosen)."""
        age = self._last_seen[: len(self._ids)].copy()
        age[keep] = _NEVER
        pick = np.argpartition(age, need - 1)[:need] if need < age.size else np.arange(age.size)
        return pick[np.lexsort((pick, age[pick]))].astype(np.int64)

    def state_dict(self) -> dict:
        """The ids in row order (enough to rebuild an unbounded map); with a capacity, also
        when each row was last seen, the clock and the evictions so far."""
        if self.capacity is None:
            return {"ids": list(self._rows), "evictions": self.evictions}
        n = len(self._ids)
        return {"ids": list(self._ids), "last_seen": self._last_seen[:n].copy(),
                "clock": self.clock, "evictions": self.evictions}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. The capacity stays this map's own: a map restored with
        more ids than its capacity keeps them (no new rows) and evicts as new ids come. A
        state without recency (an unbounded map's, or an old one) restores every row as seen
        at time zero."""
        ids = state["ids"]
        self._rows = {key: row for row, key in enumerate(ids)}
        self.evictions = int(state.get("evictions", 0))
        self.last_evicted = _NONE
        self._reset_capacity_state()
        if self.capacity is not None and "last_seen" in state:
            self._last_seen = np.asarray(state["last_seen"], dtype=np.int64).copy()
            self.clock = int(state["clock"])
