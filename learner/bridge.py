"""From the Kafka side's decoded batches to the model core's: no copy, no loop over events.

:func:`stream.event.decode_batch` gives a :class:`~stream.event.EventBatch` whose id columns
are the scanner's typed lists where it read them (``stream.scan.IntIds``: every id an
integer, with an int64 array; ``StrIds``: every id a string). :func:`to_events` hands the same
columns to the core as :class:`~learner.core.batch.Events`, the typed id columns wrapped in the
core's own (:mod:`learner.core.ids.columns`), so the id maps keep their fast paths. Used by the
service, the benchmarks and the offline evaluation (which decodes the shipped logs the way the
daemon decodes Kafka records).

>>> from stream.event import decode_batch
>>> raw = b'{"user_id": 1, "video_id": 2, "play_ms": 5, "duration_ms": 10, "ts_ms": 0}'
>>> events = to_events(decode_batch([raw]))
>>> type(events.user_id).__name__, list(events.user_id), len(events)
('IntIds', [1], 1)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from learner.core.batch import Events
from learner.core.ids import columns
from stream import scan
from stream.event import EventBatch


def to_ids(ids: Sequence[Hashable]) -> Sequence[Hashable]:
    """The core's typed column for the scanner's typed list ``ids`` (same list, same array),
    or ``ids`` itself."""
    if type(ids) is scan.IntIds:
        return columns.IntIds(ids.array, ids)
    if type(ids) is scan.StrIds:
        return columns.StrIds(ids)
    return ids


def to_events(batch: EventBatch) -> Events:
    """The valid events of ``batch`` as the core's batch; its columns are not copied."""
    return Events(to_ids(batch.user_id), to_ids(batch.video_id), batch.play_ms,
                  batch.duration_ms, batch.ts_ms, batch.explicit, batch.tab)
