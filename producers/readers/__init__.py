"""Readers that turn historical logs into plain event dicts for replay.

Named adapters for the shipped data sets (``read_kuairand``, ``read_kuairec``), a generic
CSV/TSV/JSONL reader with a column mapping (``read_table``), a registry (``READERS``) and a
dispatcher (``read_log``). Events are dicts with ``user_id, video_id, play_ms, duration_ms,
ts_ms`` and optional ``event_id`` and ``context``; their validity is the learner's concern.

Example::

    from producers.readers import order_by_time, read_log
    result = read_log("data/kuairec_sample/big_matrix_1000.csv")
    events = order_by_time(result.events)
"""

from producers.ordering import order_by_time

from ._common import ReadResult
from .kuairand import read_kuairand
from .kuairec import read_kuairec
from .registry import READERS, detect_format, read_log
from .table import read_table

__all__ = [
    "READERS",
    "ReadResult",
    "detect_format",
    "order_by_time",
    "read_kuairand",
    "read_kuairec",
    "read_log",
    "read_table",
]
