"""AUC estimators against an exact pairwise count."""

import numpy as np
import pytest

from learner.core.prequential import Evaluator, RunAUC, WindowAUC, auc_score


def pairwise_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(5))
def test_exact_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 700)
    scores = np.round(rng.random(700) + 0.3 * labels, 2)  # rounding makes many ties
    assert auc_score(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_auc_is_nan_with_one_class():
    assert np.isnan(auc_score(np.array([0.1, 0.2]), np.array([1, 1])))


def test_window_auc_covers_only_the_last_events():
    rng = np.random.default_rng(0)
    auc = WindowAUC(size=300)
    scores, labels = rng.random(1000), rng.integers(0, 2, 1000)
    for start in range(0, 1000, 77):  # batches that straddle the ring's end
        auc.update(scores[start : start + 77], labels[start : start + 77])
    assert auc.get() == pytest.approx(pairwise_auc(scores[-300:], labels[-300:]), abs=1e-12)


def test_run_auc_equals_pairwise_on_bin_quantised_scores():
    rng = np.random.default_rng(1)
    run = RunAUC(bins=1024)
    scores = (rng.integers(0, 1024, 5000) + 0.5) / 1024  # one score per bin: exact
    labels = (rng.random(5000) < scores).astype(int)
    for start in range(0, 5000, 333):
        run.update(scores[start : start + 333], labels[start : start + 333])
    assert run.get() == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_run_auc_close_to_exact_on_continuous_scores():
    rng = np.random.default_rng(2)
    scores = rng.random(20_000)
    labels = (rng.random(20_000) < scores).astype(int)
    run = RunAUC()
    run.update(scores, labels)
    assert run.get() == pytest.approx(pairwise_auc(scores, labels), abs=1e-4)


def test_evaluator_keys():
    ev = Evaluator(window=10)
    ev.update("dwell", np.array([0.9, 0.1]), np.array([1, 0]))
    values = ev.values()
    assert values[("short", "dwell")] == 1.0 and values[("run", "dwell")] == 1.0
    assert np.isnan(values[("run", "explicit")])
