"""Where the server's model comes from: anything with ``current() -> ServedModel | None``.

The replica that tails the model topic (:class:`learner.serving.replica.Replica`) is one; a
:class:`LatestModel` holds whatever model was last handed to it (the demo's trained learner,
the tests' and the benchmark's). Each request takes :meth:`ModelSource.current` once and
answers from that one object, so an answer never mixes two versions.
"""

from __future__ import annotations

import threading
from typing import Protocol

from learner.serving.model import ServedModel


class ModelSource(Protocol):
    """A source of the model to answer with (thread-safe)."""

    def current(self) -> ServedModel | None:
        """The newest complete model, or None before the first."""
        ...


class LatestModel:
    """The model last :meth:`put` (None before the first); a version never goes backwards.

    >>> LatestModel().current() is None
    True
    """

    def __init__(self, model: ServedModel | None = None) -> None:
        self._model = model
        self._lock = threading.Lock()

    def put(self, model: ServedModel) -> None:
        """Answer with ``model`` from now on, unless the one held has a newer version."""
        with self._lock:
            if self._model is None or model.version >= self._model.version:
                self._model = model

    def current(self) -> ServedModel | None:
        return self._model
