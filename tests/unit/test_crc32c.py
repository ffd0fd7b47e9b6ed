"""kafka-python verifies every fetched record batch with CRC-32C: the C package must do it.

Without the ``crc32c`` package kafka-python falls back to a pure-Python CRC that takes about
half of a bare consumer's time (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import crc32c
from kafka.record import default_records, util


def test_kafka_python_checks_record_batches_with_the_crc32c_package():
    assert util.crc32c_c is crc32c.crc32c
    (implementation,) = util.calc_crc32c.__defaults__
    assert implementation is crc32c.crc32c, implementation
    assert default_records.calc_crc32c is util.calc_crc32c  # what the record reader calls


def test_the_implementation_in_use_computes_crc32c():
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the standard check value
    assert util.calc_crc32c(memoryview(b"123456789")) == util.crc32c_py(b"123456789")
