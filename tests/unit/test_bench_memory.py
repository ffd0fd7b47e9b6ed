"""``dwell bench`` memory suite: quick mode streams both ways, the section has its shape.

No memory or speed thresholds asserted on the quick sizes: only what must hold anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from learner.bench import memory


@pytest.fixture(scope="module")
def quick_section() -> tuple[str, list[dict]]:
    runs = [memory.measure(memory.QUICK_USERS, memory.QUICK_VIDEOS),
            memory.measure(memory.QUICK_USERS, memory.QUICK_VIDEOS, *memory.QUICK_CAPACITY)]
    return memory.format_markdown(runs, "a test machine", dt.date(2026, 1, 2),
                                  command="dwell bench --suites memory --quick"), runs


def test_quick_runs_stream_every_id_and_the_capped_one_evicts(quick_section):
    _text, (unbounded, capped) = quick_section
    for r in (unbounded, capped):
        assert r["events"] == memory.QUICK_USERS
        assert r["peak_kib"] >= r["final_kib"] > 0 and r["events_per_s"] > 0
        events = [s["events"] for s in r["samples"]]  # batch ends, past each tenth
        assert len(events) == memory.SAMPLES and events[-1] == memory.QUICK_USERS
        assert all(0 <= e - memory.QUICK_USERS * k // memory.SAMPLES < memory.BATCH
                   for k, e in enumerate(events, 1))
        assert r["import_kib"] <= r["start_kib"] and r["final_anon_kib"] > 0
    assert unbounded["users"] == memory.QUICK_USERS and unbounded["videos"] == memory.QUICK_VIDEOS
    assert unbounded["evictions"] == {"user": 0, "video": 0}
    max_users, max_videos = memory.QUICK_CAPACITY
    assert capped["users"] <= max_users and capped["videos"] <= max_videos
    assert capped["evictions"]["user"] > 0 and capped["evictions"]["video"] > 0
    # every id got a row: the ids still mapped plus those evicted are all the ids streamed
    assert capped["users"] + capped["evictions"]["user"] == memory.QUICK_USERS
    assert capped["user_rows"] < unbounded["user_rows"]


def test_section_shape(quick_section):
    text, runs = quick_section
    lines = text.splitlines()
    assert lines[0].startswith("## Memory") and "2026-01-02" in lines[0]
    assert "Machine: a test machine." in text
    assert "Command: `dwell bench --suites memory --quick`" in text
    tables = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(tables) == 1 + len(runs) + 1 + memory.SAMPLES
    verdicts = [line for line in lines if line.startswith("- ")]
    assert len(verdicts) == 2 and "unbounded" in verdicts[0] and "capacity" in verdicts[1]
    assert all("under 2 GB: yes" in line or "under 2 GB: **no**" in line for line in verdicts)
    assert "bounded: " in verdicts[1]


def test_run_follows_the_suite_contract(monkeypatch):
    parser = argparse.ArgumentParser()
    memory.add_arguments(parser)
    assert all(a.option_strings[0].startswith("--memory-") for a in parser._actions[1:])
    args = parser.parse_args(["--memory-users", "3000", "--memory-videos", "2000",
                              "--memory-capacity", "1500,1100"])
    calls = []

    def fake(users, videos, max_users=0, max_videos=0, **kw):
        calls.append((users, videos, max_users, max_videos))
        return {"users_streamed": users, "videos_streamed": videos, "max_users": max_users,
                "max_videos": max_videos, "batch": 1024, "dim": 32, "events": 3000,
                "seconds": 1.0, "events_per_s": 3000.0, "import_kib": 1, "start_kib": 1,
                "peak_kib": 3, "final_kib": 2, "start_anon_kib": 1, "final_anon_kib": 1,
                "users": 1, "videos": 1, "user_rows": 1, "video_rows": 1,
                "evictions": {"user": 0, "video": 0}, "samples": [], "wall_s": 2.0}

    monkeypatch.setattr(memory, "measure", fake)
    text = memory.run(args, "m")
    assert calls == [(3000, 2000, 0, 0), (3000, 2000, 1500, 1100)]
    assert memory.SECTION == "bench:memory" and text.startswith("## Memory")
    assert ("dwell bench --suites memory --memory-users 3000 --memory-videos 2000 "
            "--memory-capacity 1500,1100") in text
    args.quick = True
    memory.run(args, "m")
    assert calls[-1] == (memory.QUICK_USERS, memory.QUICK_VIDEOS, *memory.QUICK_CAPACITY)
