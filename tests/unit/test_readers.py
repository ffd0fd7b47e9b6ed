"""Readers on the shipped data and on small generic files (no Kafka needed)."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from producers.readers import (
    READERS,
    ReadResult,
    detect_format,
    order_by_time,
    read_kuairand,
    read_kuairec,
    read_log,
    read_table,
)
from stream.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2] / "data"
KUAIRAND = DATA / "kuairand27k_like_hate" / "processed_standard_kcore_15.tsv"
KUAIREC = DATA / "kuairec_sample" / "big_matrix_1000.csv"
BEIJING = timezone(timedelta(hours=8))
MAPPING = {
    "user_id": "uid",
    "video_id": "vid",
    "play_ms": "play",
    "duration_ms": "dur",
    "ts_ms": "ts",
}


@pytest.fixture(scope="module")
def kuairand() -> ReadResult:
    return read_kuairand(KUAIRAND)


@pytest.fixture(scope="module")
def kuairec() -> ReadResult:
    return read_kuairec(KUAIREC)


def assert_balanced(result: ReadResult) -> None:
    assert result.rows_read == len(result.events) + sum(result.rejected.values())


# --- KuaiRand ---------------------------------------------------------------------------


def test_kuairand_counts(kuairand: ReadResult) -> None:
    assert kuairand.rows_read == 41_828
    assert len(kuairand.events) == 41_828
    assert not kuairand.rejected
    assert_balanced(kuairand)


def test_kuairand_keeps_zero_durations(kuairand: ReadResult) -> None:
    assert sum(e["duration_ms"] == 0 for e in kuairand.events) == 7_738


def test_kuairand_explicit_labels(kuairand: ReadResult) -> None:
    labels = Counter(e["context"]["explicit"] for e in kuairand.events)
    assert labels == {1: 33_745, 0: 8_083}


def test_kuairand_first_event(kuairand: ReadResult) -> None:
    first = kuairand.events[0]
    assert first == {
        "user_id": 111,
        "video_id": 3892024,
        "play_ms": 46186,
        "duration_ms": 45916,
        "ts_ms": 1649581149287,
        "event_id": "kuairand:2",
        "context": {
            "explicit": 1,
            "hour": 16,  # 2022-04-10 08:59:09 UTC = 16:59 in Beijing
            "is_click": 1,
            "is_follow": 0,
            "is_comment": 0,
            "is_forward": 0,
            "long_view": 1,
            "is_profile_enter": 0,
        },
    }


def test_kuairand_types_hours_and_ids(kuairand: ReadResult) -> None:
    for event in kuairand.events[::97]:
        for key in ("user_id", "video_id", "play_ms", "duration_ms", "ts_ms"):
            assert type(event[key]) is int
        expected = datetime.fromtimestamp(event["ts_ms"] / 1000, BEIJING).hour
        assert event["context"]["hour"] == expected
    ids = [e["event_id"] for e in kuairand.events]
    assert len(set(ids)) == len(ids)
    assert ids[-1] == "kuairand:41829"


def test_kuairand_order_by_time(kuairand: ReadResult) -> None:
    ts = [e["ts_ms"] for e in kuairand.events]
    assert any(b < a for a, b in zip(ts, ts[1:], strict=False))  # the file is not in time order
    ordered = order_by_time(kuairand.events)
    assert len(ordered) == len(kuairand.events)
    ordered_ts = [e["ts_ms"] for e in ordered]
    assert all(a <= b for a, b in zip(ordered_ts, ordered_ts[1:], strict=False))
    assert kuairand.events[0]["event_id"] == "kuairand:2"  # input left as it was


def test_order_by_time_is_stable() -> None:
    events = [{"ts_ms": t, "n": n} for n, t in enumerate([5, 1, 5, 1])]
    assert [e["n"] for e in order_by_time(events)] == [1, 3, 0, 2]


def test_kuairand_rejects_bad_rows(tmp_path: Path) -> None:
    lines = KUAIRAND.read_text().splitlines()
    header = lines[0].split("\t")
    bad_play = lines[1].split("\t")
    bad_play[header.index("play_time_ms")] = "n/a"
    empty_time = lines[2].split("\t")
    empty_time[header.index("time_ms")] = ""
    path = tmp_path / "k.tsv"
    path.write_text(
        "\n".join(
            [lines[0], "\t".join(bad_play), "\t".join(empty_time), lines[3], lines[4][:10], ""]
        )
        + "\n"
    )
    result = read_kuairand(path)
    assert result.rows_read == 4
    assert len(result.events) == 1
    assert result.events[0]["event_id"] == "kuairand:4"
    assert result.rejected == {"not_numeric_play_ms": 1, "missing_ts_ms": 1, "short_row": 1}
    assert_balanced(result)


def test_kuairand_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "k.tsv"
    path.write_text("user_id\tvideo_id\ttime_ms\n1\t2\t3\n")
    with pytest.raises(DataError, match="play_time_ms"):
        read_kuairand(path)


# --- KuaiRec ----------------------------------------------------------------------------


def test_kuairec_counts_and_first_event(kuairec: ReadResult) -> None:
    assert kuairec.rows_read == 1_000
    assert len(kuairec.events) == 1_000
    assert not kuairec.rejected
    assert kuairec.events[0] == {
        "user_id": 0,
        "video_id": 3649,
        "play_ms": 13838,
        "duration_ms": 10867,
        "ts_ms": 1593878903438,
        "event_id": "kuairec:2",
        "context": {"hour": 0},  # 2020-07-05 00:08:23.438 Beijing time
    }


def test_kuairec_is_in_time_order(kuairec: ReadResult) -> None:
    ts = [e["ts_ms"] for e in kuairec.events]
    assert ts == sorted(ts)
    assert {e["user_id"] for e in kuairec.events} == {0}
    last = datetime.fromtimestamp(ts[-1] / 1000, UTC).astimezone(BEIJING)
    assert last.strftime("%Y-%m-%d %H:%M:%S") == "2020-08-04 01:19:10"


# --- dispatch ---------------------------------------------------------------------------


def test_detect_and_read_log_auto(kuairand: ReadResult, kuairec: ReadResult) -> None:
    assert detect_format(KUAIRAND) == "kuairand"
    assert detect_format(KUAIREC) == "kuairec"
    assert read_log(KUAIREC).events == kuairec.events
    assert read_log(KUAIRAND, "kuairand").rows_read == kuairand.rows_read
    assert set(READERS) == {"kuairand", "kuairec", "csv", "tsv", "jsonl", "parquet"}


def test_read_log_needs_mapping_for_generic(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("uid,vid,play,dur,ts\n1,2,3,4,5\n")
    assert detect_format(path) == "csv"
    with pytest.raises(ConfigError, match="mapping"):
        read_log(path)
    with pytest.raises(ConfigError, match="mapping"):
        read_log(path, "csv")
    assert len(read_log(path, mapping=MAPPING).events) == 1
    assert len(read_log(path, "csv", MAPPING).events) == 1


def test_read_log_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown log format"):
        read_log(KUAIREC, "xml")
    with pytest.raises(ConfigError, match="fixed schema"):
        read_log(KUAIREC, "kuairec", MAPPING)


# --- generic tables ---------------------------------------------------------------------


def test_read_table_csv(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "uid,vid,play,dur,ts,eid,dev\n"
        "1,v9,1500,3000,1700000000.5,e-1,ios\n"
        "u-2,007,abc,3000,1700000001,e-2,android\n"  # non-numeric play: rejected
        "3,10,0,0,1700000002,,\n"  # zero duration is sent; empty optional cells left out
        ",10,1,2,1700000003,e-4,ios\n"  # missing user id: rejected
        "\n"  # blank line: not a row
        "5,11,7.0,12,1700000004\n"  # short row: rejected
        "u-6,007,250,1000,1700000005,e-6,2\n"
    )
    mapping = {**MAPPING, "event_id": "eid", "context.device": "dev"}
    result = read_table(path, mapping, time_unit="s")
    assert result.rows_read == 6
    assert result.rejected == {"not_numeric_play_ms": 1, "missing_user_id": 1, "short_row": 1}
    assert_balanced(result)
    first, zero, last = result.events
    assert first == {
        "user_id": 1,
        "video_id": "v9",
        "play_ms": 1500,
        "duration_ms": 3000,
        "ts_ms": 1700000000500,
        "event_id": "e-1",
        "context": {"device": "ios"},
    }
    assert zero == {
        "user_id": 3,
        "video_id": 10,
        "play_ms": 0,
        "duration_ms": 0,
        "ts_ms": 1700000002000,
    }
    assert last["user_id"] == "u-6" and last["video_id"] == "007"  # ids kept as written
    assert last["context"] == {"device": 2}  # CSV context cells are typed


def test_read_table_jsonl(tmp_path: Path) -> None:
    rows = [
        {
            "uid": "alice",
            "vid": 7,
            "play": 1200,
            "dur": 3000,
            "ts": 1700000000000,
            "ctx": {"os": "ios"},
        },
        {"uid": 2, "vid": 8, "play": "fast", "dur": 3000, "ts": 1700000000001},
        {"uid": 3, "vid": 9, "play": 10.0, "dur": "4000", "ts": 1700000000002, "ctx": "7"},
        {"uid": 4, "vid": 9, "play": 10, "ts": 1700000000003},
    ]
    lines = [orjson.dumps(r).decode() for r in rows]
    lines[2:2] = ["{not json", "[1, 2]", "   "]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    mapping = {**MAPPING, "context.extra": "ctx"}
    result = read_table(path, mapping, id_prefix="mine")
    assert result.rows_read == 6
    assert result.rejected == {
        "not_numeric_play_ms": 1,
        "bad_json": 1,
        "not_an_object": 1,
        "missing_duration_ms": 1,
    }
    assert_balanced(result)
    first, second = result.events
    assert first == {
        "user_id": "alice",
        "video_id": 7,
        "play_ms": 1200,
        "duration_ms": 3000,
        "ts_ms": 1700000000000,
        "event_id": "mine:1",
        "context": {"extra": {"os": "ios"}},
    }
    assert second["play_ms"] == 10 and second["duration_ms"] == 4000
    assert second["event_id"] == "mine:6"  # physical line, blank and bad lines included
    assert second["context"] == {"extra": "7"}  # JSON values kept as they are


def test_read_table_tsv_gz_from_suffix(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("uid\tvid\tplay\tdur\tts\n1\t2\t3\t4\t5\n")
    result = read_table(path, MAPPING)
    assert result.events == [
        {"user_id": 1, "video_id": 2, "play_ms": 3, "duration_ms": 4, "ts_ms": 5}
    ]


def test_read_table_mapping_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("uid,vid,play,dur,ts\n1,2,3,4,5\n")
    incomplete = {k: v for k, v in MAPPING.items() if k != "play_ms"}
    with pytest.raises(ConfigError, match="play_ms"):
        read_table(path, incomplete)
    with pytest.raises(ConfigError, match="unknown mapping"):
        read_table(path, {**MAPPING, "colour": "c"})
    with pytest.raises(ConfigError):
        read_table(path, {})
    with pytest.raises(ConfigError, match="time unit"):
        read_table(path, MAPPING, time_unit="us")
    with pytest.raises(ConfigError, match="format"):
        read_table(path, MAPPING, fmt="xml")


def test_read_table_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "absent.csv", MAPPING)
    with pytest.raises(DataError, match="does not exist"):
        read_log(tmp_path / "absent.tsv")
    odd = tmp_path / "log.xyz"
    odd.write_text("uid,vid,play,dur,ts\n")
    with pytest.raises(DataError, match="suffix"):
        read_table(odd, MAPPING)
    wrong_columns = tmp_path / "cols.csv"
    wrong_columns.write_text("user,vid,play,dur,ts\n1,2,3,4,5\n")
    with pytest.raises(DataError, match="uid"):
        read_table(wrong_columns, MAPPING)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"uid,vid,play,dur,ts\n\xff\xfe\x00\x81,2,3,4,5\n")
    with pytest.raises(DataError, match="readable"):
        read_table(binary, MAPPING)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(empty, MAPPING)
