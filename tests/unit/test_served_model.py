"""The served model: scores equal the learner's (every backbone), unknown ids on a zero row,
no state change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.core.batch import Events
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.serving.model import Layout, ServedModel


def _trained(model: str, users: int = 40, videos: int = 30, n: int = 600,
             **settings) -> OnlineLearner:
    learner = OnlineLearner(LearnerSettings(model=model, dim=8, loss="bce", kernel="torch",
                                            **settings))
    rng = np.random.default_rng(1)
    for _ in range(3):
        learner.learn_many(Events(
            rng.integers(0, users, n).tolist(), [f"v{i}" for i in rng.integers(0, videos, n)],
            rng.integers(0, 300_000, n), rng.integers(1_000, 300_000, n),
            rng.integers(0, 86_400_000 * 3, n), np.full(n, np.nan, np.float32)))
    return learner


@pytest.mark.parametrize("model", ["wide", "gmf", "neumf", "deepfm"])
def test_scores_equal_the_learners(model: str) -> None:
    learner = _trained(model)
    served = ServedModel.from_learner(learner, version=3, newest_event_ms=5)
    users = list(range(40))
    videos = [f"v{i}" for i in np.random.default_rng(2).integers(0, 30, 40)]
    np.testing.assert_allclose(served.score(users, videos), learner.predict_many(users, videos),
                               atol=1e-6)
    feats = np.tile(np.array([[7, 3, 2]]), (40, 1))
    np.testing.assert_allclose(served.score(users, videos, feats),
                               learner.predict_many(users, videos, feats), atol=1e-6)
    assert (served.version, served.newest_event_ms) == (3, 5)


def test_the_served_model_is_a_copy() -> None:
    learner = _trained("wide")
    served = ServedModel.from_learner(learner, 1, 0)
    before = served.score([1, 2], ["v1", "v2"])
    _trained_more = learner.learn_many(Events(
        [1, 2] * 50, ["v1", "v2"] * 50, np.full(100, 90_000), np.full(100, 90_000),
        np.zeros(100, np.int64), np.full(100, np.nan, np.float32)))
    assert _trained_more.counts["positive"] == 100
    np.testing.assert_array_equal(served.score([1, 2], ["v1", "v2"]), before)
    assert not np.allclose(learner.predict_many([1, 2], ["v1", "v2"]), before, atol=1e-6)


def test_unknown_ids_score_on_a_zero_row_and_change_nothing() -> None:
    learner = _trained("wide")
    served = ServedModel.from_learner(learner, 1, 0)
    assert served.known_users([1, 999, "1"]).tolist() == [True, False, False]
    assert served.known_videos(["v1", 1]).tolist() == [True, False]
    n_users, n_videos = served.n_users, served.n_videos
    unknown = served.score([999, 998], ["nope", "v1"])
    assert (served.n_users, served.n_videos) == (n_users, n_videos)
    # the unknown user with the unknown video: the global bias and context only
    wide = learner.model
    expected = torch.sigmoid(wide.bias + wide.context[wide.offsets].sum()).item()
    assert unknown[0] == pytest.approx(expected, abs=1e-6)
    assert served.known_users([999]).tolist() == [False]
    with pytest.raises(ValueError, match="user ids for"):
        served.score([1], ["v1", "v2"])


def test_bounded_maps_keep_only_the_ids_they_hold() -> None:
    learner = _trained("wide", users=40, max_users=50)
    learner.learn_many(Events(list(range(40, 80)), ["v1"] * 40, np.full(40, 9_000),
                              np.full(40, 9_000), np.zeros(40, np.int64),
                              np.full(40, np.nan, np.float32)))
    assert learner.evictions["user"] == 30
    served = ServedModel.from_learner(learner, 1, 0)
    assert served.n_users == 50
    held = [u for u in range(80) if u in learner.users]
    np.testing.assert_allclose(served.score(held, ["v1"] * len(held)),
                               learner.predict_many(held, ["v1"] * len(held)), atol=1e-6)


def test_layout_round_trips() -> None:
    learner = _trained("neumf")
    layout = Layout.of(learner.model, "neumf", 8)
    assert Layout.from_dict(layout.as_dict()) == layout
    assert layout.width("user") == layout.width("item") == 8 + 32  # GMF and MLP embeddings
