"""Concept shifts injected into a replay at a known point, to test drift detection.

- ``invert``: from the shift on, every user's taste is turned around: a video watched for
  a share ``r`` of its length is watched for ``1 - r`` instead (long watches become skips
  and skips long watches), and explicit like/dislike is flipped.
- ``swap_items``: from the shift on, video ids are permuted among themselves, so what the
  model learned about each video now belongs to another.

Events before the shift are untouched; the events are copied, not changed in place.

>>> events = [{"video_id": 1, "play_ms": 900, "duration_ms": 1000, "context": {"explicit": 1}},
...           {"video_id": 2, "play_ms": 100, "duration_ms": 1000, "context": {"explicit": 0}}]
>>> shifted = inject_shift(events, at=1, kind="invert")
>>> shifted[0] == events[0], shifted[1]["play_ms"], shifted[1]["context"]["explicit"]
(True, 900, 1)
"""

from __future__ import annotations

import copy

import numpy as np

SHIFTS = ("invert", "swap_items")


def inject_shift(events: list[dict], at: int, kind: str, seed: int = 0) -> list[dict]:
    """A copy of ``events`` with the shift ``kind`` applied from index ``at`` on."""
    if kind not in SHIFTS:
        raise ValueError(f"shift {kind!r}: expected one of {', '.join(SHIFTS)}")
    head, tail = events[:at], copy.deepcopy(events[at:])
    if kind == "invert":
        for event in tail:
            play, duration = event.get("play_ms"), event.get("duration_ms")
            if isinstance(play, int) and isinstance(duration, int) and duration > 0:
                ratio = min(play / duration, 1.0)
                event["play_ms"] = round((1.0 - ratio) * duration)
            context = event.get("context")
            if isinstance(context, dict) and context.get("explicit") in (0, 1):
                context["explicit"] = 1 - context["explicit"]
    else:
        ids = sorted({e["video_id"] for e in tail}, key=str)
        permuted = np.random.default_rng(seed).permutation(len(ids))
        mapping = {old: ids[j] for old, j in zip(ids, permuted, strict=True)}
        for event in tail:
            event["video_id"] = mapping[event["video_id"]]
    return head + tail
