"""The served model: an immutable, read-only version of the learner's model that a server
answers with.

A :class:`ServedModel` holds its own copy of every table row it knows (user and video rows
of each embedding table and counted buffer), the dense weights, each video's last seen
duration bucket, and its own id -> row maps (plain dicts: the original ids, as the learner
saw them, ``7`` and ``"7"`` distinct). It scores through the same backbone class's torch
``forward`` as the learner trains, under ``no_grad``, so a score equals the learner's for
the same rows and features (parity by construction, any backbone).

Unknown users and videos score on a zero row (every table and buffer zero: no bias, no
counts), the last row of each table; scoring never adds a row or changes any state (the
learner's ``predict_many`` adds rows: it is not called).

Default features per pair are :meth:`OnlineLearner.predict_many`'s: hour ``hour`` (0 unless
the caller passes the request's hour), the video's last seen duration bucket (0 for an
unknown video), no tab. Explicit ``feats`` override them.

>>> from learner.core.batch import Events
>>> from learner.core.trainer import LearnerSettings, OnlineLearner
>>> learner = OnlineLearner(LearnerSettings(dim=4))
>>> _ = learner.learn_many(Events([1], [2], np.array([9000]), np.array([9000]),
...                                np.array([0]), np.array([np.nan], np.float32)))
>>> served = ServedModel.from_learner(learner, version=1, newest_event_ms=9000)
>>> served.known_users([1, 5]).tolist(), served.known_videos([2]).tolist()
([True, False], [True])
>>> bool(np.allclose(served.score([1], [2]), learner.predict_many([1], [2]), atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np
import torch

from learner.core.backbones import make_backbone
from learner.core.backbones.base import Backbone

if TYPE_CHECKING:
    from learner.core.trainer import OnlineLearner

#: The two sides of the model: users and videos ("item" in the backbones' words).
SIDES = ("user", "item")


@dataclass(frozen=True)
class Layout:
    """What a model's rows and dense weights are: the backbone, its size, and the name and
    width of every per-row table (embedding tables, then counted buffers) of each side, and
    the name and shape of every dense tensor (parameters and persistent buffers).

    >>> Layout.of(make_backbone("wide", 0), "wide", 0).user
    (('user_bias', 1), ('user_counts', 2))
    """

    model: str
    dim: int
    feature_sizes: tuple[int, ...]
    user: tuple[tuple[str, int], ...]
    item: tuple[tuple[str, int], ...]
    dense: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, backbone: Backbone, model: str, dim: int) -> Layout:
        """The layout of ``backbone`` (built as ``make_backbone(model, dim)``)."""
        side = {kind: tuple((name, int(_row_tensor(backbone, name).shape[1]))
                            for name in (*tables, *buffers))
                for kind, tables, buffers in (
                    ("user", backbone.user_tables, backbone.user_buffers),
                    ("item", backbone.item_tables, backbone.item_buffers))}
        rows = {f"{name}.weight" for name in (*backbone.user_tables, *backbone.item_tables)}
        rows |= {*backbone.user_buffers, *backbone.item_buffers}
        dense = tuple((key, tuple(value.shape)) for key, value in backbone.state_dict().items()
                      if key not in rows)
        return cls(model, dim, tuple(getattr(backbone, "feature_sizes", ())) or _default_sizes(),
                   side["user"], side["item"], dense)

    def width(self, side: str) -> int:
        """Floats in one row of ``side`` ("user" or "item"), all its tables together."""
        return sum(w for _, w in getattr(self, side))

    def as_dict(self) -> dict:
        """A JSON-ready form (:meth:`from_dict` reads it back)."""
        return {"model": self.model, "dim": self.dim, "feature_sizes": list(self.feature_sizes),
                "user": [list(t) for t in self.user], "item": [list(t) for t in self.item],
                "dense": [[name, list(shape)] for name, shape in self.dense]}

    @classmethod
    def from_dict(cls, data: Mapping) -> Layout:
        return cls(str(data["model"]), int(data["dim"]), tuple(data["feature_sizes"]),
                   tuple((str(n), int(w)) for n, w in data["user"]),
                   tuple((str(n), int(w)) for n, w in data["item"]),
                   tuple((str(n), tuple(int(s) for s in shape)) for n, shape in data["dense"]))


def _default_sizes() -> tuple[int, ...]:
    from learner.core.features import FEATURE_SIZES

    return FEATURE_SIZES


def _row_tensor(backbone: Backbone, name: str) -> torch.Tensor:
    """The (rows, width) tensor of a table (its weight) or counted buffer ``name``."""
    value = getattr(backbone, name)
    return value.weight if isinstance(value, torch.nn.Embedding) else value


class ServedModel:
    """An immutable, read-only model version a server answers with.

    Build one with :meth:`from_learner` (in the learner's process) or :meth:`from_rows`
    (a replica, from the rows it read). Safe to score from any number of threads.
    """

    version: int  # monotonic across learner restarts
    newest_event_ms: int  # the newest trained event's timestamp (ms) in this version

    def __init__(self, layout: Layout, version: int, newest_event_ms: int, backbone: Backbone,
                 users: dict[Hashable, int], videos: dict[Hashable, int],
                 durations: np.ndarray) -> None:
        """Prefer :meth:`from_rows`: ``backbone``'s tables hold one row per id of ``users`` /
        ``videos`` (at its value) and a zero row after them; ``durations`` the videos' last
        duration buckets, the same way."""
        self.layout = layout
        self.version = int(version)
        self.newest_event_ms = int(newest_event_ms)
        self._backbone = backbone.eval()
        self._users, self._videos = users, videos
        self._durations = durations
        # the zero row of each side: the last (a replica's arrays may hold free rows too)
        self._zero = {side: int(_row_tensor(backbone, getattr(layout, side)[0][0]).shape[0]) - 1
                      for side in SIDES}

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, layout: Layout, version: int, newest_event_ms: int,
                  users: dict[Hashable, int], user_rows: np.ndarray,
                  videos: dict[Hashable, int], video_rows: np.ndarray,
                  durations: np.ndarray, dense: Mapping[str, np.ndarray]) -> ServedModel:
        """A model from its rows: ``user_rows`` (n_users, layout.width("user")) float32, the
        tables of the layout side by side, row ``users[id]`` for each id; the same for the
        videos, with ``durations`` (n_videos,); ``dense`` every dense tensor of the layout.
        The arrays are copied; the dicts are kept: the caller must not change them."""
        backbone = make_backbone(layout.model, layout.dim, layout.feature_sizes)
        for side, rows in (("user", user_rows), ("item", video_rows)):
            padded = np.concatenate([rows.reshape(-1, layout.width(side)),
                                     np.zeros((1, layout.width(side)), np.float32)])
            start = 0
            for name, width in getattr(layout, side):
                part = torch.from_numpy(np.ascontiguousarray(padded[:, start:start + width]))
                start += width
                value = getattr(backbone, name)
                if isinstance(value, torch.nn.Embedding):
                    value.weight = torch.nn.Parameter(part, requires_grad=False)
                    value.num_embeddings = part.shape[0]
                else:
                    setattr(backbone, name, part)
        state = backbone.state_dict()
        for name, shape in layout.dense:
            state[name] = torch.from_numpy(np.asarray(dense[name], np.float32).reshape(shape))
        backbone.load_state_dict(state)
        backbone.requires_grad_(False)
        return cls(layout, version, newest_event_ms, backbone, users, videos,
                   np.concatenate([np.asarray(durations, np.int64), [0]]))

    @classmethod
    def from_learner(cls, learner: OnlineLearner, version: int,
                     newest_event_ms: int) -> ServedModel:
        """A copy of ``learner``'s model now, as version ``version``."""
        learner._settle()
        backbone = learner.model
        layout = Layout.of(backbone, learner.settings.model, learner.settings.dim)
        users, videos = (learner_ids(m) for m in (learner.users, learner.videos))
        rows = {side: side_rows(backbone, layout, side, np.arange(len(ids)))
                for side, ids in (("user", users), ("item", videos))}
        dense = {k: v.detach().cpu().numpy().copy() for k, v in backbone.state_dict().items()
                 if k in dict(layout.dense)}
        return cls.from_rows(
            layout, version, newest_event_ms,
            {key: row for row, key in enumerate(users) if key is not None}, rows["user"],
            {key: row for row, key in enumerate(videos) if key is not None}, rows["item"],
            learner._item_duration[: len(videos)].copy(), dense)

    # -- answering ------------------------------------------------------------------------
    def score(self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable],
              feats: np.ndarray | None = None, *, hour: int = 0) -> np.ndarray:
        """Like probabilities (float32) of (user, video) pairs; unknown ids score on a zero
        row. ``feats`` (n, 3) int64 (hour, duration bucket, tab) per pair; by default
        ``hour``, each video's last seen duration bucket, no tab."""
        if len(user_ids) != len(video_ids):
            raise ValueError(f"{len(user_ids)} user ids for {len(video_ids)} video ids")
        users = self._rows(self._users, user_ids, "user")
        videos = self._rows(self._videos, video_ids, "item")
        if feats is None:
            feats = np.stack([np.full(videos.size, hour, np.int64), self._durations[videos],
                              np.zeros(videos.size, np.int64)], axis=1)
        with torch.no_grad():
            logits = self._backbone(torch.from_numpy(users), torch.from_numpy(videos),
                                    torch.as_tensor(feats, dtype=torch.int64))
            return torch.sigmoid(logits).numpy()

    def known_users(self, user_ids: Sequence[Hashable]) -> np.ndarray:
        """Whether each user id has a row in this version."""
        return _find(self._users, user_ids) >= 0

    def known_videos(self, video_ids: Sequence[Hashable]) -> np.ndarray:
        """Whether each video id has a row in this version."""
        return _find(self._videos, video_ids) >= 0

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def n_videos(self) -> int:
        return len(self._videos)

    def _rows(self, ids: dict[Hashable, int], keys: Sequence[Hashable], side: str,
              ) -> np.ndarray:
        found = _find(ids, keys)
        found[found < 0] = self._zero[side]
        return found

    def __repr__(self) -> str:
        return (f"ServedModel(version={self.version}, model={self.layout.model!r}, "
                f"users={self.n_users}, videos={self.n_videos}, "
                f"newest_event_ms={self.newest_event_ms})")


def _find(ids: dict[Hashable, int], keys: Sequence[Hashable]) -> np.ndarray:
    """Rows of ``keys`` in ``ids``, -1 for unknown ones (a C-level map over the keys)."""
    values = getattr(keys, "values", keys)  # the core's typed id columns hold a list
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return np.fromiter(map(ids.get, values, repeat(-1, len(values))), np.int64, len(values))


def learner_ids(idmap) -> list[Hashable]:  # noqa: ANN001 - learner.core.ids.idmap.IdMap
    """Every id of a learner's id map, in row order (None for a row no id holds)."""
    return list(idmap.state_dict()["ids"])


def side_rows(backbone: Backbone, layout: Layout, side: str, rows: np.ndarray) -> np.ndarray:
    """(len(rows), width) float32: the given rows of every table of ``side``, side by side
    in the layout's order."""
    index = torch.as_tensor(rows, dtype=torch.int64)
    parts = [_row_tensor(backbone, name).detach()[index.to(_row_tensor(backbone, name).device)]
             .cpu().numpy().astype(np.float32, copy=False).reshape(len(rows), width)
             for name, width in getattr(layout, side)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(rows), 0), np.float32)
