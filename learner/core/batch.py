"""The model core's batch of events: columns, nothing of the wire they came from.

:class:`EventColumns` is what :meth:`~learner.core.trainer.OnlineLearner.learn_many` reads
(any object with these columns will do); :class:`Events` is the core's own. The service turns
a decoded Kafka batch into one without copying the columns (``learner.bridge``); an id column
may say what it holds (:mod:`learner.core.ids.columns`) so that the id maps need not look.

>>> import numpy as np
>>> batch = Events(["u"], [7], np.array([5]), np.array([10]), np.array([0]),
...                np.array([np.nan], np.float32))
>>> len(batch)
1
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class EventColumns(Protocol):
    """The columns of a micro-batch of valid events, one row an event."""

    @property
    def user_id(self) -> Sequence[Hashable]: ...
    @property
    def video_id(self) -> Sequence[Hashable]: ...
    @property
    def play_ms(self) -> np.ndarray: ...  # int64
    @property
    def duration_ms(self) -> np.ndarray: ...  # int64
    @property
    def ts_ms(self) -> np.ndarray: ...  # int64, event time in Unix ms
    @property
    def explicit(self) -> np.ndarray: ...  # float32: 1 like, 0 dislike, NaN none

    def __len__(self) -> int: ...

    # optional: ``tab`` (int64, the app surface, NO_TAB for none), read where present


@dataclass(slots=True)
class Events:
    """A micro-batch of valid events as columns (:class:`EventColumns`)."""

    user_id: Sequence[Hashable]
    video_id: Sequence[Hashable]
    play_ms: np.ndarray
    duration_ms: np.ndarray
    ts_ms: np.ndarray
    explicit: np.ndarray
    tab: np.ndarray | None = None  # int64, the app surface (learner.core.features); None

    def __len__(self) -> int:
        return len(self.user_id)
