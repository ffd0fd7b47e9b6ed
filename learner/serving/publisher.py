"""The learner's side of the model topic: publish the changed rows as numbered versions.

Every ``--publish-interval-s`` the daemon asks the :class:`Publisher` for a version: on the
daemon's thread it takes a snapshot of what changed since the last version (the rows the
learner's :class:`~learner.core.updates.UpdateLog` recorded, kept as rows only, or the rows a
distributed job's synchronisation wrote; every user table and counted buffer side by side,
the same for videos with their last duration bucket), the dense weights, and tombstones for
ids the bounded id maps evicted. A thread of its own then encodes and produces them
(:mod:`learner.serving.wire`), waits for every acknowledgement, and only then writes the
record that marks the version complete. A version that could not be written whole is never
marked complete: the next one is a whole model.

Versions are numbered on from the topic: at start the publisher reads the topic
(:func:`learner.serving.replica.read_model_topic`), takes the number after every version it
holds (complete or not), and its first version is the whole model, with a tombstone for
every id the topic holds that the learner does not: a version a stopped learner left half
written is overwritten, and servers converge on exactly the learner's model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from learner.core.errors import ConfigError
from learner.core.trainer import OnlineLearner
from learner.core.updates import UpdateLog
from learner.serving.model import Layout, side_rows
from learner.serving.wire import (
    DENSE,
    USER,
    VERSION_KEY,
    VIDEO,
    decode_key,
    encode_dense,
    encode_key,
    encode_rows,
    encode_version,
)
from stream.clients import Producer
from stream.errors import ClientError

logger = logging.getLogger(__name__)

PREFIX_OF_SIDE = {"user": USER, "item": VIDEO}


@dataclass(frozen=True)
class TopicState:
    """What a learner found on the model topic at start."""

    version: int = 0  # the newest version any record holds (complete or not)
    keys: frozenset[bytes] = frozenset()  # the keys the topic holds a value for
    layout: Layout | None = None  # of the last complete version
    newest_event_ms: int = 0  # of the last complete version


@dataclass
class _Snapshot:
    """One version's records, taken on the daemon's thread, written on the publisher's."""

    version: int
    full: bool
    rows: dict[str, tuple[list[Hashable], np.ndarray, np.ndarray | None]]
    gone: list[bytes]  # tombstone keys
    dense: dict[str, np.ndarray]
    newest_event_ms: int
    offsets: dict[int, int]
    counts: tuple[int, int]
    taken: float = field(default_factory=time.time)


@dataclass
class PublishStats:
    """What the publisher did, for metrics and benchmarks."""

    versions: int = 0  # versions complete on the topic
    failed: int = 0  # versions that could not be written whole
    records: int = 0  # rows, tombstones and dense tensors written
    last_version: int = 0
    last_seconds: float = 0.0  # snapshot to completion acknowledged, of the last version
    history: list[tuple[int, float, int]] = field(default_factory=list)  # (version, done, rows)


class Publisher:
    """Publishes a learner's model to the model topic, a version at a time.

    ``track``: log the rows training changes (a learner on its own); a distributed job's
    rank 0 instead hands the rows each synchronisation wrote to :meth:`touch`.
    ``on_version`` is called (on the publisher's thread) with each completed version's
    snapshot time, version and rows written.
    """

    def __init__(self, learner: OnlineLearner, producer: Producer, topic: str,
                 interval_s: float, start: TopicState = TopicState(), track: bool = True,
                 flush_timeout_s: float = 30.0,
                 on_version: Callable[[int, float, int], None] | None = None) -> None:
        self.learner, self.producer, self.topic = learner, producer, topic
        self.interval_s, self.flush_timeout_s = interval_s, flush_timeout_s
        self.layout = Layout.of(learner.model, learner.settings.model, learner.settings.dim)
        if start.layout is not None and start.layout != self.layout:
            raise ConfigError(
                f"model topic {topic} holds a {start.layout.model} model of another layout "
                f"({start.layout.as_dict()}); this learner runs {self.layout.as_dict()}: "
                "publish to another topic (--model-topic) or delete it")
        self.version = start.version
        self.stats = PublishStats(last_version=start.version)
        self.newest_event_ms = 0
        self.on_version = on_version
        self._stale = set(start.keys)  # the topic's keys, until a whole model is written
        self._full = True  # the next version is the whole model
        self._retry_gone: list[bytes] = []
        self._held: dict[str, list[Hashable]] = {"user": [], "item": []}  # id per row sent
        self._dirty = {"user": np.zeros(0, bool), "item": np.zeros(0, bool)}
        self.log: UpdateLog | None = learner.log_updates(bases=False) if track else None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="dwell-publish")
        self._pending: Future | None = None
        self._last = -float("inf")

    # -- what the daemon tells it ----------------------------------------------------------
    def saw(self, ts_ms: np.ndarray) -> None:
        """The learner trained on events of these times (ms)."""
        if len(ts_ms):
            self.newest_event_ms = max(self.newest_event_ms, int(np.max(ts_ms)))

    def touch(self, rows: Mapping[str, np.ndarray]) -> None:
        """These rows changed (per side, "user" and "item")."""
        for side, changed in rows.items():
            changed = np.asarray(changed, np.int64)
            if not changed.size:
                continue
            mask = self._dirty[side]
            if changed.max() >= mask.size:
                grown = np.zeros(max(2 * mask.size, int(changed.max()) + 1), bool)
                grown[: mask.size] = mask
                mask = self._dirty[side] = grown
            mask[changed] = True

    def due(self, now: float | None = None) -> bool:
        """Whether a version is due (the interval passed, the last one written)."""
        now = time.monotonic() if now is None else now
        return (now - self._last >= self.interval_s
                and (self._pending is None or self._pending.done()))

    # -- publishing ------------------------------------------------------------------------
    def publish(self, offsets: Mapping[int, int] | None = None) -> int | None:
        """Take a snapshot of the model (the learner settled: no training in progress) and
        write it as the next version on the publisher's thread; the version, or None when a
        version is still being written or nothing changed."""
        if self._pending is not None and not self._pending.done():
            return None
        if self._pending is not None:
            self._pending.result()  # an unexpected error of the last write surfaces here
        if self.learner.training:
            raise RuntimeError("publish() with a micro-batch training: settle it first")
        self._last = time.monotonic()
        if self.log is not None:
            self.touch(self.log.rows())
            self.log.reset()
        full = self._full
        if not full and not any(m.any() for m in self._dirty.values()):
            return None
        self.version += 1
        snapshot = self._snapshot(self.version, full, dict(offsets or {}))
        self._full = False
        self._pending = self._worker.submit(self._write, snapshot)
        return snapshot.version

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the version being written; True if it was written whole."""
        if self._pending is None:
            return True
        try:
            return bool(self._pending.result(timeout))
        except TimeoutError:
            return False

    def close(self, offsets: Mapping[int, int] | None = None) -> None:
        """Publish what changed since the last version, wait for it, stop the thread."""
        self.wait(self.flush_timeout_s)
        try:
            self.publish(offsets)
            self.wait(self.flush_timeout_s)
        finally:
            self._worker.shutdown(wait=True)
            self.producer.close(self.flush_timeout_s)

    # -- the daemon's thread: what goes in a version ---------------------------------------
    def _snapshot(self, version: int, full: bool, offsets: dict[int, int]) -> _Snapshot:
        learner = self.learner
        rows: dict[str, tuple[list[Hashable], np.ndarray, np.ndarray | None]] = {}
        gone: list[bytes] = []
        for side, idmap in (("user", learner.users), ("item", learner.videos)):
            n = len(idmap)
            if full:
                at = np.arange(n, dtype=np.int64)
            else:
                at = np.flatnonzero(self._dirty[side][:n]).astype(np.int64)
            self._dirty[side][:] = False
            ids = idmap.ids_at(at)
            if idmap.capacity is not None:
                gone += self._evicted(side, idmap, at, ids)
            keep = np.array([key is not None for key in ids], bool)
            at = at[keep]
            ids = [key for key in ids if key is not None]
            aux = learner._item_duration[at].copy() if side == "item" else None
            rows[side] = (ids, side_rows(learner.model, self.layout, side, at), aux)
        if full and (self._stale or self._retry_gone):  # what the topic holds, the learner not
            held = {encode_key(PREFIX_OF_SIDE[side], key) for side in rows
                    for key in rows[side][0]}
            held |= {f"{DENSE}:{name}".encode() for name, _ in self.layout.dense}
            gone = sorted((self._stale | set(self._retry_gone) | set(gone)) - held)
        state = learner.model.state_dict()
        dense = {name: state[name].detach().cpu().numpy().copy() for name, _ in self.layout.dense}
        return _Snapshot(version, full, rows, gone, dense, self.newest_event_ms, offsets,
                         (len(learner.users), len(learner.videos)))

    def _evicted(self, side: str, idmap, at: np.ndarray, ids: list[Hashable]) -> list[bytes]:  # noqa: ANN001
        """Tombstones for the ids last sent in rows ``at`` that now hold other ids and that
        the map no longer holds (evicted); remembers what each row holds now."""
        held = self._held[side]
        if at.size and int(at.max()) >= len(held):
            held.extend([None] * (int(at.max()) + 1 - len(held)))
        gone = []
        for row, key in zip(at.tolist(), ids, strict=True):
            old = held[row]
            if old is not None and old != key and old not in idmap:
                gone.append(encode_key(PREFIX_OF_SIDE[side], old))
            held[row] = key
        return gone

    # -- the publisher's thread: writing a version -----------------------------------------
    def _write(self, snap: _Snapshot) -> bool:
        errors: list[ClientError] = []

        def delivered(error: ClientError | None) -> None:
            if error is not None:
                errors.append(error)

        sent = 0
        try:
            for key in snap.gone:
                self.producer.produce(self.topic, None, key, on_delivery=delivered)
            for side, (ids, values, aux) in snap.rows.items():
                keys, raw = encode_rows(PREFIX_OF_SIDE[side], ids, values, snap.version, aux)
                for key, value in zip(keys, raw, strict=True):
                    self.producer.produce(self.topic, value, key, on_delivery=delivered)
            for name, tensor in snap.dense.items():
                key, value = encode_dense(name, tensor, snap.version)
                self.producer.produce(self.topic, value, key, on_delivery=delivered)
            sent = len(snap.gone) + sum(len(r[0]) for r in snap.rows.values()) + len(snap.dense)
            left = self.producer.flush(self.flush_timeout_s)
            if not left and not errors:
                self.producer.produce(self.topic, encode_version(
                    snap.version, self.layout.as_dict(), snap.newest_event_ms, snap.offsets,
                    *snap.counts, snap.full, int(time.time() * 1000)), VERSION_KEY,
                    on_delivery=delivered)
                left = self.producer.flush(self.flush_timeout_s)
        except ClientError as exc:
            errors.append(exc)
            left = 0
        if left or errors:
            self._failed(snap, f"{left} record(s) unacknowledged" if left else repr(errors[0]))
            return False
        if snap.full:
            self._stale.clear()
            self._retry_gone = []
        seconds = time.time() - snap.taken
        stats = self.stats
        stats.versions += 1
        stats.records += sent + 1
        stats.last_version, stats.last_seconds = snap.version, seconds
        rows = sum(len(r[0]) for r in snap.rows.values())
        logger.debug("model version %d written: %d rows, %d tombstones in %.3f s",
                     snap.version, rows, len(snap.gone), seconds)
        if self.on_version is not None:
            self.on_version(snap.version, snap.taken, rows)
        return True

    def _failed(self, snap: _Snapshot, why: str) -> None:
        self.stats.failed += 1
        self._full = True  # the next version rewrites the whole model
        self._retry_gone = [key for key in snap.gone
                            if decode_key(key)[0] in PREFIX_OF_SIDE.values()]
        logger.error("model version %d not written whole (%s): not marked complete; the next "
                     "version is the whole model", snap.version, why)


__all__ = ["PREFIX_OF_SIDE", "PublishStats", "Publisher", "TopicState"]
