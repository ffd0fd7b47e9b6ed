"""Context features of an event for backbones that use them: categorical ids, one column each.

``hour``: hour of day of the event time (UTC; an embedding does not care about the offset).
``duration``: video length bucket, ``1 + floor(log2(seconds))`` clipped to 1..15 (0: < 1 s).
``tab``: the app surface the video was shown on (``context.tab`` of the event, KuaiRand's
``tab``): ``1 + tab mod 15`` for a tab >= 0, 0 for none.
Sampled (vague) items take the event's hour and tab and the item's last seen duration bucket.

>>> import numpy as np
>>> event_features(np.array([3_600_000 * 25]), np.array([90_000]), np.array([4])).tolist()
[[1, 7, 5]]
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = ("hour", "duration", "tab")
FEATURE_SIZES = (24, 16, 16)
NO_TAB = -1  # a tab column's value for an event without one


def duration_bucket(duration_ms: np.ndarray) -> np.ndarray:
    seconds = np.maximum(duration_ms, 1) / 1000.0
    buckets = np.floor(np.log2(np.maximum(seconds, 0.5))).astype(np.int64) + 1
    return np.clip(buckets, 0, FEATURE_SIZES[1] - 1)


def tab_feature(tab: np.ndarray | None, n: int) -> np.ndarray:
    """The tab feature of ``n`` events from their tab column (``NO_TAB`` or None: none)."""
    if tab is None:
        return np.zeros(n, np.int64)
    tab = np.asarray(tab, np.int64)
    return np.where(tab >= 0, 1 + tab % (FEATURE_SIZES[2] - 1), 0)


def event_features(
    ts_ms: np.ndarray, duration_ms: np.ndarray, tab: np.ndarray | None = None
) -> np.ndarray:
    """An (n, 3) int64 array of (hour, duration bucket, tab) per event."""
    hour = (ts_ms // 3_600_000) % 24
    return np.stack([hour, duration_bucket(duration_ms), tab_feature(tab, len(ts_ms))],
                    axis=1).astype(np.int64)
