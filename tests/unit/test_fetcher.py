"""The fetch process's bookkeeping (stream.clients.fetcher) on a fake child: what it hands
out, what it drops on revoke and where a partition that comes back resumes."""

from __future__ import annotations

import threading
from collections import deque

from stream.clients.fetcher import _ASSIGN, _BATCH, _REVOKE, FetchProcess


class _FakeFetch(FetchProcess):
    """A FetchProcess without a child: batches are queued by hand; commands are recorded."""

    def __init__(self, max_records: int, fetch_records: int) -> None:  # no child process
        self.topic, self.max_records = "t", max_records
        self.on_revoke = self.on_assign = None
        self._next, self._inbox, self._ahead = {}, deque(), []
        self._asked, self._stale, self._callbacks, self._closed = True, set(), 0, False
        self._restart, self._fetch_records, self._full = {}, fetch_records, False
        self._lock = threading.RLock()
        self.commands: list[tuple] = []

    def send(self, command: str, *args) -> int:
        self.commands.append((command, *args))
        return len(self.commands)

    def call(self, command: str, *args, timeout=None):
        self.commands.append((command, *args))

    def receive(self, timeout=None):
        raise AssertionError("no batch queued: the test asked for more than it gave")

    def child_batch(self, partition: int, offsets: range) -> None:
        n = len(offsets)
        self._inbox.append((_BATCH, ([b"v"] * n, [None] * n, [partition] * n, list(offsets),
                                     [0] * n, [])))
        self._asked = False


def test_a_full_child_batch_is_topped_up_from_the_next_so_batches_stay_full():
    fetch = _FakeFetch(max_records=3, fetch_records=4)
    fetch.child_batch(0, range(0, 4))  # full: the child was behind the log
    fetch.child_batch(0, range(4, 8))
    fetch.child_batch(0, range(8, 10))  # short: caught up
    sizes = [len(fetch.poll_batch()) for _ in range(4)]
    assert sizes == [3, 3, 3, 1]  # cut by count, then what is left once caught up


def test_a_partition_that_comes_back_resumes_at_the_first_record_dropped_on_revoke():
    fetch = _FakeFetch(max_records=2, fetch_records=8)
    fetch.child_batch(1, range(100, 106))
    handed = fetch.poll_batch()
    assert [m.offset for m in handed] == [100, 101]
    fetch._callback(_REVOKE, {1})  # 102..105 fetched ahead, never handed out: dropped
    assert fetch._ahead == []
    fetch._callback(_ASSIGN, {1})  # it comes back, at the client's position (106)
    assert ("seek", 1, 102) in fetch.commands
    fetch._callback(_REVOKE, {1})
    fetch._callback(_ASSIGN, {2})  # another partition: nothing to seek
    assert [c for c in fetch.commands if c[0] == "seek"] == [("seek", 1, 102)]
