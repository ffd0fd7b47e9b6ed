"""One evaluation run: a method, a backbone and a seed on one setting; the methods.

Settings:

- ``ml1m``: the paper's benchmark. One online pass over the training split (the reference's
  validation-picked epoch was the first or second in almost every run); test AUC over the
  observed test ratings (liked against disliked) and the mean per-user AUC (``wauc``), as
  the reference's ``evaluate.test_all_users``; test AUC is also taken along the way.
- ``recovery``: ml1m with the ratings of a random 30% of the training interactions hidden
  (trained as vague). How well each method's inferred label for them matches the hidden
  rating: AUC and accuracy of the score when first seen (before training on it) and after
  the pass. IDL's weight ``wp`` is a monotone function of the score (``wp > 0.5`` exactly
  when the score is), so it has the same AUC and accuracy.
- ``kuairand``: dwell labels only for training; every event scored before training on it
  against the explicit like/hate; reported on the stream after its first ``TUNE_SHARE``
  (which is left for tuning): overall AUC, per-user AUC, AUC on warm videos (seen in an
  earlier batch).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import cache

import numpy as np

from learner.core.features import FEATURE_SIZES
from learner.core.labels import NEGATIVE, POSITIVE, VAGUE
from learner.core.prequential import auc_score
from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.evaluation.datasets import Ratings, kuairand_batches, load_ml1m, rating_batches

logger = logging.getLogger(__name__)

SETTINGS = ("ml1m", "recovery", "kuairand")
METHODS: dict[str, dict] = {
    "bce": {"loss": "bce", "num_neg": 0},  # genuine events only
    "bce_neg": {"loss": "bce_neg", "num_neg": 1},  # vague (sampled and mid-band) as negative
    "tce": {"loss": "tce", "num_neg": 1},
    "rce": {"loss": "rce", "num_neg": 1},
    "idl": {"loss": "idl", "num_neg": 1},
    "idl_ig": {"loss": "idl", "num_neg": 1, "meta": "ig"},
}
BATCH = 1024
HIDDEN_SHARE = 0.3
TUNE_SHARE = 0.3
CURVE_POINTS = 20


def per_user_auc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUC over users that have both labels."""
    order = np.argsort(users, kind="stable")
    users, scores, labels = users[order], scores[order], labels[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    aucs = [
        auc_score(s, y)
        for s, y in zip(np.split(scores, bounds), np.split(labels, bounds), strict=True)
        if 0 < y.sum() < y.size
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def _learner(method: str, model: str, seed: int, tuned: dict) -> OnlineLearner:
    settings = dataclasses.replace(
        LearnerSettings(**{**PAPER_SETTINGS, "model": model}, seed=seed), **METHODS[method],
        **tuned,
    )
    return OnlineLearner(settings)


def _score_known(learner: OnlineLearner, ratings: Ratings) -> np.ndarray:
    """Scores of rated pairs; a user or item never seen in training scores 0.5."""
    users = learner.users.lookup(ratings.users.tolist(), add=False)
    items = learner.videos.lookup(ratings.items.tolist(), add=False)
    known = (users >= 0) & (items >= 0)
    scores = np.full(users.size, 0.5)
    feats = np.zeros((int(known.sum()), len(FEATURE_SIZES)), np.int64)
    scores[known] = learner.score_rows(users[known], items[known], feats)
    return scores


@cache
def _ml1m() -> tuple[Ratings, Ratings, Ratings]:
    return load_ml1m()


def run_ml1m(method: str, model: str, seed: int, tuned: dict, hidden: bool = False) -> dict:
    """Train on the training split; test AUC, wauc, validation AUC, a curve; recovery too.

    ``tuned["epochs"]`` (default 1) passes over the training split; the pass with the best
    validation AUC is reported (the reference picks its epoch on the same validation rows).
    """
    train, valid, test = _ml1m()
    tuned = dict(tuned)
    epochs = int(tuned.pop("epochs", 1))
    learner = _learner(method, model, seed, tuned)
    classes_all = np.where(train.labels == 1, POSITIVE, NEGATIVE).astype(np.int8)
    hidden_mask = np.zeros(len(train), bool)
    if hidden:
        rng = np.random.default_rng(1000 + seed)
        hidden_mask[rng.choice(len(train), int(HIDDEN_SHARE * len(train)), replace=False)] = True
        classes_all[hidden_mask] = VAGUE
    batches = rating_batches(train, BATCH)
    every = max(1, epochs * len(batches) // CURVE_POINTS)
    curve, first_scores, best = [], [], None
    started = time.perf_counter()
    for epoch in range(epochs):
        for i, batch in enumerate(batches):
            result = learner.learn_many(batch, classes_all[i * BATCH : i * BATCH + len(batch)])
            if epoch == 0:
                first_scores.append(result.scores)
            step = epoch * len(batches) + i + 1
            if step % every == 0:
                test_auc = auc_score(_score_known(learner, test), test.labels)
                curve.append((epoch * len(train) + i * BATCH + len(batch), test_auc))
        valid_auc = auc_score(_score_known(learner, valid), valid.labels)
        if best is None or valid_auc > best["valid_auc"]:
            test_scores = _score_known(learner, test)
            best = {
                "auc": auc_score(test_scores, test.labels),
                "wauc": per_user_auc(test.users, test_scores, test.labels),
                "valid_auc": valid_auc,
                "epoch": epoch + 1,
            }
    seconds = time.perf_counter() - started
    out = {**best, "curve": curve, "seconds": seconds,
           "events_per_s": epochs * len(train) / seconds}
    if hidden:
        truth = train.labels[hidden_mask]
        at_sight = np.concatenate(first_scores)[hidden_mask]
        after = _score_known(learner, train.subset(np.flatnonzero(hidden_mask)))
        out.update({
            "recovery_auc_at_sight": auc_score(at_sight, truth),
            "recovery_acc_at_sight": float(((at_sight > 0.5) == truth).mean()),
            "recovery_auc_after": auc_score(after, truth),
            "recovery_acc_after": float(((after > 0.5) == truth).mean()),
        })
    return out


@cache
def _kuairand():
    batches = kuairand_batches(BATCH)
    users = np.concatenate([np.asarray(b.user_id) for b in batches])
    videos = np.concatenate([np.asarray(b.video_id) for b in batches])
    explicit = np.concatenate([b.explicit for b in batches])
    batch_of = np.concatenate([np.full(len(b), i) for i, b in enumerate(batches)])
    # seen-before and running popularity, counting earlier batches only
    first_batch: dict = {}
    for v, i in zip(videos.tolist(), batch_of.tolist(), strict=True):
        first_batch.setdefault(v, i)
    warm = np.fromiter((first_batch[v] for v in videos.tolist()), np.int64) < batch_of
    popularity = np.zeros(videos.size)
    counts: dict = {}
    start = 0
    for b in batches:
        part = slice(start, start + len(b))
        popularity[part] = [counts.get(v, 0) for v in b.video_id]
        for v in b.video_id:
            counts[v] = counts.get(v, 0) + 1
        start += len(b)
    report = np.arange(users.size) >= int(TUNE_SHARE * users.size)
    return batches, {"users": users, "explicit": explicit, "warm": warm,
                     "popularity": popularity, "report": report}


def slice_aucs(scores: np.ndarray, stream: dict, part: np.ndarray) -> dict:
    """Overall, per-user and warm-video AUC against the explicit label on ``part``."""
    y = stream["explicit"]
    warm = part & stream["warm"]
    return {
        "auc": auc_score(scores[part], y[part]),
        "user_auc": per_user_auc(stream["users"][part], scores[part], y[part]),
        "warm_auc": auc_score(scores[warm], y[warm]),
    }


def kuairand_baselines() -> dict:
    """Popularity and seen-before scores on the report part, the same slices."""
    _batches, stream = _kuairand()
    part = stream["report"]
    pop = stream["popularity"]
    return {
        "popularity": slice_aucs(pop, stream, part),
        "seen_before": slice_aucs((pop > 0).astype(float), stream, part),
    }


def dwell_label_quality(rule=None) -> dict:
    """Share of explicit likes in each dwell band over the whole KuaiRand stream."""
    batches, stream = _kuairand()
    rule = rule or LearnerSettings().labels
    classes = np.concatenate([rule.classify(b.play_ms, b.duration_ms) for b in batches])
    y = stream["explicit"]
    return {
        name: {"share": float((classes == c).mean()), "like_rate": float(y[classes == c].mean())}
        for c, name in ((POSITIVE, "positive"), (NEGATIVE, "negative"), (VAGUE, "vague"))
    }


def run_kuairand(method: str, model: str, seed: int, tuned: dict) -> dict:
    """Prequential AUC against like/hate, trained on dwell labels only."""
    batches, stream = _kuairand()
    learner = _learner(method, model, seed, tuned)
    scores, curve, seen = [], [], 0
    every = max(1, len(batches) // CURVE_POINTS)
    started = time.perf_counter()
    for i, batch in enumerate(batches):
        scores.append(learner.learn_many(batch).scores)
        seen += len(batch)
        if (i + 1) % every == 0 or i + 1 == len(batches):
            curve.append((seen, learner.evaluator.values()[("short", "explicit")]))
    seconds = time.perf_counter() - started
    scores = np.concatenate(scores)
    out = slice_aucs(scores, stream, stream["report"])
    tune = ~stream["report"]
    out["tune_auc"] = auc_score(scores[tune], stream["explicit"][tune])
    out.update(curve=curve, seconds=seconds, events_per_s=seen / seconds)
    return out


def run(setting: str, method: str, model: str, seed: int, tuned: dict) -> dict:
    """Dispatch one run; the result is a JSON-able dict."""
    if setting == "ml1m":
        return run_ml1m(method, model, seed, tuned)
    if setting == "recovery":
        return run_ml1m(method, model, seed, tuned, hidden=True)
    if setting == "kuairand":
        return run_kuairand(method, model, seed, tuned)
    raise ValueError(setting)
