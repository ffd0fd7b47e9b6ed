"""``dwell eval --log``: a slice of the shipped KuaiRand-Pure feed through every kind of scorer.

The figures are checked for what they must be whatever the model: in range, the served order
of a scorer with no user terms equal to its score's, the counters' served order the video
rate's, and a learner's served order within one batch the order of its scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from learner.cli import main
from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from learner.evaluation import feed as feed_eval

LOG = Path(__file__).resolve().parents[2] / "data" / "kuairand_pure_val" / "val.parquet"
MAP = {"user_id": "user_id", "video_id": "video_id", "play_ms": "play_time_ms",
       "duration_ms": "duration_ms", "ts_ms": "time_ms", "context.tab": "tab"}
EXPLICIT = ("is_like", "is_follow", "is_comment", "is_forward")


@pytest.fixture(scope="module")
def log_slice(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "slice.parquet"
    pq.write_table(pq.read_table(LOG).slice(0, 12_000), path)
    return path


@pytest.fixture(scope="module")
def feed(log_slice):
    return feed_eval.load_feed(log_slice, MAP, EXPLICIT)


def test_every_scorer_reports_every_figure_in_range(feed):
    for scorer in ("default", "counters", "video_rate", "video_watch_ratio", "biased_mf"):
        row = feed_eval.evaluate(feed, scorer, seed=0)
        for key in ("dwell", "engaged", "user_dwell", "user_engaged", "served_dwell",
                    "served_engaged", "tune_dwell", "tune_engaged"):
            assert 0.3 < row[key] < 1.0, (scorer, key, row[key])
        assert row["events_per_s"] > 0


def test_served_order_drops_the_user_terms_only(feed):
    rate = feed_eval.video_rate(feed)
    assert np.array_equal(rate.served, rate.scores)  # no user term: the same order
    counters = feed_eval.counters(feed)
    assert np.array_equal(counters.served, rate.scores)  # user + video rate serves the video's
    assert not np.array_equal(counters.scores, rate.scores)
    assert feed_eval.figures(feed, counters)["served_dwell"] == \
        feed_eval.figures(feed, rate)["user_dwell"]


def test_a_learners_served_order_is_its_order_for_one_user_at_one_moment(feed):
    """Within one batch the user terms are a constant per user: for every user, the served
    order of the batch's events is the order of the scores."""
    learner = OnlineLearner(LearnerSettings(seed=0))
    for batch in feed.batches[:3]:
        user_logits = learner.user_logits(batch.user_id)
        p = np.clip(learner.learn_many(batch).scores.astype(np.float64), 1e-12, 1 - 1e-12)
        served = np.log(p) - np.log1p(-p) - user_logits
    assert np.abs(user_logits).max() > 0  # the last batch's users were known: terms to drop
    users = np.asarray(batch.user_id)
    for user in np.unique(users):
        mine = users == user
        if mine.sum() > 2:
            assert np.array_equal(np.argsort(p[mine], kind="stable"),
                                  np.argsort(served[mine], kind="stable"))


def test_user_logits_is_a_pure_query(feed):
    learner = OnlineLearner(LearnerSettings(seed=0))
    learner.learn_many(feed.batches[0])
    before = len(learner.users)
    assert learner.user_logits(["nobody", "nor anybody"]).tolist() == [0.0, 0.0]
    assert len(learner.users) == before


def test_the_command_writes_its_results_and_rebuilds_the_page_from_them(log_slice, tmp_path):
    args = ["eval", "--log", str(log_slice), "--name", "slice", "--out", str(tmp_path),
            "--map", *(f"{k}={v}" for k, v in MAP.items()), "--explicit", ",".join(EXPLICIT),
            "--seeds", "0,1", "--scorers", "default,counters"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "results" / "feed-slice.jsonl").open()]
    assert sorted((r["scorer"], r["seed"]) for r in rows) == [
        ("counters", 0), ("counters", 1), ("default", 0), ("default", 1)]
    page = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- feed:slice -->" in page and "| default | 2 |" in page
    (tmp_path / "RESULTS.md").write_text("")
    assert main([*args, "--report-only"]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == page
