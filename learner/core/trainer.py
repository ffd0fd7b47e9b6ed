"""The online learner: label, map ids, score (prequential), then train, one micro-batch at a time.

River's verbs, for batches: :meth:`OnlineLearner.predict_many` scores pairs,
:meth:`OnlineLearner.learn_many` tests then trains on a batch of event columns
(:class:`~learner.core.batch.EventColumns`).

Per micro-batch: dwell labels (or labels given by the caller), id rows, context features;
every real event is scored before any training on the batch; then ``num_neg`` unseen items
per event are drawn as extra vague events, and the batch is trained in shuffled steps of
``train_batch`` events, either with the configured loss or (``meta="ig"``) with the
Inverse Gradient step of :mod:`learner.core.meta`, whose meta batch is the step's genuine events
(``meta_source="batch"``) or a draw from a reservoir of recent genuine events.

With id-map capacities (``max_users``, ``max_videos``) the least recently seen ids are evicted
and their rows handed to new ids, started afresh (see :meth:`OnlineLearner._recycle`).

>>> from learner.core.batch import Events
>>> learner = OnlineLearner(LearnerSettings(dim=4))
>>> one = Events([1], [2], np.array([9000]), np.array([9000]), np.array([0]),
...              np.array([np.nan], np.float32))
>>> learner.learn_many(one).counts
{'positive': 1, 'negative': 0, 'vague': 0}
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from learner.core.backbones import make_backbone
from learner.core.baselines import RunningRates
from learner.core.batch import EventColumns
from learner.core.devices import resolve_device, rng_state, set_rng_state, to_device
from learner.core.errors import ConfigError
from learner.core.fast import CompiledStep, make_inverse_gradient, make_loss_step
from learner.core.features import FEATURE_SIZES, event_features
from learner.core.ids.idmap import IdMap
from learner.core.labels import CLASS_NAMES, NEGATIVE, POSITIVE, VAGUE, LabelRule
from learner.core.losses import make_loss
from learner.core.meta import BRANCHES, InverseGradient, Pairs
from learner.core.optim import MixedAdam, ensure_rows, reset_rows
from learner.core.prequential import Evaluator
from learner.core.quantile_labels import DurationQuantileLabels
from learner.core.sampling import NegativeSampler, Reservoir
from learner.core.settings import LABEL_RULES, LearnerSettings
from learner.core.updates import UpdateLog

logger = logging.getLogger(__name__)

#: A micro-batch of fewer pairs trains in the foreground even when asked to train in the
#: background: handing it to the second thread and back costs ~0.25 ms, more than such a
#: batch's compiled steps take (offline, GMF IDL+IG: 210,000 events/s in the foreground
#: against 172,000 in the background at 256 events a batch; 308,000 against 330,000 at 1,024)
BACKGROUND_MIN_PAIRS = 1024
TRAINED_KEPT = 16  # background training results kept until trained() collects them


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one micro-batch did."""

    counts: dict[str, int]  # real events by label class
    steps: int
    loss: float
    sampled: int = 0  # sampled unseen items trained as vague
    vague_positive: int = 0  # vague events (real and sampled) the model leaned positive on
    vague_total: int = 0
    branches: Counter = field(default_factory=Counter)  # IG branch kept, per step
    scores: np.ndarray | None = None  # prequential like probability of each real event
    baseline_scores: np.ndarray | None = None  # the counting baseline's, the same way
    classes: np.ndarray | None = None  # label class of each real event (POSITIVE, ...)
    # wall time of each optimiser step (the steps of one compiled call share its time evenly)
    step_seconds: np.ndarray | None = None
    evicted: dict[str, int] = field(default_factory=dict)  # ids evicted per table ("user", ...)


class OnlineLearner:
    """A backbone trained online on dwell-labelled micro-batches, evaluated prequentially."""

    def __init__(self, settings: LearnerSettings) -> None:
        if settings.meta not in ("none", "ig"):
            raise ConfigError(f"meta must be none or ig, not {settings.meta!r}")
        if settings.meta == "ig" and settings.loss != "idl":
            raise ConfigError("meta=ig trains vague events with IDL: use loss=idl")
        if settings.meta_source not in ("batch", "reservoir"):
            raise ConfigError(f"meta_source must be batch or reservoir: {settings.meta_source!r}")
        torch.manual_seed(settings.seed)
        if settings.threads > 0:
            # Process-wide. The tensors of a step are small: one intra-op thread is fastest,
            # and with more, a busy second core (Kafka's client threads) stalls every op.
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model = make_backbone(settings.model, settings.dim).to(self.device)
        self.optimizer = MixedAdam(self.model, lr=settings.lr, dense_lr=settings.dense_lr)
        self.loss = make_loss(settings.loss)
        self.ig = (
            make_inverse_gradient(self.model, self.optimizer, settings.sample_lr,
                                  settings.lookahead, settings.kernel)
            if settings.meta == "ig" else None
        )
        self.compiled_step = make_loss_step(self.model, self.optimizer, settings.loss,
                                            settings.kernel)
        # every step of a micro-batch in one compiled call, where the steps are compiled and
        # need nothing between them (an IG step's meta batch drawn from the reservoir does);
        # the IG step is compiled where it is not an InverseGradient (it takes the pairs as
        # table rows, step_rows, and plans)
        self._all_steps: CompiledStep | None = self.compiled_step
        if self.ig is not None:
            self._all_steps = (self.ig if (not isinstance(self.ig, InverseGradient)
                                           and settings.meta_source == "batch") else None)
        for name in ("max_users", "max_videos"):
            if getattr(settings, name) < 0:
                raise ConfigError(f"{name} must be 0 (unbounded) or positive")
        if settings.label_rule not in LABEL_RULES:
            raise ConfigError(f"label_rule must be one of {LABEL_RULES}: {settings.label_rule!r}")
        self.labeler: LabelRule | DurationQuantileLabels = (
            DurationQuantileLabels(fallback=settings.labels)
            if settings.label_rule == "quantile" else settings.labels)
        self.users = IdMap(settings.max_users or None)
        self.videos = IdMap(settings.max_videos or None)
        # torch's draws (new rows) are the same on every rank, numpy's (shuffles, sampled
        # items) the rank's own
        draws = settings.seed if settings.rank == 0 else [settings.seed, settings.rank]
        self.sampler = NegativeSampler(settings.num_neg, settings.sampler, draws)
        self.reservoir = Reservoir(settings.meta_size, n_feats=len(FEATURE_SIZES))
        self.evaluator = Evaluator(settings.auc_window, settings.auc_long_window)
        # the counting baseline, scored and evaluated beside the model (learner.core.baselines)
        self.baseline = RunningRates()
        self.baseline_evaluator = Evaluator(settings.auc_window, settings.auc_long_window)
        self.steps = 0
        self._item_duration = np.zeros(1024, dtype=np.int64)  # last duration bucket per item
        self._rng = np.random.default_rng(draws)
        self.updates: UpdateLog | None = None  # what training changed, in a distributed job
        self._worker: ThreadPoolExecutor | None = None  # trains in the background (learn_many)
        self._pending: tuple[Future, Callable[[float], BatchResult]] | None = None
        # results of background trainings not yet collected by trained(); the daemon collects
        # each before the next batch, a caller that never does keeps only the last few
        self._trained: deque[BatchResult] = deque(maxlen=TRAINED_KEPT)

    # -- training in the background --------------------------------------------------------
    def _settle(self) -> None:
        """Wait for the micro-batch training in the background, if any; keep its result for
        :meth:`trained`. Everything that reads or writes the model, the optimiser or the step
        count calls this first."""
        if self._pending is not None:
            (pending, finish), self._pending = self._pending, None
            self._trained.append(finish(pending.result()))  # a worker's exception raised here

    @property
    def training(self) -> bool:
        """Whether a micro-batch is training in the background (``learn_many(background=True)``)."""
        return self._pending is not None

    def trained(self) -> list[BatchResult]:
        """The training results (steps, loss, branches, step times) of the micro-batches
        trained in the background since the last call (the last ``TRAINED_KEPT`` of them);
        waits for the one in progress."""
        self._settle()
        done = list(self._trained)
        self._trained.clear()
        return done

    def close(self) -> None:
        """Finish the training in progress and stop the background thread."""
        self._settle()
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    # -- helpers ---------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)

    def admit(
        self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows for these ids (new ids get rows, as in a batch), without scoring or training.

        In a distributed job every rank admits every rank's ids of a round, in rank order, so
        that an id has the same row on every rank; each then passes its own slice of the rows
        to :meth:`learn_many`.
        """
        return self._rows(user_ids, video_ids)

    def log_updates(self, bases: bool = True) -> UpdateLog:
        """From now on, log what training changes (for :meth:`Ranks.synchronise`; with
        ``bases=False`` the rows only, for a publisher of the changed rows)."""
        self._settle()
        self.updates = UpdateLog(self.model, self.optimizer, bases)
        return self.updates

    def _rows(self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable]):
        self._settle()  # tables may grow: not under a step that is running
        users = self.users.lookup(user_ids)
        videos = self.videos.lookup(video_ids)
        ensure_rows(self.model, self.optimizer, len(self.users), len(self.videos))
        if len(self.videos) > self._item_duration.size:
            grown = np.zeros(self.model.rows()[1], dtype=np.int64)
            grown[: self._item_duration.size] = self._item_duration
            self._item_duration = grown
        recycled_users, recycled_videos = self.users.last_evicted, self.videos.last_evicted
        if recycled_users.size or recycled_videos.size:
            self._recycle(recycled_users, recycled_videos)
        return users, videos

    def _recycle(self, users: np.ndarray, videos: np.ndarray) -> None:
        """Rows whose ids were evicted now hold new ids: start them afresh, as new rows.

        Embedding rows are drawn again as :func:`~learner.core.optim.ensure_rows` draws new ones,
        their SparseAdam moments zeroed, and every memory of the old ids dropped: the last
        duration bucket of the items, the sampler's pairs and popular items, and reservoir
        events that would otherwise train the new id with the old one's label.
        """
        reset_rows(self.model, self.optimizer, users, videos)
        self._item_duration[videos] = 0
        self.baseline.forget(users, videos)
        self.sampler.forget(users, videos)
        self.reservoir.forget(users, videos)

    @property
    def evictions(self) -> dict[str, int]:
        """Ids evicted from the id maps so far (over checkpoints), per table."""
        return {"user": self.users.evictions, "video": self.videos.evictions}

    def _pairs(self, users, items, feats, index=None) -> Pairs:
        if index is not None:
            users, items, feats = users[index], items[index], feats[index]
        return Pairs(self._tensor(users), self._tensor(items), self._tensor(feats))

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that evolves with the stream, for a checkpoint (numpy arrays inside)."""
        self._settle()
        return {
            "model_config": {"model": self.settings.model, "dim": self.settings.dim},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "users": self.users.state_dict(),
            "videos": self.videos.state_dict(),
            "item_duration": self._item_duration.copy(),
            # new table rows are drawn from the generator of the device the model is on
            "rng_state": rng_state(self.device),
            **self.local_state_dict(),
        }

    def local_state_dict(self) -> dict:
        """The part of :meth:`state_dict` that is a rank's own in a distributed job: what it
        has seen (sampler, reservoir, prequential metrics) and its own draws."""
        self._settle()
        return {
            "sampler": self.sampler.state_dict(),
            "reservoir": self.reservoir.state_dict(),
            "evaluator": self.evaluator.state_dict(),
            "baseline": self.baseline.state_dict(),
            "baseline_evaluator": self.baseline_evaluator.state_dict(),
            **({"labeler": self.labeler.state_dict()}
               if isinstance(self.labeler, DurationQuantileLabels) else {}),
            "steps": self.steps,
            "rng": self._rng.bit_generator.state,
            "sampler_rng": self.sampler.rng.bit_generator.state,
        }

    def load_local_state_dict(self, state: dict) -> None:
        """Restore :meth:`local_state_dict`."""
        self._settle()
        self.sampler.load_state_dict(state["sampler"])
        self.reservoir.load_state_dict(state["reservoir"])
        self.evaluator.load_state_dict(state["evaluator"])
        if isinstance(self.labeler, DurationQuantileLabels) and "labeler" in state:
            self.labeler.load_state_dict(state["labeler"])
        if "baseline" in state:  # a checkpoint of before issue 20 has none: counted afresh
            self.baseline.load_state_dict(state["baseline"])
            self.baseline_evaluator.load_state_dict(state["baseline_evaluator"])
        self.steps = int(state["steps"])
        self._rng.bit_generator.state = state["rng"]
        self.sampler.rng.bit_generator.state = state["sampler_rng"]

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuse one whose model configuration differs."""
        self._settle()
        mine = {"model": self.settings.model, "dim": self.settings.dim}
        if state["model_config"] != mine:
            raise ConfigError(
                f"checkpoint is for model {state['model_config']}, this learner runs {mine}: "
                "start with the same --model and --dim, or another --checkpoint-dir"
            )
        first_user = f"{self.model.user_tables[0]}.weight"
        first_item = f"{self.model.item_tables[0]}.weight"
        ensure_rows(self.model, self.optimizer, state["model"][first_user].shape[0],
                    state["model"][first_item].shape[0])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.users.load_state_dict(state["users"])
        self.videos.load_state_dict(state["videos"])
        self._item_duration = state["item_duration"].copy()
        set_rng_state(self.device, state["rng_state"] if "rng_state" in state
                      else {"cpu": state["torch_rng"]})  # a checkpoint of before 2026-12-06
        self.load_local_state_dict(state)

    # -- river's verbs ---------------------------------------------------------------------
    def score_rows(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Like probabilities for (user row, item row, features) triples."""
        self._settle()
        if self._all_steps is not None:  # the compiled steps apply: their compiled scores
            return self._all_steps.scores(users, items, feats)
        with torch.no_grad():  # not around the compiled scores: ~25 us a call
            p = self._pairs(users, items, feats)
            return torch.sigmoid(self.model(p.users, p.items, p.feats)).cpu().numpy()

    def predict_many(
        self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable],
        feats: np.ndarray | None = None,
    ) -> np.ndarray:
        """Like probabilities for (user, video) pairs; unseen ids get fresh rows.

        ``feats`` (hour, duration bucket, tab) per pair; by default hour 0, each video's last
        seen duration bucket and no tab.
        """
        users, videos = self._rows(user_ids, video_ids)
        if feats is None:
            none = np.zeros_like(videos)
            feats = np.stack([none, self._item_duration[videos], none], axis=1)
        return self.score_rows(users, videos, feats)

    def user_logits(self, user_ids: Sequence[Hashable]) -> np.ndarray:
        """Each user's terms of the logit that are the same for every video
        (:meth:`~learner.core.backbones.base.Backbone.user_logit`), 0 for an unknown user: what
        a ranking of candidates for one user at one moment never sees. A pure query: no
        row is added, nothing is trained.

        >>> learner = OnlineLearner(LearnerSettings(model="wide"))
        >>> learner.user_logits(["never seen"]).tolist()
        [0.0]
        """
        self._settle()
        rows = self.users.lookup(user_ids, add=False)
        out = np.zeros(rows.size)
        known = rows >= 0
        if known.any():
            with torch.no_grad():
                out[known] = self.model.user_logit(self._tensor(rows[known])).cpu().numpy()
        return out

    def planned_steps(self, events: int) -> int:
        """Optimiser steps :meth:`learn_many` takes for a batch of ``events`` real events."""
        if not events:
            return 0
        steps = max(1, -(-events * (1 + self.settings.num_neg) // self.settings.train_batch))
        return min(steps, self.settings.max_steps) if self.settings.max_steps else steps

    def learn_many(
        self, batch: EventColumns, classes: np.ndarray | None = None,
        rows: tuple[np.ndarray, np.ndarray] | None = None, steps: int | None = None,
        after_step: Callable[[], None] | None = None, background: bool = False,
    ) -> BatchResult:
        """Score the batch (prequential metrics), then train on it.

        ``background``: where the batch's steps run in one compiled call (wide, GMF on the CPU, no
        ``after_step``, no distributed update log) on at least ``BACKGROUND_MIN_PAIRS``
        pairs (sampled ones included), train on a second thread and return
        once the batch is scored: the caller fetches and decodes the next batch meanwhile
        (the compiled steps release the interpreter lock). The result then holds no training
        figures (``steps`` 0); :meth:`trained` gives them. The next call, and anything that
        touches the model, waits for that training first.

        ``classes`` overrides the dwell-time labels (POSITIVE, NEGATIVE or VAGUE per event),
        for data sets whose labels are not dwell times. ``rows``: the (user, video) rows of
        the batch's ids when :meth:`admit` gave them already. ``steps`` (at least
        :meth:`planned_steps`) splits the training into that many steps, some maybe empty,
        and ``after_step`` is called after each, empty or not: the ranks of a distributed job
        step in lockstep that way.
        """
        self._settle()
        if classes is None:
            classes = self.labeler.classify(batch.play_ms, batch.duration_ms)
        counts = {name: int((classes == c).sum()) for c, name in CLASS_NAMES.items()}
        if not len(batch):
            return BatchResult(counts, 0, float("nan"), evicted={"user": 0, "video": 0})
        users, videos = rows if rows is not None else self._rows(batch.user_id, batch.video_id)
        evicted = {"user": int(self.users.last_evicted.size),
                   "video": int(self.videos.last_evicted.size)}
        feats = event_features(batch.ts_ms, batch.duration_ms, getattr(batch, "tab", None))
        self._item_duration[videos] = feats[:, 1]

        scores = self.score_rows(users, videos, feats)
        baseline_scores = self.baseline.score(users, videos)
        genuine = classes != VAGUE
        positive = (classes[genuine] == POSITIVE).astype(np.float32)
        self.baseline.observe(users[genuine], videos[genuine], positive)
        explicit = ~np.isnan(batch.explicit)
        for evaluator, scored in ((self.evaluator, scores),
                                  (self.baseline_evaluator, baseline_scores)):
            evaluator.update("dwell", scored[genuine], classes[genuine])
            evaluator.update("explicit", scored[explicit], batch.explicit[explicit])
        self.evaluator.update_classes(classes == POSITIVE, classes == VAGUE)

        self.sampler.observe(users, videos)
        source, s_items = self.sampler.sample(np.arange(len(batch)), len(self.videos))
        all_users = np.concatenate([users, users[source]])
        all_items = np.concatenate([videos, s_items])
        s_feats = np.stack([feats[source, 0], self._item_duration[s_items], feats[source, 2]],
                           axis=1)
        all_feats = np.concatenate([feats, s_feats.reshape(-1, feats.shape[1])])
        labels = np.concatenate([classes == POSITIVE, np.zeros(s_items.size, bool)])
        vague = np.concatenate([classes == VAGUE, np.ones(s_items.size, bool)])
        labels = labels.astype(np.float32)
        if self.settings.meta_source == "reservoir":
            self.reservoir.add(users[genuine], videos[genuine], feats[genuine],
                               labels[: len(batch)][genuine])
        count = None
        if self.model.user_buffers or self.model.item_buffers:
            # a counting backbone counts the batch once scored and trained on the counts it
            # was scored with: after the training, on the training's thread; in a distributed
            # job once the update log has the rows' bases, recorded then: a synchronisation
            # between the steps forgets what was recorded before it
            count = functools.partial(self._count, users[genuine], videos[genuine], positive)
        result = self._train(all_users, all_items, all_feats, labels, vague, counts, steps,
                             after_step, background, count)
        if result is None:  # training in the background: its figures come from trained()
            result = BatchResult(counts, 0, float("nan"), sampled=int(s_items.size),
                                 step_seconds=np.empty(0))
        return dataclasses.replace(result, scores=scores, baseline_scores=baseline_scores,
                                   classes=classes, evicted=evicted)

    def _count(self, users: np.ndarray, videos: np.ndarray, positive: np.ndarray) -> None:
        """Count genuine events in the backbone's buffers, their rows logged first (the
        counts' bases, for the ranks' next sum; the changed rows, for a publisher)."""
        if self.updates is not None:
            self.updates.record(users, videos)
        if self._all_steps is not None:  # compiled, where the steps are
            self._all_steps.observe(users, videos, positive)
        else:
            self.model.observe(self._tensor(users), self._tensor(videos), self._tensor(positive))

    # -- training --------------------------------------------------------------------------
    def _train(self, users, items, feats, labels, vague, counts, steps=None,
               after_step=None, background=False, count=None) -> BatchResult | None:
        """Train on the pairs in ``steps`` steps, then call ``count`` (if any) on the same
        thread; None when that runs in the background."""
        order = self._rng.permutation(users.size)
        if steps is None:
            steps = max(1, -(-users.size // self.settings.train_batch))
            if self.settings.max_steps:  # under backlog, fewer and larger steps
                steps = min(steps, self.settings.max_steps)
        if after_step is None and self._all_steps is not None:
            # np.array_split's chunk sizes: the first n % steps one larger
            base, larger = divmod(users.size, steps)
            sizes = [base + 1] * larger + [base] * (steps - larger)
            run, finish = self._plan_at_once(users, items, feats, labels, vague, counts, order,
                                             sizes, count)
            # a log of rows only has them all already; one of bases is read at every step
            alone = self.updates is None or not self.updates.bases
            if not (background and alone and users.size >= BACKGROUND_MIN_PAIRS):
                return finish(_timed(run))
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="dwell-train")
            self._pending = (self._worker.submit(_timed, run), finish)
            return None
        branches: Counter[str] = Counter()
        losses, leaning, seconds = [], 0, []
        for chunk in np.array_split(order, steps):
            if chunk.size:  # a chunk is empty only when the ranks of a job step in lockstep
                if self.updates is not None:
                    self.updates.record(users[chunk], items[chunk])
                started = time.perf_counter()
                if self.ig is None:
                    loss, lean = self._loss_step(users, items, feats, labels, vague, chunk)
                else:
                    loss, lean, branch = self._ig_step(users, items, feats, labels, vague,
                                                       chunk)
                    branches[branch] += 1
                losses.append(loss)
                leaning += lean
                self.steps += 1
                seconds.append(time.perf_counter() - started)
            if after_step is not None:
                after_step()
        if count is not None:
            count()
        real = sum(counts.values())
        return BatchResult(
            counts, len(losses), float(np.mean(losses)), sampled=int(users.size - real),
            vague_positive=leaning, vague_total=int(vague.sum()), branches=branches,
            step_seconds=np.array(seconds),
        )

    def _plan_at_once(self, users, items, feats, labels, vague, counts, order, sizes,
                      count=None) -> tuple[Callable[[], None], Callable[[float], BatchResult]]:
        """:meth:`_train`'s steps as one call of the compiled steps (the same steps, in the
        same order), then ``count`` if any, and what makes the batch's result of it once it
        ran, given its time (each step's time is the call's, shared out evenly)."""
        if self.updates is not None:  # the rows of every step, recorded before any trains
            self.updates.record(users, items)
        bounds = np.concatenate([[0], np.cumsum([size for size in sizes if size])])
        assert self._all_steps is not None  # the caller's condition
        steps, (branch_index, losses, leans) = self._all_steps.plan(
            users, items, feats, labels, vague, order, bounds)
        n = bounds.size - 1

        def run() -> None:
            steps()
            if count is not None:
                count()

        def finish(seconds: float) -> BatchResult:
            self.steps += n
            names = (*BRANCHES, "none")  # NO_BRANCH (-1) is the last
            branches = (Counter() if self.ig is None
                        else Counter(names[i] for i in branch_index.tolist()))
            return BatchResult(
                counts, n, float(np.mean(losses)), sampled=int(users.size - sum(counts.values())),
                vague_positive=int(leans.sum()), vague_total=int(vague.sum()), branches=branches,
                step_seconds=np.full(n, seconds / n),
            )

        return run, finish

    def _loss_step(self, users, items, feats, labels, vague, chunk) -> tuple[float, int]:
        if self.compiled_step is not None:
            return self.compiled_step.step(users[chunk], items[chunk], feats[chunk],
                                           labels[chunk], vague[chunk])
        p = self._pairs(users, items, feats, chunk)
        target, mask = self._tensor(labels[chunk]), self._tensor(vague[chunk])
        self.optimizer.zero_grad()
        logits = self.model(p.users, p.items, p.feats)
        loss = self.loss(logits, target, mask, self.steps)
        if loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach()), int(((logits.detach() > 0) & mask).sum())

    def _ig_step(self, users, items, feats, labels, vague, chunk) -> tuple[float, int, str]:
        v_idx, g_idx = chunk[vague[chunk]], chunk[~vague[chunk]]
        if self.settings.meta_source == "reservoir" and len(self.reservoir):
            r = self.reservoir
            pick = r.sample(self.settings.meta_batch, self._rng)
            if self.updates is not None:  # the IG step trains these rows too
                self.updates.record(r.users[pick], r.items[pick])
            meta_source, meta_index = (r.users, r.items, r.feats, r.labels), pick
        else:
            meta_source, meta_index = (users, items, feats, labels), g_idx
        if v_idx.size == 0 or meta_index.size == 0:  # nothing to correct, or to judge by
            loss, lean = self._loss_step(users, items, feats, labels, vague, chunk)
            return loss, lean, "none"
        m_users, m_items, m_feats, m_labels = meta_source
        ig = self.ig
        assert ig is not None  # _train takes the IG step only with one
        if not isinstance(ig, InverseGradient):  # the compiled step takes the arrays
            branch, _meta_losses, loss = ig.step_rows(
                users[v_idx], items[v_idx], feats[v_idx], m_users[meta_index],
                m_items[meta_index], m_feats[meta_index], m_labels[meta_index])
        else:
            branch, _meta_losses, loss = ig.step(
                self._pairs(users, items, feats, v_idx),
                self._pairs(m_users, m_items, m_feats, meta_index),
                self._tensor(m_labels[meta_index]))
        lean = ig.last_vague_positive  # from the look-ahead's own forward pass
        return loss, lean, branch

def _timed(run: Callable[[], None]) -> float:
    """Call ``run``; its wall time in seconds."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


__all__ = ["BatchResult", "LearnerSettings", "OnlineLearner", "NEGATIVE", "POSITIVE", "VAGUE"]
