"""``dwell drift-eval``: how fast the drift detectors fire on a real shift, and how often falsely.

The shipped KuaiRand log is replayed offline through the learner, in event-time order and in
the daemon's micro-batches, once unchanged and once with a concept shift injected at its
middle (:mod:`producers.shift`), for several seeds. Every detector watches the same scored
events. Reported per detector and shift:

- **delay**: records consumed from the shift to the end of the micro-batch in which the
  first detection falls (a detection can only be seen at a batch's end);
- **detected**: in how many of the seeds it fired after the shift at all;
- **false alarms per million events**: detections on the unshifted runs and before the
  shift in the shifted ones, over all the events they cover.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from learner.bounds import Flag, Range
from learner.bridge import to_events
from learner.core.drift import DETECTORS, DriftMonitor
from learner.core.labels import POSITIVE, VAGUE
from learner.core.settings import DRIFT_CHUNK, MICRO_BATCH, SEED_MAX, LearnerSettings
from learner.core.trainer import OnlineLearner
from learner.doc_sections import write_section
from learner.evaluation.datasets import KUAIRAND
from learner.machine import machine_description
from producers.readers import order_by_time, read_log
from producers.shift import SHIFTS, inject_shift
from stream.event import MAX_VALUE_BYTES, decode_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrillSettings:
    """What the drill runs with: the daemon's defaults (``dwell learn`` without flags)."""

    learner: LearnerSettings = field(default_factory=LearnerSettings)
    batch_size: int = MICRO_BATCH
    max_value_bytes: int = MAX_VALUE_BYTES
    drift_chunk: int = DRIFT_CHUNK


@dataclass
class DetectorOutcome:
    """What one detector did over all seeds of one shift (or of the unshifted stream)."""

    delays: list[int | None] = field(default_factory=list)
    false_alarms: int = 0
    clean_events: int = 0

    @property
    def per_million(self) -> float:
        return self.false_alarms / self.clean_events * 1e6 if self.clean_events else 0.0


def replay_offline(
    events: list[dict], config: DrillSettings, monitors: dict[str, DriftMonitor]
) -> dict[str, list[int]]:
    """Run ``events`` through a fresh learner in micro-batches; records consumed at each
    detection (the batch's end), per monitor."""
    learner = OnlineLearner(config.learner)
    raw = [orjson.dumps(e) for e in events]
    hits: dict[str, list[int]] = {name: [] for name in monitors}
    for start in range(0, len(raw), config.batch_size):
        chunk = raw[start:start + config.batch_size]
        result = learner.learn_many(to_events(decode_batch(chunk, config.max_value_bytes)))
        if result.scores is None:
            continue
        genuine = result.classes != VAGUE
        scores, labels = result.scores[genuine], result.classes[genuine] == POSITIVE
        for name, monitor in monitors.items():
            if monitor.update(scores, labels):
                hits[name].append(start + len(chunk))
    return hits


def evaluate(
    seeds: list[int], config: DrillSettings, path: Path = KUAIRAND, at: float = 0.5
) -> tuple[dict[tuple[str, str], DetectorOutcome], int]:
    """Outcomes keyed by (detector, shift) with shift "none" for the unshifted stream."""
    events = order_by_time(read_log(path).events)
    shift_at = int(len(events) * at)
    outcomes = {(d, s): DetectorOutcome() for d in DETECTORS for s in ("none", *SHIFTS)}
    runs = [(s, seed) for s in ("none", *SHIFTS) for seed in seeds]
    for shift, seed in tqdm(runs, desc="drift-eval", unit="run"):
        stream = events if shift == "none" else inject_shift(events, shift_at, shift, seed)
        monitors = {d: DriftMonitor(d, config.drift_chunk) for d in DETECTORS}
        cfg = dataclasses.replace(config, learner=dataclasses.replace(config.learner, seed=seed))
        for detector, hits in replay_offline(stream, cfg, monitors).items():
            out = outcomes[(detector, shift)]
            if shift == "none":
                out.false_alarms += len(hits)
                out.clean_events += len(stream)
                continue
            after = [h for h in hits if h > shift_at]
            out.delays.append(after[0] - shift_at if after else None)
            clean = outcomes[(detector, "none")]
            clean.false_alarms += sum(h <= shift_at for h in hits)
            clean.clean_events += shift_at
    return outcomes, shift_at


def format_markdown(
    outcomes: dict[tuple[str, str], DetectorOutcome], shift_at: int, seeds: list[int],
    config: DrillSettings,
) -> str:
    lines = [
        f"Measured by `dwell drift-eval --seeds {','.join(map(str, seeds))}` on "
        f"{machine_description()}: the shipped KuaiRand log (41,828 records), learner "
        f"{config.learner.model.upper()} with loss {config.learner.loss} (the daemon's "
        f"defaults), micro-batches of {config.batch_size:,} records, shift injected at record "
        f"{shift_at:,}, drift chunk {config.drift_chunk} genuine events.",
        "",
        "| detector | shift | detected | delay (records), per seed | median delay |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (detector, shift), out in outcomes.items():
        if shift == "none":
            continue
        found = [d for d in out.delays if d is not None]
        median = f"{int(np.median(found)):,}" if found else "-"
        per_seed = ", ".join("-" if d is None else f"{d:,}" for d in out.delays)
        lines.append(f"| {detector} | {shift} | {len(found)}/{len(out.delays)} | {per_seed} "
                     f"| {median} |")
    lines += ["", "| detector | false alarms | events without a shift | per million events |",
              "| --- | --- | --- | --- |"]
    for detector in DETECTORS:
        out = outcomes[(detector, "none")]
        lines.append(f"| {detector} | {out.false_alarms} | {out.clean_events:,} "
                     f"| {out.per_million:.1f} |")
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> int:
    config = DrillSettings()
    outcomes, shift_at = evaluate(args.seeds, config)
    text = format_markdown(outcomes, shift_at, args.seeds, config)
    print(text)
    if args.write:
        write_section(args.write, text, name="drift-eval")
        logger.info("wrote the drift-eval section of %s", args.write)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift-eval", help="detection delay and false alarms of the drift "
                       "detectors on the shipped data with an injected shift")
    p.add_argument("--seeds", type=Flag(int, Range(0, SEED_MAX), many=True),
                   default=list(range(8)), help="comma list of seeds (default 0..7)")
    p.add_argument("--write", type=Path, help="write the table into this Markdown file "
                   "(between <!-- drift-eval --> markers), e.g. docs/MONITORING.md")
    p.set_defaults(func=_run)
