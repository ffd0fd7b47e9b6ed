"""Reader for the KuaiRand-27K like/hate log (TAB-separated, header line, time_ms in ms)."""

from __future__ import annotations

import logging
from pathlib import Path

from ._common import ReadResult, beijing_hour, collect_rows, read_delimited, to_int

logger = logging.getLogger(__name__)

#: Interaction flags copied into ``context`` as ints (0/1 in the shipped file).
FLAGS = ("is_click", "is_follow", "is_comment", "is_forward", "long_view", "is_profile_enter")
COLUMNS = ["user_id", "video_id", "time_ms", "play_time_ms", "duration_ms", "label", *FLAGS]


def read_kuairand(path: str | Path) -> ReadResult:
    """Read a KuaiRand log (``processed_standard_kcore_15.tsv`` layout) into events.

    Each row becomes ``{"user_id", "video_id", "play_ms", "duration_ms", "ts_ms",
    "event_id": "kuairand:<line>", "context": {"explicit", "hour", <FLAGS>}}`` where
    ``explicit`` is the label (1 like, 0 hate), ``hour`` the Beijing hour of ``ts_ms`` and
    ``<line>`` the file line (header = line 1). Rows are kept as they are (a
    ``duration_ms`` of 0 is sent); only rows with an empty or non-numeric cell are rejected.
    File order is kept: use ``order_by_time`` before replaying.

    >>> r = read_kuairand("data/kuairand27k_like_hate/processed_standard_kcore_15.tsv")
    >>> r.rows_read, r.events[0]["event_id"], r.events[0]["context"]["explicit"]
    (41828, 'kuairand:2', 1)
    """
    return read_delimited(
        path, kind="KuaiRand", delimiter="\t", columns=COLUMNS, read_rows=_read_rows
    )


def _read_rows(reader, col: dict[str, int], result: ReadResult) -> None:
    i_user, i_video, i_ts = col["user_id"], col["video_id"], col["time_ms"]
    i_play, i_dur, i_label = col["play_time_ms"], col["duration_ms"], col["label"]
    flags = [(name, col[name]) for name in FLAGS]

    def parse(row: list[str]):
        try:  # fast path: every cell a plain integer
            ts_ms = int(row[i_ts])
            context = {"explicit": int(row[i_label]), "hour": beijing_hour(ts_ms)}
            for name, i in flags:
                context[name] = int(row[i])
            user, video = int(row[i_user]), int(row[i_video])
            play, duration = int(row[i_play]), int(row[i_dur])
        except ValueError:  # slow path: accept "12.0", else name the bad cell
            ts_ms = to_int(row[i_ts], "ts_ms")
            context = {"explicit": to_int(row[i_label], "label"), "hour": beijing_hour(ts_ms)}
            for name, i in flags:
                context[name] = to_int(row[i], name)
            user, video = to_int(row[i_user], "user_id"), to_int(row[i_video], "video_id")
            play, duration = to_int(row[i_play], "play_ms"), to_int(row[i_dur], "duration_ms")
        return user, video, play, duration, ts_ms, context

    collect_rows(reader, result, parse, "kuairand")
