"""``dwell report``: reading a run's metrics log back, drawing it, and the subcommand."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from learner.cli import main
from learner.service.metrics_figure import render_report, summary
from learner.service.metrics_log import read_run_log
from stream.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEP = 1_000  # events between progress lines
FIRST_SEGMENT = 180  # progress lines before the restart
SECOND_SEGMENT = 120  # progress lines after it
NULL_LINES = 3  # first progress lines of each segment, before both classes are seen
DROP_AT = 120_000  # events where the short-window AUC falls (concept drift)


def _progress(t: float, events: int, i: int, offset: int = 0) -> dict:
    """A progress line: AUC rising to ~0.75, falling to ~0.62 after DROP_AT (cumulative)."""
    cumulative = offset + events
    known = i >= NULL_LINES
    short = (0.5 + 0.25 * (1 - math.exp(-cumulative / 30_000))
             - (0.13 if cumulative >= DROP_AT else 0.0) + 0.01 * math.sin(i))
    long = 0.5 + 0.24 * (1 - math.exp(-cumulative / 60_000)) - (
        0.10 * (1 - math.exp(-(cumulative - DROP_AT) / 20_000)) if cumulative >= DROP_AT else 0)
    return {
        "kind": "progress", "time": t, "events": events, "accepted": events - i,
        "dead_lettered": i, "events_per_s": 900.0 + 80 * math.sin(i / 7), "lag": 50 * (i % 9),
        "auc": {"short/dwell": short if known else None, "long/dwell": long if known else None,
                "run/dwell": (short + long) / 2 - 0.02 if known else None,
                "short/explicit": short - 0.05 if known else None,
                "long/explicit": None, "run/explicit": None},
        "auc_drift": {"dwell": short - long if known else None, "explicit": None},
        "log_loss": {"short": 0.69 - (short - 0.5) if known else None, "long": None},
        "positive_rate": {"short": 0.4, "long": 0.4},
        "vague_share": {"short": 0.2, "long": 0.2},
        "drift_detections": int(cumulative > DROP_AT + 5_000) + int(cumulative > DROP_AT + 9_000),
    }


def write_log(folder: Path) -> Path:
    """A realistic log: a start, 180 progress lines, two drifts, a stop, a restart from 0,
    120 more progress lines, a garbage line, a line of an unknown kind and a cut last line."""
    t0 = 1_700_000_000.0
    lines: list[str] = [json.dumps({"kind": "start", "time": t0, "config": {"model": "gmf"}})]
    for i in range(FIRST_SEGMENT):
        lines.append(json.dumps(_progress(t0 + i, (i + 1) * STEP, i)))
        if (i + 1) * STEP == DROP_AT + 5_000:
            lines.append(json.dumps({"kind": "drift", "time": t0 + i + 0.5,
                                     "events": DROP_AT + 5_400, "signal": "auc",
                                     "detector": "adwin", "value": 0.61}))
        if (i + 1) * STEP == DROP_AT + 9_000:
            lines.append(json.dumps({"kind": "drift", "time": t0 + i + 0.5,
                                     "events": DROP_AT + 9_100, "signal": "log_loss",
                                     "detector": "page_hinkley", "value": 0.58}))
        if i == 60:
            lines.append("this is not JSON {")
    lines.append(json.dumps({"kind": "stop", "time": t0 + FIRST_SEGMENT, "totals": {}}))
    t1 = t0 + 2_000_000.0
    lines.append(json.dumps({"kind": "start", "time": t1, "config": {"model": "gmf"}}))
    for i in range(SECOND_SEGMENT):
        lines.append(json.dumps(_progress(t1 + i, (i + 1) * STEP, i, FIRST_SEGMENT * STEP)))
        if i == 30:
            lines.append(json.dumps({"kind": "heartbeat", "time": t1 + i}))
    lines.append(json.dumps(_progress(t1 + SECOND_SEGMENT, 999_999, 0))[:37])  # cut by a crash
    path = folder / "metrics.jsonl"
    path.write_text("\n".join(lines))
    return path


def test_read_run_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_log(tmp_path)
    with caplog.at_level(logging.WARNING, logger="learner.service.metrics_log"):
        log = read_run_log(tmp_path)
    assert len(log) == FIRST_SEGMENT + SECOND_SEGMENT
    # one cumulative axis: the second segment's counts go on from the first's last
    last_first = FIRST_SEGMENT * STEP
    assert np.all(np.diff(log.events) > 0)
    assert log.events[FIRST_SEGMENT - 1] == last_first
    assert log.events[FIRST_SEGMENT] == last_first + STEP
    assert log.events[-1] == last_first + SECOND_SEGMENT * STEP
    assert [r.events for r in log.restarts] == [last_first]
    # nulls are NaN, at the start of each segment only
    for series in (log.auc_short_dwell, log.auc_long_dwell, log.auc_run_dwell,
                   log.auc_short_explicit, log.auc_drift_dwell, log.log_loss_short):
        missing = np.flatnonzero(np.isnan(series)).tolist()
        assert missing == [*range(NULL_LINES), *range(FIRST_SEGMENT, FIRST_SEGMENT + NULL_LINES)]
    assert np.isfinite(log.events_per_s).all() and np.isfinite(log.lag).all()
    before, after = log.events < DROP_AT, log.events >= DROP_AT + 10_000
    assert np.nanmean(log.auc_short_dwell[before][-10:]) > 0.7
    assert np.nanmean(log.auc_short_dwell[after][:10]) < 0.65
    # the drift detections, on the cumulative axis
    assert [(d.events, d.signal, d.detector) for d in log.drifts] == [
        (DROP_AT + 5_400, "auc", "adwin"), (DROP_AT + 9_100, "log_loss", "page_hinkley")]
    assert log.drifts[0].value == pytest.approx(0.61)
    # the garbage line and the cut last line counted; the unknown kind counted apart
    assert log.bad_lines == 2
    assert log.unknown_kinds == {"heartbeat": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 unreadable" in w for w in warnings)
    assert any("heartbeat" in w for w in warnings)


def _lines(path: Path, *objects: dict) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


def test_counter_that_goes_on_after_a_restart_is_not_shifted(tmp_path: Path) -> None:
    log = read_run_log(_lines(
        tmp_path / "run.jsonl",
        {"kind": "progress", "time": 1.0, "events": 100},
        {"kind": "start", "time": 2.0, "config": {}},
        {"kind": "progress", "time": 3.0, "events": 150},
    ))
    assert log.events.tolist() == [100, 150]
    assert [r.events for r in log.restarts] == [100]
    assert np.isnan(log.auc_short_dwell).all()  # no "auc" section at all: NaN, not an error


def test_count_going_back_without_start_is_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="learner.service.metrics_log"):
        log = read_run_log(_lines(
            tmp_path / "run.jsonl",
            {"kind": "progress", "time": 1.0, "events": 100, "auc": {"short/dwell": 0.6}},
            {"kind": "progress", "time": 2.0, "events": 40, "auc": {"short/dwell": "oops"}},
        ))
    assert log.events.tolist() == [100, 140]
    assert [r.events for r in log.restarts] == [100]
    assert log.auc_short_dwell[0] == 0.6 and np.isnan(log.auc_short_dwell[1])
    assert "without a start line" in caplog.text


def test_render_report_writes_a_png(tmp_path: Path) -> None:
    import matplotlib.image

    log = read_run_log(write_log(tmp_path))
    out = render_report(log, tmp_path / "img" / "report.png", title="run-42")
    assert out == tmp_path / "img" / "report.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = matplotlib.image.imread(out).shape
    assert 600 <= width <= 2400 and 600 <= height <= 2400 and channels in (3, 4)
    line = summary(log)
    assert "300,000 events" in line and "2 drift detections" in line and "1 restart" in line


def test_render_report_with_nothing_known_yet(tmp_path: Path) -> None:
    """A single point with every measure null still draws; an empty log is refused."""
    log = read_run_log(_lines(tmp_path / "run.jsonl",
                              {"kind": "progress", "time": 1.0, "events": 10, "lag": None}))
    out = render_report(log, tmp_path / "one.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "n/a" in summary(log)
    with pytest.raises(ConfigError):
        render_report(read_run_log(_lines(tmp_path / "empty.jsonl")), tmp_path / "none.png")


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run-7"
    run.mkdir()
    write_log(run)
    assert main(["report", str(run)]) == 0
    assert (run / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert capsys.readouterr().out.strip() == str(run / "report.png")

    out = tmp_path / "elsewhere" / "r.png"
    assert main(["report", str(run / "metrics.jsonl"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_cli_report_without_a_log(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2  # no metrics.jsonl
    assert main(["report", str(tmp_path / "missing")]) == 2
    (empty / "metrics.jsonl").write_text("")
    assert main(["report", str(empty)]) == 2  # an empty log
    _lines(empty / "metrics.jsonl", {"kind": "start", "time": 1.0, "config": {}})
    assert main(["report", str(empty)]) == 2  # started, never reported progress
    assert not (empty / "report.png").exists()
