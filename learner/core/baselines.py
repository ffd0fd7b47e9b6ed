"""The counting baseline every model is judged beside: user's + video's running positive rate.

A model that does not beat two running counters is not worth serving (issue 20). The learner
scores each micro-batch with :class:`RunningRates` too, before it counts the batch (the same
prequential protocol as the model's), and keeps its AUC beside the model's: the daemon
exports it (``dwell_baseline_auc``), ``dwell eval`` reports it.

The score is ``(pos_u + 1) / (n_u + 2) + (pos_i + 1) / (n_i + 2)`` over the genuine
(positive or negative) events seen so far, halved to stay a probability. Counts are kept per
id-map row, so they grow with the tables and are cleared when a row is handed to a new id.

>>> import numpy as np
>>> rates = RunningRates()
>>> rates.observe(np.array([0, 0]), np.array([3, 4]), np.array([1.0, 1.0]))
>>> rates.score(np.array([0, 1]), np.array([3, 3])).round(3).tolist()
[0.708, 0.583]
"""

from __future__ import annotations

import numpy as np


class RunningRates:
    """Smoothed running positive rates of users and videos, by id-map row."""

    def __init__(self) -> None:
        self.users = np.zeros((0, 2))  # positives, genuine events
        self.videos = np.zeros((0, 2))

    @staticmethod
    def _grown(table: np.ndarray, rows: int) -> np.ndarray:
        if rows <= table.shape[0]:
            return table
        grown = np.zeros((max(rows, 2 * table.shape[0], 1024), 2))
        grown[: table.shape[0]] = table
        return grown

    def _ensure(self, users: np.ndarray, videos: np.ndarray) -> None:
        self.users = self._grown(self.users, int(users.max(initial=-1)) + 1)
        self.videos = self._grown(self.videos, int(videos.max(initial=-1)) + 1)

    def rates(self, users: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed running positive rates ``(pos + 1) / (n + 2)`` of these user rows
        and of these video rows."""
        self._ensure(users, videos)
        u, v = self.users[users], self.videos[videos]
        return (u[:, 0] + 1) / (u[:, 1] + 2), (v[:, 0] + 1) / (v[:, 1] + 2)

    def score(self, users: np.ndarray, videos: np.ndarray) -> np.ndarray:
        """The baseline's like probability of each (user row, video row) pair."""
        user_rate, video_rate = self.rates(users, videos)
        return 0.5 * (user_rate + video_rate)

    def observe(self, users: np.ndarray, videos: np.ndarray, positive: np.ndarray) -> None:
        """Count genuine events (``positive`` 1.0 or 0.0 each)."""
        self._ensure(users, videos)
        counted = np.column_stack([positive, np.ones_like(positive)])
        np.add.at(self.users, users, counted)
        np.add.at(self.videos, videos, counted)

    def forget(self, users: np.ndarray, videos: np.ndarray) -> None:
        """Clear rows handed to new ids."""
        self._ensure(users, videos)
        self.users[users] = 0
        self.videos[videos] = 0

    def state_dict(self) -> dict:
        return {"users": self.users.copy(), "videos": self.videos.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.users, self.videos = state["users"].copy(), state["videos"].copy()
