"""The popular pool: decayed views in event time, a bounded number of videos, and the rescale
that keeps weights finite over years of events."""

from __future__ import annotations

import numpy as np
import pytest

from learner.serving.pool import PopularityPool

HOUR_S = 3600.0
HOUR_MS = 3_600_000


def test_views_decay_by_half_lives_of_event_time():
    pool = PopularityPool(size=3, half_life_s=HOUR_S, tracked=10)
    pool.add(["old"] * 8, np.zeros(8, np.int64))
    pool.add(["new"] * 3, np.full(3, 2 * HOUR_MS))
    ids, views = pool.top()
    assert ids == ["new", "old"]
    assert views.tolist() == pytest.approx([3.0, 2.0])  # 8 views two half-lives back
    assert pool.weights(["old", "never"]).tolist() == pytest.approx([2.0, 0.0])


def test_events_out_of_order_count_by_their_own_time():
    pool = PopularityPool(size=2, half_life_s=HOUR_S, tracked=10)
    pool.add(["a", "b"], np.array([HOUR_MS, 0]))
    assert pool.top()[1].tolist() == pytest.approx([1.0, 0.5])


def test_the_weights_stay_finite_over_years_of_events():
    pool = PopularityPool(size=2, half_life_s=60.0, tracked=10)
    pool.add(["a"], np.array([0]))
    year_ms = 365 * 24 * HOUR_MS
    for t in range(1, 11):  # ten years of one-minute half-lives: 2**5e6 without a rescale
        pool.add(["b", "b"], np.array([t * year_ms, t * year_ms]))
    ids, views = pool.top()
    assert ids == ["b", "a"] and np.isfinite(views).all()
    assert views[0] == pytest.approx(2.0) and views[1] == 0.0


def test_at_most_tracked_videos_the_least_recently_viewed_forgotten():
    pool = PopularityPool(size=2, half_life_s=HOUR_S, tracked=3)
    pool.add(["a"] * 5 + ["b", "c"], np.zeros(7, np.int64))
    pool.add(["d"], np.zeros(1, np.int64))  # "a", "b", "c" were seen at once: one of them goes
    assert len(pool) == 3
    pool.add(["e"], np.zeros(1, np.int64))
    ids, views = pool.top(5)
    assert len(ids) == 3 and "e" in ids and "d" in ids
    assert views.sum() <= 7  # a forgotten video's views went with it, none moved to "e"
    assert pool.weights(["e"])[0] == 1.0


def test_top_is_cached_until_an_add_and_sized():
    pool = PopularityPool(size=2, half_life_s=HOUR_S, tracked=100)
    pool.add([f"v{i}" for i in range(10) for _ in range(i)], np.zeros(45, np.int64))
    assert pool.top()[0] == ["v9", "v8"]
    assert pool.top(4)[0] == ["v9", "v8", "v7", "v6"]
    pool.add(["v1"] * 20, np.zeros(20, np.int64))
    assert pool.top(1)[0] == ["v1"]
    assert PopularityPool(size=2, half_life_s=1.0, tracked=5).top() == ([], pytest.approx([]))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="tracked"):
        PopularityPool(size=10, half_life_s=1.0, tracked=5)
    with pytest.raises(ValueError, match="half-life"):
        PopularityPool(size=1, half_life_s=0.0, tracked=5)
