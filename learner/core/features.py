"""Context features of an event for backbones that use them: categorical ids, one column each.

``hour``: hour of day of the event time (UTC; an embedding does not care about the offset).
``duration``: video length bucket, ``1 + floor(log2(seconds))`` clipped to 1..15 (0: < 1 s).
Sampled (vague) items take the event's hour and the item's last seen duration bucket.

>>> import numpy as np
>>> event_features(np.array([3_600_000 * 25]), np.array([90_000])).tolist()
[[1, 7]]
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = ("hour", "duration")
FEATURE_SIZES = (24, 16)


def duration_bucket(duration_ms: np.ndarray) -> np.ndarray:
    seconds = np.maximum(duration_ms, 1) / 1000.0
    buckets = np.floor(np.log2(np.maximum(seconds, 0.5))).astype(np.int64) + 1
    return np.clip(buckets, 0, FEATURE_SIZES[1] - 1)


def event_features(ts_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
    """An (n, 2) int64 array of (hour, duration bucket) per event."""
    hour = (ts_ms // 3_600_000) % 24
    return np.stack([hour, duration_bucket(duration_ms)], axis=1).astype(np.int64)
