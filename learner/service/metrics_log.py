"""The learner's run log, ``RUN_DIR/metrics.jsonl``: reading it back for reports.

The daemon appends one JSON object a line, each with a ``kind``:

``progress``
    the counters and quality measures at one moment (``events`` consumed so far, ``auc`` per
    window and label, ``auc_drift``, ``log_loss``, ``events_per_s``, ``lag``, ...);
``drift``
    one drift detection (``signal``: ``auc`` or ``log_loss``; ``detector``; ``value``);
``start`` / ``stop``
    a daemon starting (with its ``config``) or stopping (with its ``totals``).

A restarted daemon appends to the same file and its ``events`` counter may start again from 0,
so :func:`read_run_log` puts every point on one cumulative event axis: when the first count
after a ``start`` line is below the last count before it, the last count is added to that
segment and to every later one. (A count that went on from where it was is left as it is.) A
count that goes back without a ``start`` line is taken as a restart too, with a warning.

Nulls (a measure not defined yet, e.g. an AUC before both classes are seen) read as NaN. Lines
that are not JSON objects (a line cut short by a crash, garbage) and lines of unknown kinds are
counted, logged at warning level and otherwise skipped; reading never fails on content.

>>> import json, pathlib, tempfile
>>> def progress(t, events, auc):
...     return {"kind": "progress", "time": t, "events": events, "events_per_s": 100.0,
...             "lag": 0, "auc": {"short/dwell": auc}, "drift_detections": 0}
>>> lines = [{"kind": "start", "time": 0.0, "config": {}},
...          progress(10.0, 1000, None), progress(20.0, 2000, 0.61),
...          {"kind": "drift", "time": 21.0, "events": 2100, "signal": "auc",
...           "detector": "adwin", "value": 0.58},
...          {"kind": "start", "time": 30.0, "config": {}}, progress(40.0, 500, 0.64)]
>>> with tempfile.TemporaryDirectory() as folder:
...     path = pathlib.Path(folder, "metrics.jsonl")
...     text = "\\n".join(json.dumps(line) for line in lines) + '\\n{"kind": "progr'
...     _ = path.write_text(text)
...     log = read_run_log(folder)
>>> log.events.tolist()
[1000, 2000, 2600]
>>> log.auc_short_dwell.tolist()
[nan, 0.61, 0.64]
>>> [(d.events, d.signal) for d in log.drifts], [r.events for r in log.restarts]
([(2100, 'auc')], [2100])
>>> log.bad_lines
1
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

# RunLog field -> where it is in a progress line (a top-level key, or (section, key)).
_SERIES: dict[str, str | tuple[str, str]] = {
    "events_per_s": "events_per_s",
    "auc_short_dwell": ("auc", "short/dwell"),
    "auc_long_dwell": ("auc", "long/dwell"),
    "auc_run_dwell": ("auc", "run/dwell"),
    "auc_short_explicit": ("auc", "short/explicit"),
    "auc_drift_dwell": ("auc_drift", "dwell"),
    "log_loss_short": ("log_loss", "short"),
    "lag": "lag",
}
_KNOWN_KINDS = frozenset({"progress", "drift", "start", "stop"})


@dataclass(frozen=True)
class Drift:
    """One drift detection; ``events`` is on the cumulative axis of :class:`RunLog`."""

    time: float
    events: int
    signal: str
    detector: str = ""
    value: float = math.nan


@dataclass(frozen=True)
class Restart:
    """A daemon start after an earlier one: where the new segment begins on the event axis."""

    time: float
    events: int


@dataclass
class RunLog:
    """The progress points of a run log as arrays (one entry per ``progress`` line).

    ``events`` is cumulative across restarts (int64); the other arrays are float64, NaN where
    the line had a null or lacked the value.
    """

    time: np.ndarray
    events: np.ndarray
    events_per_s: np.ndarray
    auc_short_dwell: np.ndarray
    auc_long_dwell: np.ndarray
    auc_run_dwell: np.ndarray
    auc_short_explicit: np.ndarray
    auc_drift_dwell: np.ndarray
    log_loss_short: np.ndarray
    lag: np.ndarray
    drifts: list[Drift] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    bad_lines: int = 0
    unknown_kinds: dict[str, int] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.events)


def metrics_path(path: str | Path) -> Path:
    """The log file itself: ``path`` if it is a file, else ``path/metrics.jsonl``."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def _number(value: Any) -> float:
    """A JSON value as a float: NaN for null, missing, booleans, strings and other objects."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _lookup(line: dict, where: str | tuple[str, str]) -> Any:
    if isinstance(where, str):
        return line.get(where)
    section = line.get(where[0])
    return section.get(where[1]) if isinstance(section, dict) else None


def _count(value: Any) -> int | None:
    """An ``events`` count, or None where it is not a finite non-negative number."""
    number = _number(value)
    return int(number) if math.isfinite(number) and number >= 0 else None


class _EventAxis:
    """Maps each segment's own ``events`` counter onto one cumulative axis."""

    def __init__(self) -> None:
        self.offset = 0
        self.last_raw = 0
        self.seen = False  # a start, progress or drift line has been read
        self.pending = False  # a start line came; the next count says if the counter reset

    def start(self, time: float) -> Restart | None:
        restart = Restart(time, self.offset + self.last_raw) if self.seen else None
        self.seen = True
        self.pending = restart is not None
        return restart

    def place(self, raw: int, time: float, lineno: int) -> tuple[int, Restart | None]:
        """The cumulative position of ``raw``; a Restart where the count went back unannounced."""
        restart = None
        if raw < self.last_raw:
            if not self.pending:
                logger.warning("line %d: events went back from %d to %d without a start "
                               "line; taken as a restart", lineno, self.last_raw, raw)
                restart = Restart(time, self.offset + self.last_raw)
            self.offset += self.last_raw
        self.pending = False
        self.seen = True
        self.last_raw = raw
        return self.offset + raw, restart


def read_run_log(path: str | Path) -> RunLog:
    """Read a run log: a ``metrics.jsonl`` file, or a run folder holding one.

    Raises :class:`FileNotFoundError` where there is no such file; an empty file gives a
    RunLog of length 0.
    """
    path = metrics_path(path)
    columns: dict[str, list[float]] = {name: [] for name in ("time", *_SERIES)}
    events: list[int] = []
    drifts: list[Drift] = []
    restarts: list[Restart] = []
    axis = _EventAxis()
    bad: list[int] = []
    unknown: Counter[str] = Counter()
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            kind = line.get("kind") if isinstance(line, dict) else None
            if not isinstance(kind, str):
                bad.append(lineno)
                continue
            if kind not in _KNOWN_KINDS:
                unknown[kind] += 1
                continue
            time = _number(line.get("time"))
            if kind == "start":
                restart = axis.start(time)
                if restart is not None:
                    restarts.append(restart)
                continue
            if kind == "stop":
                continue
            raw = _count(line.get("events"))
            if raw is None:
                bad.append(lineno)
                continue
            cumulative, restart = axis.place(raw, time, lineno)
            if restart is not None:
                restarts.append(restart)
            if kind == "drift":
                drifts.append(Drift(time, cumulative, str(line.get("signal", "")),
                                    str(line.get("detector", "")), _number(line.get("value"))))
                continue
            events.append(cumulative)
            columns["time"].append(time)
            for name, where in _SERIES.items():
                columns[name].append(_number(_lookup(line, where)))
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        logger.warning("%s: skipped %d unreadable line(s) (line %s)", path, len(bad), shown)
    if unknown:
        logger.warning("%s: skipped lines of unknown kinds %s", path, dict(unknown))
    return RunLog(
        events=np.asarray(events, dtype=np.int64),
        **{name: np.asarray(values, dtype=np.float64) for name, values in columns.items()},
        drifts=drifts,
        restarts=restarts,
        bad_lines=len(bad),
        unknown_kinds=dict(unknown),
        path=path,
    )
