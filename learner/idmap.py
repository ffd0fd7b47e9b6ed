"""Id maps: arbitrary user and video ids (strings or integers) to dense embedding rows.

Rows are handed out in order of first sight, so a table of ``len(idmap)`` rows covers every id
seen so far. Integer and string ids are distinct keys (``7`` is not ``"7"``). The map grows
without bound for now; a capacity with eviction belongs to the memory work that follows.

>>> m = IdMap()
>>> m.lookup(["a", 7, "a"]).tolist(), len(m)
([0, 1, 0], 2)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


class IdMap:
    """Assigns a dense row number to each distinct id, in order of first sight."""

    def __init__(self) -> None:
        self._rows: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def lookup(self, ids: Sequence[Hashable], add: bool = True) -> np.ndarray:
        """Rows of ``ids`` as int64; unknown ids get new rows (``add``) or -1."""
        rows = self._rows
        if add:
            setdefault = rows.setdefault
            return np.fromiter((setdefault(i, len(rows)) for i in ids), np.int64, len(ids))
        return np.fromiter((rows.get(i, -1) for i in ids), np.int64, len(ids))

    def state_dict(self) -> dict[str, list[Hashable]]:
        """The ids in row order: enough to rebuild the map."""
        return {"ids": list(self._rows)}

    def load_state_dict(self, state: dict[str, list[Hashable]]) -> None:
        self._rows = {key: row for row, key in enumerate(state["ids"])}
