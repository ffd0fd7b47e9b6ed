"""Reader for KuaiRec 2.0 ``big_matrix.csv`` / ``small_matrix.csv`` (CSV, BOM, timestamp in s)."""

from __future__ import annotations

import logging
from pathlib import Path

from ._common import (
    ReadResult,
    beijing_hour,
    collect_rows,
    read_delimited,
    to_int,
    to_ts_ms,
)

logger = logging.getLogger(__name__)

COLUMNS = ["user_id", "video_id", "play_duration", "video_duration", "timestamp"]


def read_kuairec(path: str | Path) -> ReadResult:
    """Read a KuaiRec interaction matrix into events.

    ``play_ms`` = play_duration, ``duration_ms`` = video_duration (both ms in KuaiRec),
    ``ts_ms`` = round(timestamp * 1000) (timestamp is Unix seconds), ``context`` =
    ``{"hour": <Beijing hour>}``, ``event_id`` = ``"kuairec:<line>"`` (header = line 1).

    >>> r = read_kuairec("data/kuairec_sample/big_matrix_1000.csv")
    >>> r.events[0]["video_id"], r.events[0]["ts_ms"]
    (3649, 1593878903438)
    """
    return read_delimited(
        path, kind="KuaiRec", delimiter=",", columns=COLUMNS, read_rows=_read_rows
    )


def _read_rows(reader, col: dict[str, int], result: ReadResult) -> None:
    i_user, i_video, i_ts = col["user_id"], col["video_id"], col["timestamp"]
    i_play, i_dur = col["play_duration"], col["video_duration"]

    def parse(row: list[str]):
        try:  # fast path: integer cells
            user, video = int(row[i_user]), int(row[i_video])
            play, duration = int(row[i_play]), int(row[i_dur])
        except ValueError:  # slow path: accept "12.0", else name the bad cell
            user, video = to_int(row[i_user], "user_id"), to_int(row[i_video], "video_id")
            play, duration = to_int(row[i_play], "play_ms"), to_int(row[i_dur], "duration_ms")
        ts_ms = to_ts_ms(row[i_ts], "ts_ms", "s")
        return user, video, play, duration, ts_ms, {"hour": beijing_hour(ts_ms)}

    collect_rows(reader, result, parse, "kuairec")
