"""Duration-aware dwell labels learned from the stream: a watch's quantile among its peers.

A fixed ratio threshold is biased by the video's length: 90% of a 10-second video is an easy
positive, 90% of a 5-minute one a rare feat (D2Q, Zhan et al., KDD 2022; D2Co, RecSys 2023).
:class:`DurationQuantileLabels` labels a watch by where its play time falls among the earlier
watches of videos of the same length bucket (:func:`learner.core.features.duration_bucket`):
positive at or above the ``positive`` quantile, negative at or below the ``negative`` one,
vague between (the same three bands as the fixed rule, in the same terms as the label).

Play times are kept as one histogram per length bucket, of ``log1p(play seconds)`` in
``BINS`` bins, counted after the batch is labelled (each watch is judged against earlier
ones only); a bucket with fewer than ``MIN_SEEN`` watches falls back to the fixed rule.
Constant memory, one numpy pass a batch.

>>> import numpy as np
>>> labels = DurationQuantileLabels(min_seen=4)
>>> warm = labels.classify(np.array([1_000, 2_000, 3_000, 4_000]), np.full(4, 60_000))
>>> labels.classify(np.array([500, 2_500, 9_000]), np.full(3, 60_000)).tolist()
[0, -1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.core.features import FEATURE_SIZES, duration_bucket
from learner.core.labels import NEGATIVE, POSITIVE, VAGUE, LabelRule

BINS = 256
MAX_LOG_PLAY = np.log1p(24 * 3600.0)  # a day, in log1p(seconds): the histograms' top
MIN_SEEN = 200


@dataclass
class DurationQuantileLabels:
    """Positive, negative or vague by the play time's quantile within its length bucket."""

    positive: float = 0.7
    negative: float = 0.3
    min_seen: int = MIN_SEEN
    fallback: LabelRule = field(default_factory=LabelRule)
    counts: np.ndarray = field(
        default_factory=lambda: np.zeros((FEATURE_SIZES[1], BINS), np.int64))

    def classify(self, play_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
        """Label the batch against the watches before it, then count it."""
        buckets = duration_bucket(np.asarray(duration_ms))
        bins = np.minimum((np.log1p(np.asarray(play_ms) / 1000.0) / MAX_LOG_PLAY * BINS)
                          .astype(np.int64), BINS - 1)
        below = np.cumsum(self.counts, axis=1) - self.counts  # watches in lower bins
        seen = self.counts.sum(axis=1)[buckets]
        # mid-rank quantile: ties (the same bin) count one half
        quantile = (below[buckets, bins] + 0.5 * self.counts[buckets, bins]) / np.maximum(seen, 1)
        labels = np.where(quantile >= self.positive, POSITIVE,
                          np.where(quantile <= self.negative, NEGATIVE, VAGUE)).astype(np.int8)
        cold = seen < self.min_seen
        if cold.any():
            labels[cold] = self.fallback.classify(np.asarray(play_ms)[cold],
                                                  np.asarray(duration_ms)[cold])
        np.add.at(self.counts, (buckets, bins), 1)
        return labels

    def state_dict(self) -> dict:
        return {"counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].copy()
