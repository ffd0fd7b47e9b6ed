"""``dwell report RUN_DIR``: one PNG of what a learner run did, for those without Grafana.

Reads ``RUN_DIR/metrics.jsonl`` (see :mod:`~learner.service.metrics_log`) and draws three
panels against the events consumed (cumulative across restarts, each restart a thin grey
vertical line):

1. AUC of the short and long windows against dwell labels, the whole-run AUC dashed, the
   short-window AUC against explicit labels where the log has it, and each drift detection as
   a red vertical line (one line style per signal);
2. the AUC drift (short minus long window) around zero, and the short-window log loss;
3. throughput (events/s) and consumer lag.

matplotlib is imported only when drawing, and without pyplot: no display, no global backend.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from learner.service.metrics_log import METRICS_FILE, RunLog, metrics_path, read_run_log
from stream.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

REPORT_FILE = "report.png"
DRIFT_COLOR = "tab:red"
DRIFT_STYLES = {"auc": "-", "log_loss": "--"}  # any other signal: ":"
RESTART_COLOR = "0.55"
LAG_COLOR = "tab:olive"
FIGSIZE = (11.0, 9.5)
DPI = 110


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def summary(log: RunLog) -> str:
    """One line: total events, final AUCs, drift detections and restarts."""
    total = int(log.events[-1]) if len(log) else 0
    parts = [
        f"{total:,} events",
        "final AUC dwell short/long/run "
        + "/".join(_fmt(_last_finite(a))
                   for a in (log.auc_short_dwell, log.auc_long_dwell, log.auc_run_dwell)),
    ]
    explicit = _last_finite(log.auc_short_explicit)
    if math.isfinite(explicit):
        parts.append(f"explicit short {_fmt(explicit)}")
    parts.append(f"{len(log.drifts)} drift detection{'s' * (len(log.drifts) != 1)}")
    if log.restarts:
        parts.append(f"{len(log.restarts)} restart{'s' * (len(log.restarts) != 1)}")
    return " | ".join(parts)


def _legend(ax: Axes, handles: list[Artist]) -> None:
    """A one-row legend just above the panel, clear of the data and of the twin axis."""
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(handles),
              fontsize=8, frameon=False, borderaxespad=0.0, handlelength=2.2,
              columnspacing=1.4)


def render_report(log: RunLog, out: Path, title: str = "") -> Path:
    """Draw ``log`` into the PNG ``out`` (folders made as needed) and return ``out``.

    ``title`` (e.g. the run folder's name) heads the figure, above a line of totals: events,
    final AUCs, drift detections. Raises :class:`~stream.errors.ConfigError` where the log has
    no progress points.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    if not len(log):
        where = f" in {log.path}" if log.path is not None else ""
        raise ConfigError(f"no progress lines{where}: nothing to draw")
    out = Path(out)
    x = log.events.astype(np.float64)

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_auc, ax_drift, ax_speed = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.3, 1.3]})
    heading = f"{title}\n{summary(log)}" if title else summary(log)
    fig.suptitle(heading, fontsize=11)

    # (a) AUC and drift detections.
    handles = [
        ax_auc.plot(x, log.auc_short_dwell, color="tab:blue", lw=1.3, label="short window")[0],
        ax_auc.plot(x, log.auc_long_dwell, color="tab:orange", lw=1.3, label="long window")[0],
        ax_auc.plot(x, log.auc_run_dwell, color="tab:green", lw=1.3, ls="--",
                    label="whole run")[0],
    ]
    if np.isfinite(log.auc_short_explicit).any():
        handles.append(ax_auc.plot(x, log.auc_short_explicit, color="tab:purple", lw=1.0,
                                   alpha=0.8, label="short window, explicit labels")[0])
    ax_auc.axhline(0.5, color="0.7", lw=0.8, ls=":", zorder=0)
    signals = sorted({d.signal for d in log.drifts})
    for signal in signals:
        handles.append(Line2D([], [], color=DRIFT_COLOR, lw=1.0, ls=DRIFT_STYLES.get(signal, ":"),
                              label=f"drift ({signal})"))
    if log.restarts:
        handles.append(Line2D([], [], color=RESTART_COLOR, lw=0.8, label="restart"))
    _legend(ax_auc, handles)
    ax_auc.set_ylabel("AUC (dwell labels)")
    auc_values = np.concatenate([log.auc_short_dwell, log.auc_long_dwell, log.auc_run_dwell,
                                 log.auc_short_explicit])
    auc_values = auc_values[np.isfinite(auc_values)]
    if len(auc_values):
        low, high = float(auc_values.min()), float(auc_values.max())
        pad = max(0.02, 0.08 * (high - low))
        ax_auc.set_ylim(max(0.0, min(low, 0.5) - pad), min(1.0, high + pad))

    # (b) AUC drift (short - long) and log loss.
    ax_loss = ax_drift.twinx()
    handles = [
        ax_drift.plot(x, log.auc_drift_dwell, color="tab:blue", lw=1.2,
                      label="AUC drift, short - long (dwell)")[0],
        ax_loss.plot(x, log.log_loss_short, color="tab:brown", lw=1.0, alpha=0.85,
                     label="log loss, short window (right)")[0],
    ]
    ax_drift.axhline(0.0, color="black", lw=0.8)
    _legend(ax_drift, handles)
    ax_drift.set_ylabel("AUC drift")
    ax_loss.set_ylabel("log loss", color="tab:brown")
    ax_loss.tick_params(axis="y", colors="tab:brown")

    # (c) throughput and lag.
    ax_lag = ax_speed.twinx()
    handles = [
        ax_speed.plot(x, log.events_per_s, color="tab:blue", lw=1.0, label="events/s")[0],
        ax_lag.plot(x, log.lag, color=LAG_COLOR, lw=1.0, alpha=0.9,
                    label="consumer lag (right)")[0],
    ]
    _legend(ax_speed, handles)
    ax_speed.set_ylabel("events/s")
    ax_speed.set_ylim(bottom=0)
    ax_lag.set_ylabel("lag (records)", color=LAG_COLOR)
    ax_lag.tick_params(axis="y", colors=LAG_COLOR)
    if np.isfinite(log.lag).any():
        ax_lag.set_ylim(bottom=0)
    ax_speed.set_xlabel("events consumed")
    ax_speed.xaxis.set_major_formatter(EngFormatter(sep=""))

    for ax, alpha in ((ax_auc, 0.9), (ax_drift, 0.45), (ax_speed, 0.45)):
        for drift in log.drifts:
            ax.axvline(drift.events, color=DRIFT_COLOR, lw=1.0, alpha=alpha,
                       ls=DRIFT_STYLES.get(drift.signal, ":"))
        for restart in log.restarts:
            ax.axvline(restart.events, color=RESTART_COLOR, lw=0.8)
        ax.grid(alpha=0.3)
    low, high = min(0.0, float(x.min())), float(x.max())  # the axis starts at 0 events
    ax_auc.set_xlim(*((low, high) if high > low else (low - 1.0, high + 1.0)))

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("report of %d progress points written to %s", len(log), out)
    return out


def _report(args: argparse.Namespace) -> int:
    source = Path(args.run_dir)
    if not source.exists():
        raise ConfigError(f"{source}: no such run folder or log file")
    path = metrics_path(source)
    if not path.is_file():
        raise ConfigError(f"{source}: no {METRICS_FILE} in this folder (is it a run folder?)")
    log = read_run_log(path)
    if not len(log):
        raise ConfigError(f"{path}: no progress lines (empty log, or the run stopped before "
                          "its first report): nothing to draw")
    folder = path.parent
    out = Path(args.output) if args.output else folder / REPORT_FILE
    name = folder.resolve().name if path.name == METRICS_FILE else path.name
    print(render_report(log, out, title=name))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``report`` subcommand on the ``dwell`` command's subparsers."""
    p = sub.add_parser(
        "report", help="draw a run's metrics log (AUC, drift, throughput) into a PNG",
        description="Draw RUN_DIR/metrics.jsonl into one PNG: AUC per window with drift "
        "detections, AUC drift and log loss, throughput and lag, against events consumed.",
    )
    p.add_argument("run_dir", help=f"run folder holding {METRICS_FILE}, or a .jsonl log file")
    p.add_argument("-o", "--output", help=f"PNG to write (default: the log's folder/{REPORT_FILE})")
    p.set_defaults(func=_report)
