"""``dwell eval --log``: any feed log, prequential, every learner beside the counting baselines.

The log is read by the replay's readers (the same ``--map``), encoded and decoded as on the
wire (invalid rows drop out as the daemon would dead-letter them), in event-time order, and
fed in micro-batches of 1,024 through :class:`~learner.core.trainer.OnlineLearner`: what
``dwell learn`` does, without Kafka. Each event is scored before anything learns from it.
The first ``TUNE_SHARE`` of the stream is for tuning; figures are reported on the rest:

- ``dwell``: AUC against the dwell labels of genuine events (what the learner trains on);
- ``engaged``: AUC of every event against explicit engagement (``--explicit``: any of the
  named columns set; the truth no dwell label sees);
- ``user_dwell``, ``user_engaged``: the mean per-user AUC over users with both classes;
- ``served_dwell``, ``served_engaged``: the same of the order a ranker serves, the score less
  its terms that depend on the user alone (:class:`Scored`). A per-user AUC pools a user's
  events over the whole log: a user's own terms, which move as the user is counted, shift
  every score of the user over time, while a ranking of candidates for one user at one moment
  never sees them (they are a constant there).

Scorers: learners (named settings over the defaults, :data:`LEARNERS`) and baselines
(:data:`BASELINES`): running counters and river's ``BiasedMF``, scored the same way.

>>> sorted(BASELINES)
['biased_mf', 'counters', 'video_rate', 'video_watch_ratio']
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from learner.bridge import to_events
from learner.core.baselines import RunningRates
from learner.core.batch import Events
from learner.core.ids.idmap import IdMap
from learner.core.labels import POSITIVE, VAGUE
from learner.core.prequential import auc_score
from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from learner.evaluation.protocol import per_user_auc
from producers.readers import order_by_time, read_log
from stream.errors import ConfigError
from stream.event import decode_batch

BATCH = 1024
TUNE_SHARE = 0.3
#: Learners by name: settings over the defaults (``default``: what ``dwell learn`` runs).
LEARNERS: dict[str, dict] = {
    "default": {},
    "default_idl": {"loss": "idl", "num_neg": 1},
    "default_idl_ig": {"loss": "idl", "num_neg": 1, "meta": "ig"},
    "default_tce": {"loss": "tce", "num_neg": 1},
    "default_rce": {"loss": "rce", "num_neg": 1},
    "wide_no_tab": {"_no_tab": True},
    "default_quantile_labels": {"label_rule": "quantile"},
    "default_quantile_labels_idl_ig": {"label_rule": "quantile", "loss": "idl", "num_neg": 1,
                                       "meta": "ig"},
    "gmf": {"model": "gmf", "lr": 0.01, "train_batch": 64},
    "gmf_idl_ig": {"model": "gmf", "lr": 0.01, "train_batch": 64,
                   "loss": "idl", "num_neg": 1, "meta": "ig"},
    "deepfm": {"model": "deepfm", "lr": 0.01, "train_batch": 64},
    "deepfm_idl_ig": {"model": "deepfm", "lr": 0.01, "train_batch": 64,
                      "loss": "idl", "num_neg": 1, "meta": "ig"},
}


@dataclass(frozen=True)
class FeedLog:
    """A feed log as the learner sees it: micro-batches, and per-event columns beside them."""

    batches: list[Events]
    users: np.ndarray  # int64 row of each event's user (first-seen order)
    videos: np.ndarray
    classes: np.ndarray  # dwell label class (POSITIVE, NEGATIVE, VAGUE)
    engaged: np.ndarray  # float: 1 engaged, 0 not, NaN unknown
    watch_ratio: np.ndarray
    dropped: int  # rows the wire rejected (as the daemon would dead-letter them)

    def __len__(self) -> int:
        return self.users.size


def load_feed(path: str | Path, mapping: Mapping[str, str] | None = None,
              explicit: Sequence[str] = (), fmt: str = "auto") -> FeedLog:
    """Read ``path`` as ``dwell replay`` would; ``explicit`` columns (0/1) make the engaged
    truth (any set), carried as ``context.explicit``."""
    mapping = dict(mapping or {})
    for column in explicit:
        mapping[f"context.{column}"] = column
    result = read_log(path, fmt, mapping or None)
    values = []
    for event in order_by_time(result.events):
        context = event.get("context")
        if explicit and context is not None:
            flags = [context.pop(column, None) for column in explicit]
            context["explicit"] = int(any(f not in (None, 0, False) for f in flags))
        values.append(orjson.dumps(event))
    batches, dropped = [], 0
    for start in range(0, len(values), BATCH):
        decoded = decode_batch(values[start:start + BATCH])
        dropped += len(decoded.rejected)
        if len(decoded):
            batches.append(to_events(decoded))
    if not batches:
        raise ConfigError(f"{path}: no valid event")
    users = _rows(np.concatenate([np.asarray(b.user_id, dtype=object) for b in batches]))
    videos = _rows(np.concatenate([np.asarray(b.video_id, dtype=object) for b in batches]))
    play = np.concatenate([b.play_ms for b in batches])
    duration = np.concatenate([b.duration_ms for b in batches])
    classes = LearnerSettings().labels.classify(play, duration)
    return FeedLog(batches, users, videos, classes,
                   np.concatenate([b.explicit for b in batches]).astype(float),
                   np.minimum(play / np.maximum(duration, 1), 5.0), dropped)


def _rows(ids: np.ndarray) -> np.ndarray:
    """Each id's row, numbered in order of first appearance (the learner's id map)."""
    return IdMap().lookup(ids.tolist())


class Scored(NamedTuple):
    """A scorer's prequential output: each event's score, and the order a ranker serves."""

    scores: np.ndarray
    #: the scores less the terms that depend on the user alone (any monotone transform)
    served: np.ndarray


def run_learner(feed: FeedLog, name: str, seed: int) -> tuple[Scored, float]:
    """Prequential scores of the learner ``name`` (:data:`LEARNERS`), and its events/s.

    The served order is the logit less :meth:`~learner.core.trainer.OnlineLearner.user_logits`,
    taken before the batch (the events/s include that query)."""
    overrides = dict(LEARNERS[name])
    no_tab = overrides.pop("_no_tab", False)
    learner = OnlineLearner(dataclasses.replace(LearnerSettings(seed=seed), **overrides))
    scores, user_logits = [], []
    started = time.perf_counter()
    for batch in feed.batches:
        if no_tab:
            batch = dataclasses.replace(batch, tab=None)
        user_logits.append(learner.user_logits(batch.user_id))
        scores.append(learner.learn_many(batch).scores)
    rate = len(feed) / (time.perf_counter() - started)
    p = np.clip(np.concatenate(scores).astype(np.float64), 1e-12, 1 - 1e-12)
    return Scored(p, np.log(p) - np.log1p(-p) - np.concatenate(user_logits)), rate


def _batched(feed: FeedLog, score: Callable[[slice], np.ndarray],
             learn: Callable[[slice], None]) -> np.ndarray:
    out = np.empty(len(feed))
    for start in range(0, len(feed), BATCH):
        part = slice(start, min(len(feed), start + BATCH))
        out[part] = score(part)
        learn(part)
    return out


def _running_rates(feed: FeedLog, score: Callable[[RunningRates, slice], np.ndarray]
                   ) -> np.ndarray:
    """``score`` of the learner's own running rates (learner.core.baselines), batch by batch."""
    rates = RunningRates()

    def learn(part: slice) -> None:
        genuine = feed.classes[part] != VAGUE
        rates.observe(feed.users[part][genuine], feed.videos[part][genuine],
                      (feed.classes[part][genuine] == POSITIVE).astype(float))

    return _batched(feed, lambda p: score(rates, p), learn)


def counters(feed: FeedLog, seed: int = 0) -> Scored:
    """The user's plus the video's running positive rate (the learner's own baseline); it
    serves the video's rate."""
    return Scored(_running_rates(feed, lambda rates, p: rates.score(feed.users[p],
                                                                    feed.videos[p])),
                  video_rate(feed, seed).served)


def video_rate(feed: FeedLog, seed: int = 0) -> Scored:
    """The video's running positive rate alone."""
    rate = _running_rates(feed, lambda rates, p: rates.rates(feed.users[p], feed.videos[p])[1])
    return Scored(rate, rate)


def video_watch_ratio(feed: FeedLog, seed: int = 0) -> Scored:
    """The video's running mean watch ratio (play / duration, capped at 5), every event."""
    sums = np.zeros((int(feed.videos.max()) + 1, 2))

    def learn(part: slice) -> None:
        np.add.at(sums[:, 0], feed.videos[part], feed.watch_ratio[part])
        np.add.at(sums[:, 1], feed.videos[part], 1.0)

    ratio = _batched(feed, lambda p: (sums[feed.videos[p], 0] + 0.5)
                     / (sums[feed.videos[p], 1] + 1), learn)
    return Scored(ratio, ratio)


def biased_mf(feed: FeedLog, seed: int = 0) -> Scored:
    """river's ``reco.BiasedMF`` (16 factors, SGD 0.05), ``learn_one`` on genuine events; it
    serves its prediction less the user's bias."""
    from river import optim, reco  # late: only this baseline needs river

    model = reco.BiasedMF(n_factors=16, latent_optimizer=optim.SGD(0.05),
                          bias_optimizer=optim.SGD(0.05), seed=seed)
    users, videos = feed.users.tolist(), feed.videos.tolist()
    user_bias = np.zeros(len(feed))

    def score(part: slice) -> np.ndarray:
        user_bias[part] = [model.u_biases.get(users[i], 0.0)
                           for i in range(part.start, part.stop)]
        return np.array([model.predict_one(users[i], videos[i])
                         for i in range(part.start, part.stop)])

    def learn(part: slice) -> None:
        for i in range(part.start, part.stop):
            if feed.classes[i] != VAGUE:
                model.learn_one(users[i], videos[i], float(feed.classes[i] == POSITIVE))

    scores = _batched(feed, score, learn)
    return Scored(scores, scores - user_bias)


BASELINES: dict[str, Callable[[FeedLog, int], Scored]] = {
    "counters": counters, "video_rate": video_rate, "video_watch_ratio": video_watch_ratio,
    "biased_mf": biased_mf,
}


def figures(feed: FeedLog, scored: Scored) -> dict[str, float]:
    """AUCs of ``scored`` on the reported part (after the first ``TUNE_SHARE``), and the
    dwell AUC of the tuning part."""
    scores, served = scored
    report = np.arange(len(feed)) >= int(TUNE_SHARE * len(feed))
    genuine = feed.classes != VAGUE
    known = ~np.isnan(feed.engaged)
    out = {}
    for prefix, part in (("", report), ("tune_", ~report)):
        dwell, engaged = part & genuine, part & known
        positive = (feed.classes == POSITIVE).astype(float)
        out[f"{prefix}dwell"] = auc_score(scores[dwell], positive[dwell])
        out[f"{prefix}engaged"] = auc_score(scores[engaged], feed.engaged[engaged])
        if not prefix:
            out["user_dwell"] = per_user_auc(feed.users[dwell], scores[dwell], positive[dwell])
            out["user_engaged"] = per_user_auc(feed.users[engaged], scores[engaged],
                                               feed.engaged[engaged])
            out["served_dwell"] = per_user_auc(feed.users[dwell], served[dwell],
                                               positive[dwell])
            out["served_engaged"] = per_user_auc(feed.users[engaged], served[engaged],
                                                 feed.engaged[engaged])
    return out


def evaluate(feed: FeedLog, scorer: str, seed: int) -> dict:
    """One run: ``scorer`` (a learner or a baseline) on ``feed``; a JSON-able dict."""
    started = time.perf_counter()
    if scorer in LEARNERS:
        scored, rate = run_learner(feed, scorer, seed)
    elif scorer in BASELINES:
        scored = BASELINES[scorer](feed, seed)
        rate = len(feed) / (time.perf_counter() - started)
    else:
        raise ConfigError(f"unknown scorer {scorer!r}: a learner ({', '.join(LEARNERS)}) or a "
                          f"baseline ({', '.join(BASELINES)})")
    return {"scorer": scorer, "seed": seed, **figures(feed, scored), "events_per_s": rate}
