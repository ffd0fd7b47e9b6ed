"""Drift detection on the learner's prequential quality, with river's detectors.

Genuine events (dwell-labelled positive or negative) are scored before the model learns from
them. :class:`DriftMonitor` watches two signals of that prequential quality, AUC and log
loss, with a detector each: river's Page-Hinkley (chunk AUC and chunk mean log loss) or
ADWIN (chunk AUC, and the log loss of every event). Only a *degradation* counts as drift:
AUC falling, log loss rising. An online model improves as it learns, and a detector that
fired on that would page someone for good news, so:

- ADWIN is two-sided; when it cuts its window, the mean of what it keeps is compared with the
  mean before the cut, and the detection counts only if quality got worse.
- Page-Hinkley runs one-sided (``mode="down"`` for AUC, ``"up"`` for log loss).

The detectors' state is not checkpointed: after a restart they learn the current level anew
(``min_chunks`` chunks of grace).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> monitor = DriftMonitor("page_hinkley", chunk=500)
>>> def stream(n, flip):
...     labels = rng.random(n) < 0.5
...     scores = np.clip(0.5 + (0.25 if not flip else -0.25) * (2 * labels - 1)
...                      + rng.normal(0, 0.2, n), 0, 1)
...     return scores, labels
>>> fired = [d for _ in range(40) for d in monitor.update(*stream(500, False))]
>>> fired
[]
>>> fired = [d for _ in range(5) for d in monitor.update(*stream(500, True))]
>>> sorted({d.signal for d in fired})
['auc', 'log_loss']
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from river import drift

from learner.core.prequential import auc_score, log_loss

logger = logging.getLogger(__name__)

DETECTORS = ("adwin", "page_hinkley")
SIGNALS = ("auc", "log_loss")
LOSS_CAP = 5.0  # per-event log loss fed to ADWIN is capped here (a score of 0.0067 or 0.9933)


@dataclass(frozen=True, slots=True)
class Detection:
    """One drift detection: which signal, on what value, after how many genuine events."""

    signal: str
    value: float
    events: int


class SignalDetector:
    """One river detector on one signal, counting only changes for the worse.

    ``worse`` is ``"down"`` (AUC) or ``"up"`` (log loss).
    """

    def __init__(self, kind: str, worse: str, **params) -> None:
        if kind not in DETECTORS:
            raise ValueError(f"drift detector {kind!r}: expected one of {', '.join(DETECTORS)}")
        self.kind, self.worse = kind, worse
        self._detector: drift.ADWIN | drift.PageHinkley
        defaults: dict[str, float | str]
        if kind == "adwin":
            defaults = {"delta": 0.002, "grace_period": 10, "clock": 1}
            self._detector = drift.ADWIN(**{**defaults, **params})
        else:
            defaults = {"min_instances": 10, "delta": 0.005, "threshold": 0.2, "mode": worse}
            self._detector = drift.PageHinkley(**{**defaults, **params})

    def update(self, value: float) -> bool:
        """Feed one value; True if the detector signals a change for the worse."""
        before = getattr(self._detector, "estimation", math.nan)
        self._detector.update(value)
        if not self._detector.drift_detected:
            return False
        if isinstance(self._detector, drift.PageHinkley):  # one-sided already
            return True
        after = self._detector.estimation
        return after < before if self.worse == "down" else after > before


class DriftMonitor:
    """Watches prequential AUC and log loss of genuine events for degradation.

    Each detector gets the series it is built for. Page-Hinkley (the default) watches the AUC
    and the mean log loss of chunks of ``chunk`` genuine events. ADWIN, whose bound needs many
    observations, watches the log loss of every event (capped at ``LOSS_CAP``) and the chunk
    AUC.
    """

    def __init__(self, detector: str = "page_hinkley", chunk: int = 500, **params) -> None:
        self.detector, self.chunk = detector, chunk
        self._signals = {
            "auc": SignalDetector(detector, "down", **params),
            "log_loss": SignalDetector(detector, "up", **params),
        }
        self._per_event_loss = detector == "adwin"
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._held = 0
        self.events = 0  # genuine events seen

    def update(self, scores: np.ndarray, labels: np.ndarray) -> list[Detection]:
        """Add scored genuine events (``labels`` true for positive); return new detections."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=bool)
        found: list[Detection] = []
        if self._per_event_loss:
            detector = self._signals["log_loss"]
            losses = np.minimum(log_loss(scores, labels), LOSS_CAP).tolist()
            found += [Detection("log_loss", x, self.events + i + 1)
                      for i, x in enumerate(losses) if detector.update(x)]
        self.events += len(scores)
        self._scores.append(scores)
        self._labels.append(labels)
        self._held += len(scores)
        if self._held < self.chunk:
            return found
        scores, labels = np.concatenate(self._scores), np.concatenate(self._labels)
        self._scores, self._labels, self._held = [], [], 0
        for start in range(0, len(scores) - self.chunk + 1, self.chunk):
            s, y = scores[start:start + self.chunk], labels[start:start + self.chunk]
            values = {"auc": auc_score(s, y)}
            if not self._per_event_loss:
                values["log_loss"] = float(log_loss(s, y).mean())
            for signal, value in values.items():
                if not math.isnan(value) and self._signals[signal].update(value):
                    found.append(Detection(signal, value, self.events))
        rest = len(scores) % self.chunk
        if rest:
            self._scores, self._labels = [scores[-rest:]], [labels[-rest:]]
            self._held = rest
        return found
