"""kafka-python's consumer, its records read from their batches by a compiled scan.

kafka-python reads each record of a fetch in pure Python: seven varints, two slices, a
record object, then a ``ConsumerRecord``: ~8 us a record here, most of a consumer's time at
its ceiling. :func:`install` gives a consumer's fetcher :class:`FastPartitionRecords`,
which scans each record batch (message format v2, any compression) at once with
:func:`scan_records` (numba) and builds the ``ConsumerRecord`` tuples from its columns.
What it yields is what kafka-python's own reader yields, record for record (the tests
compare them on keys, null values, headers, compressed, control and transactional batches).
Draining the shipped log ten times over (418,280 records) in a ``FetchProcess``, the child
spent 4.2 us of CPU a record with it against 7.0 without.

It is used only where kafka-python's reader is plain to follow: no deserializers, isolation
level ``read_uncommitted`` (aborted transactions are then returned, as kafka-python
returns them), and a fetch of v2 batches only. Anything else (old message formats) goes to
kafka-python's own reader, whole fetch by whole fetch. A kafka-python whose fetcher is not
laid out as this module expects (:func:`install` checks) keeps its own reader, with a
warning.

>>> scan_records(np.frombuffer(bytes([16, 0, 2, 2, 2, 0x61, 2, 0x62, 0]), np.uint8), 0, 1)[1]
9
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords
from numba import njit

logger = logging.getLogger(__name__)

#: Columns of :func:`scan_records`' table, one row a record.
SIZE, TS_DELTA, OFFSET_DELTA, KEY_AT, KEY_LEN, VALUE_AT, VALUE_LEN, HEADERS_AT, HEADERS = range(9)
_OK, _SHORT, _BAD_SIZE, _BAD_HEADERS = range(4)
_PROBLEMS = {_SHORT: "the batch ends inside a record",
             _BAD_SIZE: "a record's size does not match its fields",
             _BAD_HEADERS: "a negative number of headers or header key size"}
_READ_UNCOMMITTED = 0  # kafka.protocol's IsolationLevel.READ_UNCOMMITTED
_MAGIC_AT = MemoryRecords.MAGIC_OFFSET
_new_record = partial(tuple.__new__, ConsumerRecord)  # without the namedtuple's own __new__


@njit(cache=True, nogil=True)
def _varint(buf, pos, end):  # pragma: no cover - compiled
    """The zig-zag varint at ``buf[pos]`` and the position after it; pos -1 past ``end``."""
    result, shift = np.int64(0), 0
    while pos < end and pos >= 0 and shift < 64:
        b = np.int64(buf[pos])
        result |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    return np.int64(0), -1


@njit(cache=True, nogil=True)
def scan_records(buf, pos, count):  # pragma: no cover - compiled
    """Fields of the ``count`` records at ``buf[pos:]`` (a batch's records, uncompressed).

    Returns ``(table, end, problem)``: one row per record, columns :data:`SIZE` ..
    :data:`HEADERS` (a null key or value has length -1), the position after the last
    record, and 0; or the rows read before a bad record, where it starts, and the problem.
    """
    table = np.empty((count, 9), np.int64)
    end = buf.shape[0]
    for i in range(count):
        first = pos
        # a read past the end gives (0, -1), and every read from -1 gives (0, -1) again: a
        # length of 0 keeps the position at -1, so one check after the reads covers them all
        size, pos = _varint(buf, pos, end)
        start = pos  # the size counts the bytes after it
        _attributes, pos = _varint(buf, pos, end)
        ts_delta, pos = _varint(buf, pos, end)
        offset_delta, pos = _varint(buf, pos, end)
        key_len, pos = _varint(buf, pos, end)
        key_len = max(key_len, -1)  # any negative length is a null key
        key_at = pos
        value_len, pos = _varint(buf, pos + max(key_len, 0), end)
        value_len = max(value_len, -1)
        value_at = pos
        headers, pos = _varint(buf, pos + max(value_len, 0), end)
        if pos < 0:
            return table[:i], first, _SHORT
        if headers < 0:
            return table[:i], first, _BAD_HEADERS
        headers_at = pos
        for _ in range(headers):
            name_len, pos = _varint(buf, pos, end)
            if name_len < 0:
                return table[:i], first, _BAD_HEADERS
            header_len, pos = _varint(buf, pos + name_len, end)
            if pos < 0:  # not on: a hostile count would spin here
                return table[:i], first, _SHORT
            pos += max(header_len, 0)
        if pos > end:
            return table[:i], first, _SHORT
        if pos - start != size:
            return table[:i], first, _BAD_SIZE
        row = table[i]
        row[SIZE], row[TS_DELTA], row[OFFSET_DELTA] = size, ts_delta, offset_delta
        row[KEY_AT], row[KEY_LEN] = key_at, key_len
        row[VALUE_AT], row[VALUE_LEN] = value_at, value_len
        row[HEADERS_AT], row[HEADERS] = headers_at, headers
    return table, pos, _OK


def _headers(data: bytes, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    """The ``count`` headers at ``data[pos:]`` (their sizes checked by the scan)."""
    out = []
    buf = np.frombuffer(data, np.uint8)
    for _ in range(count):
        name_len, pos = _varint(buf, pos, len(data))
        name = data[pos:pos + name_len].decode("utf-8")
        value_len, pos = _varint(buf, pos + name_len, len(data))
        out.append((name, data[pos:pos + value_len] if value_len >= 0 else None))
        pos += max(value_len, 0)
    return out


def _v2_only(records: MemoryRecords) -> bool:
    """Whether every batch of a fetch is in message format v2 (read from a copy of its
    position: ``records`` is not moved)."""
    probe = MemoryRecords(records._buffer)
    batch = probe._next_slice
    while batch is not None:
        if len(batch) <= _MAGIC_AT or batch[_MAGIC_AT] < 2:
            return False
        probe._cache_next()
        batch = probe._next_slice
    return True


class FastPartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's records of one partition's fetch, read by :func:`scan_records`."""

    def _unpack_records(self, tp: Any, records: MemoryRecords, key_deserializer: Any,
                        value_deserializer: Any) -> Any:
        if (key_deserializer is not None or value_deserializer is not None
                or self.isolation_level != _READ_UNCOMMITTED or not _v2_only(records)):
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        try:
            batch = records.next_batch()
            last = None
            while batch is not None:
                last = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset "
                        f"{batch.base_offset} failed crc check")
                self.leader_epoch = batch.leader_epoch
                if batch.is_control_batch:  # not returned
                    self.next_fetch_offset = batch.next_offset
                else:
                    yield from self._batch_records(tp, batch)
                batch = records.next_batch()
            if last is not None:
                # v2 keeps a batch's last offset when compaction removed its last record
                self.next_fetch_offset = last.next_offset
            self.drain()
        except StopIteration:  # as kafka-python: a generator must not end on one
            raise RuntimeError("StopIteration raised unpacking messageset") from None

    def _batch_records(self, tp: Any, batch: DefaultRecordBatch) -> Any:
        iter(batch)  # uncompressed in place
        data = bytes(batch._buffer)
        table, end, problem = scan_records(np.frombuffer(data, np.uint8), batch._pos,
                                           batch.records_count)
        if problem == _OK and end != len(data):
            raise CorruptRecordError(f"{len(data) - end} unconsumed bytes after all records "
                                     "consumed")
        base, topic, partition, epoch = batch.base_offset, tp.topic, tp.partition, self.leader_epoch
        kind = batch.timestamp_type
        log_append = kind == DefaultRecordBatch.LOG_APPEND_TIME
        first, latest = batch.first_timestamp, batch.max_timestamp
        rows = table.tolist()
        for size, ts_delta, offset_delta, key_at, key_len, value_at, value_len, headers_at, \
                headers in rows:
            key = data[key_at:key_at + key_len] if key_len >= 0 else None
            value = data[value_at:value_at + value_len] if value_len >= 0 else None
            if headers:
                header_list = _headers(data, headers_at, headers)
                header_size = sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0)
                                  for k, v in header_list)
            else:
                header_list, header_size = [], -1
            offset = base + offset_delta
            self.records_read += 1
            self.bytes_read += size
            self.next_fetch_offset = offset + 1
            yield _new_record((topic, partition, epoch, offset,
                               latest if log_append else first + ts_delta, kind, key, value,
                               header_list, None, key_len, value_len, header_size))
        if problem != _OK:
            raise CorruptRecordError(f"Found invalid record structure: {_PROBLEMS[problem]}")


def install(consumer: Any) -> bool:
    """Give ``consumer`` (a ``KafkaConsumer``) :class:`FastPartitionRecords`; False, with a
    warning, where its fetcher is not laid out as expected (it keeps its own reader)."""
    fetcher = getattr(consumer, "_fetcher", None)
    known = Fetcher.PartitionRecords
    if (fetcher is None or getattr(fetcher, "PartitionRecords", None) is not known
            or not hasattr(known, "_unpack_records") or not hasattr(MemoryRecords, "_cache_next")):
        logger.warning("this kafka-python's fetcher is not the one dwell knows: records are "
                       "read by kafka-python's own reader (slower)")
        return False
    fetcher.PartitionRecords = FastPartitionRecords
    return True
