"""Columns of ids that say what they hold, so that an id map need not look at each id.

A decoder that already knows (the Kafka side's scanner reads integer ids into an int64 array)
hands its column over in one of these, without a copy: :class:`IntIds` (every id an integer,
with the int64 ``array``) or :class:`StrIds` (every id a string). Any other sequence of ids
is taken as it is, each id's type checked.

>>> ids = IntIds(np.array([7, 9]))
>>> list(ids), ids.array.dtype.name, len(StrIds(["a", "b"]))
([7, 9], 'int64', 2)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np


class _Column(Sequence[Hashable]):
    """The ids, ``values`` (a sequence, not copied), as a sequence."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> Any:
        return self.values[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


class IntIds(_Column):
    """Integer ids, also as an int64 ``array`` (the same ids; not to be changed once made).
    ``values`` default to the array's as Python ints."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray, values: Sequence[int] | None = None) -> None:
        super().__init__(array.tolist() if values is None else values)
        self.array = array


class StrIds(_Column):
    """String ids only."""

    __slots__ = ()
