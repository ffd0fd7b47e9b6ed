"""stream.clients.unpack: the compiled reader yields what kafka-python's own reader yields."""

from __future__ import annotations

import struct

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c

from stream.clients import unpack

TP = TopicPartition("events", 3)
GZIP = 1


def batch(records: list[tuple], *, offset: int = 0, compression: int = 0, magic: int = 2,
          transactional: bool = False) -> bytes:
    """One record batch of ``(timestamp, key, value, headers)`` from ``offset``."""
    builder = MemoryRecordsBuilder(
        magic, compression, 1 << 20, offset=offset, transactional=transactional,
        producer_id=7 if transactional else -1, producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1)
    for timestamp, key, value, headers in records:
        builder.append(timestamp, key, value, headers if magic >= 2 else None)
    builder.close()
    return bytes(builder.buffer())


def with_attributes(data: bytes, set_bits: int) -> bytes:
    """``data`` (one v2 batch) with attribute bits set and its CRC made right again."""
    out = bytearray(data)
    at = DefaultRecordBatch.ATTRIBUTES_OFFSET
    attributes, = struct.unpack_from(">h", out, at)
    struct.pack_into(">h", out, at, attributes | set_bits)
    struct.pack_into(">I", out, DefaultRecordBatch.CRC_OFFSET, calc_crc32c(memoryview(out)[at:]))
    return bytes(out)


def read(kind: type, data: bytes, fetch_offset: int = 0, take: int | None = None) -> dict:
    """What a PartitionRecords of ``kind`` hands out of ``data``, ``take`` at a time, and
    where it leaves its counters; the error it raised, if any."""
    part = kind(fetch_offset, TP, MemoryRecords(data), check_crcs=True)
    out: list = []
    error = None
    try:
        while part:
            got = part.take(take)
            out.extend(got)
            if not got and part:
                break
    except CorruptRecordError as exc:
        error = type(exc).__name__
    return {"records": out, "next": part.next_fetch_offset, "read": part.records_read,
            "bytes": part.bytes_read, "error": error}


def same(data: bytes, **kwargs) -> dict:
    """Read ``data`` both ways, assert they agree, return the fast reader's result."""
    fast = read(unpack.FastPartitionRecords, data, **kwargs)
    assert fast == read(Fetcher.PartitionRecords, data, **kwargs)
    return fast


def events(n: int, first_ts: int = 1_700_000_000_000) -> list[tuple]:
    return [(first_ts + 37 * i, b"user-%d" % i, b'{"user_id": %d, "play_ms": %d}' % (i, 10 * i),
             []) for i in range(n)]


def test_plain_batches_read_as_kafka_python_reads_them() -> None:
    data = batch(events(300), offset=1000) + batch(events(5, 1), offset=1300)
    got = same(data)
    assert len(got["records"]) == 305 and got["next"] == 1305 and got["error"] is None
    first = got["records"][0]
    assert (first.topic, first.partition, first.offset, first.key) == ("events", 3, 1000, b"user-0")


@pytest.mark.parametrize("take", [1, 7, None])
def test_taken_a_few_at_a_time_and_from_the_middle_of_a_batch(take: int | None) -> None:
    data = batch(events(50), offset=10) + batch(events(20), offset=60)
    got = same(data, fetch_offset=33, take=take)
    assert [r.offset for r in got["records"]] == list(range(33, 80))


def test_null_keys_and_values_empty_values_and_headers() -> None:
    records = [(5, None, b"v", []), (6, b"k", None, []), (7, b"", b"", []),
               (8, b"k", b"v", [("dwell.reason", b"not_json"), ("empty", b""), ("none", None)]),
               (9, None, None, [("\u00e9t\u00e9", b"\xff" * 300)])]
    got = same(batch(records) + batch(events(3), offset=5))
    assert [r.serialized_key_size for r in got["records"][:3]] == [-1, 1, 0]
    assert got["records"][3].headers == [("dwell.reason", b"not_json"), ("empty", b""),
                                         ("none", None)]
    assert got["records"][3].serialized_header_size == len("dwell.reasonnot_jsonemptynone")


def test_compressed_batches() -> None:
    """Uncompressed by kafka-python's codec (gzip here: the codec every install has)."""
    got = same(batch(events(400), compression=GZIP) + batch(events(10), offset=400))
    assert len(got["records"]) == 410


def test_control_and_transactional_batches() -> None:
    control = with_attributes(batch([(1, b"\x00\x00\x00\x01", b"\x00" * 6, [])], offset=20,
                                    transactional=True), DefaultRecordBatch.CONTROL_MASK)
    data = batch(events(20), transactional=True) + control + batch(events(4), offset=21)
    got = same(data)
    assert [r.offset for r in got["records"]] == list(range(20)) + list(range(21, 25))


def test_log_append_time() -> None:
    data = with_attributes(batch(events(6)), DefaultRecordBatch.TIMESTAMP_TYPE_MASK)
    got = same(data)
    assert {r.timestamp_type for r in got["records"]} == {1} and got["next"] == 6
    assert {r.timestamp for r in got["records"]} == {DefaultRecordBatch(data).max_timestamp}


def test_old_message_formats_go_to_kafka_pythons_reader() -> None:
    got = same(batch([(1, b"k", b"v0", None), (2, None, b"v1", None)], magic=1))
    assert [r.value for r in got["records"]] == [b"v0", b"v1"]


@pytest.mark.parametrize("where", [61, 65, -1])  # a size, a key's size, the last header count
def test_corrupt_records_are_refused_after_the_good_ones(where: int) -> None:
    """A record's bytes changed (its CRC made right again): both readers hand out the
    records before it, then raise CorruptRecordError."""
    good = batch(events(3), offset=0)
    bad = bytearray(batch(events(4), offset=3))
    bad[where] ^= 0x7F
    bad = bytearray(with_attributes(bytes(bad), 0))
    got = same(good + bytes(bad))
    assert got["error"] == "CorruptRecordError" and len(got["records"]) in (3, 6)


def test_a_bad_crc_is_refused() -> None:
    bad = bytearray(batch(events(4)))
    bad[-1] ^= 1
    assert same(bytes(bad))["error"] == "CorruptRecordError"


def test_scan_reports_a_batch_cut_short() -> None:
    import numpy as np

    data = batch(events(2))
    body = np.frombuffer(data, np.uint8)[DefaultRecordBatch.HEADER_STRUCT.size:-4]
    table, _end, problem = unpack.scan_records(body, 0, 2)
    assert len(table) == 1 and problem != 0


def test_install_on_a_consumer_and_refusal_of_an_unknown_fetcher() -> None:
    consumer = KafkaConsumer(bootstrap_servers=[], api_version=(2, 8))
    try:
        assert unpack.install(consumer)
        assert consumer._fetcher.PartitionRecords is unpack.FastPartitionRecords
    finally:
        consumer.close()

    class Other:
        _fetcher = object()

    assert not unpack.install(Other())
