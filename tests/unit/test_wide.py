"""The wide backbone's counts, the counting baseline, and the tab feature from the wire on.

The backbone checks every model passes are in ``test_backbones.py``; here, what is the wide
model's own: counts that grow and are cleared with the tables, a score that never sees its
own label, and a checkpoint that carries the counts and the baseline.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from learner.bridge import to_events
from learner.core.backbones import Wide
from learner.core.backbones.wide import PRIOR_EVENTS_START
from learner.core.batch import Events
from learner.core.features import event_features
from learner.core.optim import MixedAdam, ensure_rows, reset_rows
from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from producers.readers import detect_format, read_log
from stream.event import decode_batch, decode_each


def _events(users, videos, play, tab=None) -> Events:
    n = len(users)
    return Events(list(users), list(videos), np.asarray(play, np.int64),
                  np.full(n, 10_000, np.int64), np.arange(n, dtype=np.int64) * 1000,
                  np.full(n, np.nan, np.float32), None if tab is None else np.asarray(tab))


def test_counts_grow_with_the_tables_and_new_rows_start_at_zero():
    model = Wide(users=2, items=2)
    opt = MixedAdam(model, lr=0.01)
    model.observe(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]))
    ensure_rows(model, opt, users=5, items=3)
    assert model.user_counts.shape == (8, 2) and model.item_counts.shape == (4, 2)
    assert model.user_counts[1].tolist() == [1.0, 1.0] and model.user_counts[4:].sum() == 0
    assert "user_counts" in dict(model.named_buffers())  # still a buffer: in checkpoints
    reset_rows(model, opt, np.array([1]), np.array([0]))
    assert model.user_counts.sum() == 0 and model.item_counts.sum() == 0


def test_the_rates_prior_is_estimated_from_the_counts():
    """A new id's rate is one half (log-odds 0). Until enough events are counted the prior is
    two events; then it is re-estimated from how much the ids' rates vary: weak where
    videos differ, strong where they are alike, and a score's count feature follows it."""
    model = Wide(users=2, items=512)
    assert model.count_features(torch.tensor([0]), torch.tensor([0])).tolist() == [[0.0, 0.0]]
    model.observe(torch.tensor([1]), torch.tensor([1]), torch.tensor([1.0]))
    assert model.prior.tolist() == [PRIOR_EVENTS_START] * 2
    features = model.count_features(torch.tensor([1]), torch.tensor([1]))[0]
    assert torch.allclose(features, torch.log(torch.tensor([2 / 1, 2 / 1])))  # (1 + 1) / 1
    strengths = []
    for rates in ((0.9, 0.1), (0.55, 0.45)):  # videos 0-255 at the first, 256-511 the second
        model = Wide(users=2, items=512)
        items = torch.arange(512).repeat_interleave(40)
        rate = torch.where(items < 256, rates[0], rates[1])
        positive = (torch.rand(items.shape, generator=torch.Generator().manual_seed(0))
                    < rate).float()
        model.observe(torch.zeros_like(items), items, positive)
        strengths.append(float(model.prior[1]))
        k = model.prior[1]
        pos, n = model.item_counts[3]
        expected = torch.log(pos + k / 2) - torch.log(n - pos + k / 2)
        assert torch.isclose(model.count_features(torch.tensor([0]), torch.tensor([3]))[0, 1],
                             expected)
    apart, alike = strengths
    assert apart < 3 < 20 < alike


def test_the_counts_moments_kept_row_by_row_equal_a_full_recount():
    model = Wide(users=64, items=64)
    opt = MixedAdam(model, lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        users, items = torch.randint(0, 64, (50,), generator=gen), torch.randint(0, 64, (50,),
                                                                                   generator=gen)
        model.observe(users, items, (torch.rand(50, generator=gen) < 0.6).float())
    reset_rows(model, opt, np.array([3, 5, 5]), np.array([7]))  # evicted ids' rows
    assert model.user_counts[5].sum() == 0
    kept = model.moments.clone()
    model.counts_changed()
    assert torch.allclose(kept, model.moments, rtol=1e-12)
    assert model.prior.tolist() != [PRIOR_EVENTS_START] * 2  # 1,000 events: estimated


def test_a_score_never_sees_its_own_label():
    """Every event of a batch is scored before the model or the baseline counts it: the same
    batch with all labels flipped gets the same scores."""
    scores = []
    for play in (9_500, 500):  # positive, then negative: one user, one video
        learner = OnlineLearner(LearnerSettings(model="wide", train_batch=1024))
        learner.learn_many(_events([1, 2], [7, 8], [9_500, 500]))
        result = learner.learn_many(_events([1] * 4, [7] * 4, [play] * 4))
        scores.append((result.scores, result.baseline_scores))
    assert np.array_equal(scores[0][0], scores[1][0])
    assert np.array_equal(scores[0][1], scores[1][1])
    assert np.allclose(scores[0][1], 0.5 * (2 / 3 + 2 / 3))  # one positive each so far


def test_the_counting_baseline_is_evaluated_beside_the_model_and_checkpointed():
    rng = np.random.default_rng(0)
    learner = OnlineLearner(LearnerSettings(model="wide", train_batch=1024))
    for _ in range(5):
        users, videos = rng.integers(0, 30, 200), rng.integers(0, 20, 200)
        likes = (videos % 2 == 0)  # even videos are watched to the end
        learner.learn_many(_events(users.tolist(), videos.tolist(),
                                   np.where(likes, 9_900, 300), rng.integers(0, 3, 200)))
    base = learner.baseline_evaluator.values()[("run", "dwell")]
    assert base > 0.9  # the videos' rates separate the classes
    twin = OnlineLearner(LearnerSettings(model="wide", train_batch=1024))
    twin.load_state_dict(learner.state_dict())
    assert twin.baseline_evaluator.values()[("run", "dwell")] == base
    assert torch.equal(twin.model.item_counts, learner.model.item_counts)
    probe = _events([3, 4], [2, 5], [0, 0], [1, 2])
    assert np.array_equal(twin.learn_many(probe).scores, learner.learn_many(probe).scores)


def test_tab_is_read_from_context_on_both_decoding_paths():
    def record(context) -> bytes:
        return orjson.dumps({"user_id": 1, "video_id": 2, "play_ms": 5, "duration_ms": 10,
                             "ts_ms": 0, "context": context})

    values = [record({"tab": 3}), record({"tab": -1}), record({"tab": 2.0}),
              record({"tab": "3"}), record({"tab": True}), record({"tab": 2**40}),
              record({"explicit": 1}), record(None), record({"tab": 0, "explicit": 0}),
              b'{"user_id": 1, "video_id": 2, "play_ms": 5, "duration_ms": 10, "ts_ms": 0, '
              b'"context": {"tab": 4, "tab": 5}}']
    want = [3, -1, -1, -1, -1, -1, -1, -1, 0]
    scanned, general = decode_batch(values), decode_each(values)
    assert scanned.tab.tolist()[:9] == general.tab.tolist()[:9] == want
    assert scanned.tab.tolist()[9] == general.tab.tolist()[9]  # a repeated key: the last
    assert to_events(scanned).tab is scanned.tab
    assert event_features(np.zeros(3, np.int64), np.full(3, 1000),
                          np.array([-1, 0, 16]))[:, 2].tolist() == [0, 1, 2]


def test_a_parquet_log_is_read_through_the_mapping(tmp_path):
    path = tmp_path / "feed.parquet"
    pq.write_table(pa.table({"uid": [1, 2], "vid": ["a", "b"], "play": [900, 10],
                             "dur": [1000, 1000], "t": [5, 6], "tab": [3, None]}), path)
    assert detect_format(path) == "parquet"
    result = read_log(path, mapping={"user_id": "uid", "video_id": "vid", "play_ms": "play",
                                     "duration_ms": "dur", "ts_ms": "t", "context.tab": "tab"})
    assert result.rows_read == 2 and result.rejected_total == 0
    assert result.events[0]["context"] == {"tab": 3} and "context" not in result.events[1]
    with pytest.raises(Exception, match="no column"):
        read_log(path, mapping={"user_id": "uid", "video_id": "nope", "play_ms": "play",
                                "duration_ms": "dur", "ts_ms": "t"})


def test_quantile_labels_judge_a_watch_against_earlier_watches_of_the_same_length():
    from learner.core.quantile_labels import DurationQuantileLabels

    labels = DurationQuantileLabels(min_seen=100)
    rng = np.random.default_rng(0)
    short, long_ = np.full(400, 10_000), np.full(400, 300_000)
    # short videos are watched 2-12 s, long ones 5-60 s: each length has its own scale
    labels.classify(rng.integers(2_000, 12_000, 400), short)
    labels.classify(rng.integers(5_000, 60_000, 400), long_)
    got = labels.classify(np.array([11_500, 11_500, 2_500, 58_000]),
                          np.array([10_000, 300_000, 10_000, 300_000]))
    assert got.tolist() == [1, 0, 0, 1]  # 11.5 s: near the top for a short video, low for a long
    cold = DurationQuantileLabels(min_seen=100)  # no history: the fixed thresholds
    assert cold.classify(np.array([9_500]), np.array([10_000])).tolist() == [1]
    learner = OnlineLearner(LearnerSettings(label_rule="quantile"))
    learner.learn_many(_events([1, 2], [3, 4], [9_000, 100]))
    twin = OnlineLearner(LearnerSettings(label_rule="quantile"))
    twin.load_state_dict(learner.state_dict())
    assert np.array_equal(twin.labeler.counts, learner.labeler.counts)
    with pytest.raises(Exception, match="label_rule"):
        OnlineLearner(LearnerSettings(label_rule="nope"))
