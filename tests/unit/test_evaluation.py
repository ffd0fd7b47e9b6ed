"""dwell eval: metrics, the no-difference rule, the report, one real KuaiRand run."""

import numpy as np
import pytest

from learner.core.prequential import auc_score
from learner.evaluation import protocol
from learner.evaluation import results_page as report
from learner.evaluation.store import RunStore


def test_per_user_auc_averages_users_with_both_labels():
    users = np.array([1, 1, 1, 2, 2, 3, 3])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.4])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])  # user 3 has one class: left out
    expected = (auc_score(scores[:3], labels[:3]) + auc_score(scores[3:5], labels[3:5])) / 2
    assert protocol.per_user_auc(users, scores, labels) == pytest.approx(expected)


@pytest.mark.parametrize(
    "mine,base,mark",
    [((0.80, 0.01, 3), (0.70, 0.01, 3), " +"), ((0.70, 0.01, 3), (0.80, 0.02, 3), " -"),
     ((0.71, 0.01, 3), (0.70, 0.01, 3), " ="), ((0.75, 0.03, 3), (0.70, 0.001, 3), " =")],
)
def test_difference_below_twice_the_spread_is_no_difference(mine, base, mark):
    assert report.verdict(mine, base) == mark


def test_report_aggregates_seeds_and_draws(tmp_path):
    store = RunStore(tmp_path / "runs.jsonl")
    for seed, auc in enumerate((0.70, 0.72, 0.74)):
        for method, shift in (("bce_neg", 0.0), ("idl", 0.1)):
            store.add({"setting": "ml1m", "method": method, "model": "gmf", "seed": seed,
                       "auc": auc + shift, "wauc": 0.6, "events_per_s": 1000.0,
                       "curve": [[10, 0.5], [20, auc + shift]]})
    store.add({"setting": "ml1m", "method": "idl", "model": "gmf", "seed": 0, "tag": "tune:x",
               "auc": 0.0})  # tuning rows stay out of the tables
    agg = report.aggregate(store.rows())
    mean, std, n = agg[("ml1m", "gmf", "idl")]["auc"]
    # the sample standard deviation (n - 1), as the issue's spreads are
    assert (round(mean, 4), n) == (0.82, 3) and std == pytest.approx(np.std([0.8, 0.82, 0.84],
                                                                             ddof=1))
    feed = "<!-- feed:log -->\nthe feed log's section\n<!-- /feed:log -->\n"
    (tmp_path / "RESULTS.md").write_text(feed)
    path = report.write_results(store.rows(), tmp_path, {"tuned": {}, "machine": "test box"})
    text = path.read_text()
    assert "| idl | gmf | 0.8200 ± 0.0200 + |" in text
    assert feed in text  # the feed logs' sections are kept
    assert (tmp_path / "img" / "ml1m-gmf.png").stat().st_size > 1000


def test_kuairand_run_and_baselines():
    out = protocol.run("kuairand", "bce", "gmf", 0, {"lr": 0.03})
    assert 0.55 < out["auc"] < 0.95 and 0.5 < out["user_auc"] < 0.95
    assert len(out["curve"]) >= protocol.CURVE_POINTS and out["events_per_s"] > 0
    baselines = protocol.kuairand_baselines()
    assert baselines["popularity"]["auc"] > 0.85  # the file's construction, not a model
    quality = protocol.dwell_label_quality()
    assert sum(q["share"] for q in quality.values()) == pytest.approx(1.0)
    assert quality["positive"]["like_rate"] > quality["negative"]["like_rate"]
