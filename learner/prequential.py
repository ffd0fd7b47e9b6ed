"""Prequential (test-then-train) AUC: each batch is scored before the model learns from it.

Two estimators with one ``update(scores, labels)`` / ``get()`` interface:

- :class:`WindowAUC`: exact AUC (ties count one half) over the last ``size`` labelled events.
- :class:`RunAUC`: AUC over the whole run from two score histograms of ``bins`` bins on
  [0, 1]; exact up to scores that fall in the same bin (width 1/bins), which count as ties.
  Memory is constant however long the stream.

:class:`Evaluator` keeps one of each against the dwell-derived labels of genuine events and,
when events carry ``context.explicit`` (like/dislike), one of each against that as well.

>>> import numpy as np
>>> auc = WindowAUC(size=4)
>>> auc.update(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
>>> auc.get()
0.75
"""

from __future__ import annotations

import numpy as np


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC by the rank-sum (Mann-Whitney) formula; NaN without both classes."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mid_rank = upper - (counts - 1) / 2.0  # average 1-based rank of each distinct score
    rank_sum = mid_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class WindowAUC:
    """Exact AUC over a sliding window of the last ``size`` events (a ring buffer)."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._scores = np.zeros(size, dtype=np.float64)
        self._labels = np.zeros(size, dtype=np.int8)
        self._seen = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores, labels = scores[-self.size :], labels[-self.size :]
        slots = (self._seen + np.arange(scores.size)) % self.size
        self._scores[slots] = scores
        self._labels[slots] = labels
        self._seen += scores.size

    def state_dict(self) -> dict:
        return {"scores": self._scores.copy(), "labels": self._labels.copy(), "seen": self._seen}

    def load_state_dict(self, state: dict) -> None:
        self._scores, self._labels = state["scores"].copy(), state["labels"].copy()
        self.size, self._seen = self._scores.size, int(state["seen"])

    def get(self) -> float:
        n = min(self._seen, self.size)
        return auc_score(self._scores[:n], self._labels[:n])


class RunAUC:
    """AUC since the start of the run, from histograms of positive and negative scores."""

    def __init__(self, bins: int = 1 << 16) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        slots = np.clip((scores * self.bins).astype(np.int64), 0, self.bins - 1)
        labels = labels.astype(bool)
        self.pos += np.bincount(slots[labels], minlength=self.bins)
        self.neg += np.bincount(slots[~labels], minlength=self.bins)

    def state_dict(self) -> dict:
        return {"pos": self.pos.copy(), "neg": self.neg.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.neg = state["pos"].copy(), state["neg"].copy()
        self.bins = self.pos.size

    def get(self) -> float:
        n_pos, n_neg = self.pos.sum(), self.neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(self.neg) - self.neg
        wins = (self.pos * (neg_below + 0.5 * self.neg)).sum()
        return float(wins / (n_pos * n_neg))


class Evaluator:
    """Short-window and whole-run AUC, against dwell labels and against explicit feedback."""

    TARGETS = ("dwell", "explicit")

    def __init__(self, window: int = 5000) -> None:
        self.window = {t: WindowAUC(window) for t in self.TARGETS}
        self.run = {t: RunAUC() for t in self.TARGETS}

    def update(self, target: str, scores: np.ndarray, labels: np.ndarray) -> None:
        if scores.size:
            self.window[target].update(scores, labels)
            self.run[target].update(scores, labels)

    def state_dict(self) -> dict:
        return {t: {"window": self.window[t].state_dict(), "run": self.run[t].state_dict()}
                for t in self.TARGETS}

    def load_state_dict(self, state: dict) -> None:
        for t in self.TARGETS:
            self.window[t].load_state_dict(state[t]["window"])
            self.run[t].load_state_dict(state[t]["run"])

    def values(self) -> dict[tuple[str, str], float]:
        """AUC keyed by (window, target), window in {"short", "run"}."""
        out = {}
        for target in self.TARGETS:
            out[("short", target)] = self.window[target].get()
            out[("run", target)] = self.run[target].get()
        return out
