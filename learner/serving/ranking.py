"""Answers from one model: a user's top k among candidates, and the scores of pairs.

A user the model knows is ranked by the model's scores. A user it does not know (a zero user
row would rank every candidate by the video's own terms alone: its bias and counts) is ranked
by popularity: the candidates' decayed views in the popular pool, ties (videos the pool has
not seen) by the model's score, those same terms. Every number of one answer comes from the
one :class:`ServedModel` passed in.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from learner.serving.model import ServedModel
from learner.serving.pool import PopularityPool


@dataclass(frozen=True)
class Ranking:
    """The top videos, best first, their model scores, what ordered them (``model`` or
    ``popularity``), and their decayed views where popularity did."""

    video_ids: list[Hashable]
    scores: np.ndarray
    basis: str
    views: np.ndarray | None = None


def top_k(model: ServedModel, user_id: Hashable, candidates: Sequence[Hashable], k: int,
          pool: PopularityPool | None, views: np.ndarray | None = None, hour: int = 0,
          ) -> Ranking:
    """The ``k`` best of ``candidates`` (distinct) for ``user_id`` at ``hour`` (UTC, the
    model's hour feature); ``views``: the candidates' decayed views when the caller has them
    (the pool's own top), else read from ``pool``."""
    n = len(candidates)
    k = min(k, n)
    known = bool(model.known_users([user_id])[0])
    scores = model.score([user_id] * n, candidates, hour=hour)
    if known:
        best = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        best = best[np.argsort(-scores[best], kind="stable")]
        return Ranking(_pick(candidates, best), scores[best], "model")
    if views is None:
        views = pool.weights(candidates) if pool is not None else np.zeros(n)
    best = np.lexsort((-scores, -views))[:k]
    return Ranking(_pick(candidates, best), scores[best], "popularity", views[best])


def distinct(ids: Sequence[Hashable]) -> list[Hashable]:
    """``ids`` without repeats, in order of first appearance (integer 7 and "7" differ).

    >>> distinct(["a", 7, "a", "7"])
    ['a', 7, '7']
    """
    if len(set(map(type, ids))) == 1:  # one kind of id (most often): no (type, id) keys
        return list(dict.fromkeys(ids))
    return [v for _, v in dict.fromkeys((type(v), v) for v in ids)]


def _pick(ids: Sequence[Hashable], rows: np.ndarray) -> list[Hashable]:
    return [ids[i] for i in rows.tolist()]
