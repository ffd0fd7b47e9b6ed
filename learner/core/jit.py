"""The options the core's numba kernels are compiled with, typed for ``njit(**options)``.

Unpacked from a plain dict, the options type as the dict's values (``object``, or ``bool``
for all but one) and match none of ``njit``'s overloads; a :class:`JitOptions` keeps each
option's own type. (``stream.scan`` has its own: the core imports nothing of ``stream``.)

>>> options: JitOptions = {"cache": True, "nogil": True}
>>> sorted(options)
['cache', 'nogil']
"""

from __future__ import annotations

from typing import Literal, TypedDict


class JitOptions(TypedDict, total=False):
    """The ``numba.njit`` keyword arguments the core's kernels use, with numba's types."""

    cache: bool
    nogil: bool
    error_model: Literal["python", "numpy"]
    fastmath: bool | set[str]
