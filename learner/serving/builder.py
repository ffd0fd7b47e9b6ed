"""A model rebuilt from the model topic's records: staged until their version is complete.

:class:`ModelBuilder` takes the topic's records in offset order (:meth:`ModelBuilder.add`).
Rows, tombstones and dense tensors are staged (the latest value of each key); the record
that marks a version complete applies everything staged to the builder's tables at once and
makes that version current. So a version is served whole or not at all, and a version never
replaces a newer one: a completion record of a version not above the current one is
refused (counted, its staged records dropped).

A compacted topic read from its start rebuilds the same way, with one more rule. Compaction
keeps the latest value of each key and only removes records, and every record of a version
precedes its completion record; but the cleaner may have removed, before a completion record
it kept, values that a later version wrote again further on. The tables at that completion
record then lack those keys (they never hold a wrong value): a version is served only when
its tables are whole, every dense tensor there and as many users and videos as its learner
held (the completion record says how many); otherwise its records stay applied and the next
completion record, after the newer values, makes a whole version. Records after the last
completion record (a version a learner was writing when it stopped) stay staged until a
completion record comes; a learner that starts publishes its whole model, with tombstones
for every id of the topic it does not hold, so what such a version left behind is
overwritten or removed.

>>> from learner.serving.wire import encode_rows
>>> builder = ModelBuilder()
>>> keys, values = encode_rows("u", [7], np.ones((1, 2), np.float32), 1)
>>> builder.add(keys[0], values[0]), builder.current() is None
(False, True)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from typing import Any

import numpy as np

from learner.serving.model import Layout, ServedModel
from learner.serving.wire import (
    DENSE,
    HEADER_BYTES,
    SIDE_OF_PREFIX,
    VERSION_KEY,
    WireError,
    decode_dense,
    decode_key,
    decode_rows,
    decode_version,
)

logger = logging.getLogger(__name__)


class _Side:
    """The rows of one side (users or videos): id -> row, values, ``aux``, free rows."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.ids: dict[Hashable, int] = {}
        self.values = np.zeros((0, width), np.float32)
        self.aux = np.zeros(0, np.int64)
        self.used = 0  # rows handed out so far (some maybe free again)
        self.free: list[int] = []

    def remove(self, keys: list[Hashable]) -> None:
        for key in keys:
            row = self.ids.pop(key, None)
            if row is not None:
                self.free.append(row)

    def put(self, keys: list[Hashable], values: np.ndarray, aux: np.ndarray) -> None:
        rows = np.fromiter((self._row(key) for key in keys), np.int64, len(keys))
        if self.used > self.values.shape[0]:
            grown = max(self.used, 2 * self.values.shape[0], 1024)
            self.values = _padded(self.values, grown)
            self.aux = _padded(self.aux, grown)
        self.values[rows] = values
        self.aux[rows] = aux

    def _row(self, key: Hashable) -> int:
        row = self.ids.get(key)
        if row is None:
            if self.free:
                row = self.free.pop()
            else:
                row, self.used = self.used, self.used + 1
            self.ids[key] = row
        return row


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), array.dtype)
    out[: array.shape[0]] = array
    return out


class ModelBuilder:
    """The model of a model topic, version by version (see the module's docstring).

    Not thread-safe: one thread adds; :meth:`current` hands out immutable
    :class:`ServedModel` versions that any thread may use.
    """

    def __init__(self) -> None:
        self.layout: Layout | None = None  # of the records applied
        self.version = 0  # the last version served whole (0: none yet)
        self.info: dict[str, Any] = {}  # its completion record
        self.applied = 0  # the last version whose records were applied
        self.incomplete = 0  # completion records that did not make a whole version (yet)
        self.staged: dict[bytes, bytes | None] = {}
        self.errors: Counter[str] = Counter()  # records refused, by cause
        self._sides: dict[str, _Side] = {}
        self._dense: dict[str, bytes] = {}
        self._model: ServedModel | None = None
        self._served: Layout | None = None  # the layout of the version served
        self._built = 0  # the version self._model holds

    def add(self, key: bytes | None, value: bytes | None) -> bool:
        """Take one record of the topic, in offset order; True when it completed a version."""
        if key == VERSION_KEY:
            return self._complete(value)
        if key is None:
            self.errors["bad_key"] += 1
            return False
        self.staged[key] = value
        return False

    def current(self) -> ServedModel | None:
        """The last complete version as a :class:`ServedModel` (built once per version), or
        None before the first."""
        if self._served is None:
            return None
        if self._built != self.version:
            self._model = self._build()
            self._built = self.version
        return self._model

    def newest_version(self) -> int:
        """The newest version any record read so far belongs to, complete or not."""
        staged = [int.from_bytes(v[1:9], "little", signed=True) for v in self.staged.values()
                  if v is not None and len(v) >= HEADER_BYTES]
        return max([self.applied, *staged])

    def keys(self) -> set[bytes]:
        """The keys the topic holds a value for, as read so far (complete or staged)."""
        from learner.serving.wire import encode_key

        live = {encode_key(prefix, key) for prefix, side in SIDE_OF_PREFIX.items()
                for key in self._sides.get(side, _Side(0)).ids}
        live |= {f"{DENSE}:{name}".encode() for name in self._dense}
        for key, value in self.staged.items():
            if value is None:
                live.discard(key)
            else:
                live.add(key)
        return live

    # -- a version completes --------------------------------------------------------------
    def _complete(self, value: bytes | None) -> bool:
        try:
            info = decode_version(value)
            layout = Layout.from_dict(info["layout"])
        except (WireError, KeyError, TypeError, ValueError) as exc:
            self.errors["bad_version_record"] += 1
            logger.error("model topic: unreadable version record (%s); its rows stay staged",
                         exc)
            return False
        version = int(info["version"])
        if version <= self.applied:
            self.errors["stale_version"] += 1
            logger.error("model topic: version %d completes after version %d: refused, with "
                         "the %d records staged (is a second learner publishing to this "
                         "topic?)", version, self.applied, len(self.staged))
            self.staged.clear()
            return False
        if layout != self.layout:  # the first version, or a model of another layout
            if self.layout is not None:
                logger.warning("model topic: version %d is a %s model of another layout: "
                               "rebuilt from its own records", version, layout.model)
            self._sides = {side: _Side(layout.width(side)) for side in SIDE_OF_PREFIX.values()}
            self._dense = {}
            self.layout = layout
        self._apply_staged(version)
        self.applied = version
        whole = self._whole(info)
        if whole:
            self.version, self.info, self._served = version, info, layout
        else:
            self.incomplete += 1
            logger.info("model topic: version %d is not whole here yet (a compacted topic "
                        "holds newer values of some of its keys further on): not served",
                        version)
        return whole

    def _apply_staged(self, version: int) -> None:
        """Apply every staged record to the tables and dense tensors."""
        staged, self.staged = self.staged, {}
        by_side: dict[str, tuple[list, list, list]] = {
            side: ([], [], []) for side in SIDE_OF_PREFIX.values()}
        for key, raw in staged.items():
            try:
                prefix, name = decode_key(key)
            except WireError:
                self.errors["bad_key"] += 1
                continue
            if prefix == DENSE:
                if raw is None:
                    self._dense.pop(str(name), None)
                else:
                    self._dense[str(name)] = raw
            elif prefix in SIDE_OF_PREFIX:
                gone, keys, values = by_side[SIDE_OF_PREFIX[prefix]]
                (gone if raw is None else keys).append(name)
                if raw is not None:
                    values.append(raw)
        for side, (gone, keys, values) in by_side.items():
            self._apply(self._sides[side], gone, keys, values, version)

    def _whole(self, info: dict[str, Any]) -> bool:
        """Whether the tables hold the whole of the version ``info`` completes: every dense
        tensor of its layout, as many users and videos as its learner held. Compaction only
        removes records, and only those with a newer value further on, so a version is whole
        or lacks keys; it lacks none when the counts agree."""
        assert self.layout is not None
        if any(name not in self._dense for name, _ in self.layout.dense):
            return False
        return all(count is None or count == len(self._sides[side].ids)
                   for side, count in (("user", info.get("users")),
                                       ("item", info.get("videos"))))

    def _apply(self, side: _Side, gone: list, keys: list, values: list, version: int) -> None:
        side.remove(gone)
        size = HEADER_BYTES + 4 * side.width
        good = [i for i, raw in enumerate(values) if len(raw) == size]
        if len(good) < len(values):
            self.errors["bad_row"] += len(values) - len(good)
            logger.error("model topic: %d row(s) of another size in version %d: skipped",
                         len(values) - len(good), version)
            keys, values = [keys[i] for i in good], [values[i] for i in good]
        if keys:
            rows = decode_rows(values, side.width)
            side.put(keys, rows.values, rows.aux)

    def _build(self) -> ServedModel | None:
        layout = self._served
        if layout != self.layout:  # records of another layout applied since: not this one
            return self._model
        assert layout is not None
        users, videos = self._sides["user"], self._sides["item"]
        dense = {name: decode_dense(self._dense[name], shape) for name, shape in layout.dense}
        return ServedModel.from_rows(
            layout, self.version, int(self.info["newest_event_ms"]),
            dict(users.ids), users.values[: users.used], dict(videos.ids),
            videos.values[: videos.used], videos.aux[: videos.used], dense)

