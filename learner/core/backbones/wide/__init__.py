"""A wide model for feeds: biases, context, a cross and running counts; no latent factors.

The wide part of Wide & Deep (Cheng et al., DLRS 2016) over what a dwell event carries, with
the id counters that beat every factor model on an unfiltered feed (issue 20, docs/RESULTS.md)
as two of its inputs::

    logit = b + b_u + b_i                                   global, user and video biases
          + w_hour + w_dur + w_tab + w_dur,tab             context and its cross
          + a_u lg(r_u) + a_i lg(r_i)                       running rates (counted, not trained)

``r_u`` is the user's running positive rate over genuine events, smoothed by a prior of
``k_u`` events at one half, ``(pos + k_u / 2) / (n + k_u)``, and ``lg`` its log-odds; the
same for the video with ``k_i``. The prior's strength is an empirical-Bayes estimate, by the
method of moments, from the counts themselves (:func:`prior_strength`): how much the ids'
rates vary beyond the noise of their counts. Where they vary little (an unfiltered feed:
about 7 events for users and videos alike), a few events move a score little; where they
vary a lot (the filtered like/hate log: about 3), a few events say much. A fixed prior has
to pick one: 10 events scored 0.6261 against engagement on the unfiltered KuaiRand feed but
0.7600 against the dwell labels of the like/hate log (below river's BiasedMF, 0.7652); 2
events and the counts as inputs (this model's first version), 0.6120 and 0.7660; the
estimate, 0.6259 and 0.7684 (seed 0, one-off checks; the 3 seeds of the estimate are in
docs/RESULTS.md). The estimate is refreshed from the counts after
each batch is counted (:meth:`Wide.observe`) and whenever they change otherwise
(:meth:`Wide.counts_changed`: a distributed synchronisation); it is a buffer, in
checkpoints and in the served model. Centring the prior on the pooled rate rather than one
half was measured worse (0.6062 against engagement). The events' counts themselves as
inputs (``log1p(n)``) were measured and left out: with them, 0.6134 against engagement
(prior of 10).

The counts are buffers that grow with the tables, updated by :meth:`Wide.observe` after an
event is scored: a prediction never sees its own label. Tables are sparse (SparseAdam per
row), the context and count weights dense (Adagrad). Latent factors (a ``p_u . q_i`` term
of ``dim`` factors) were tried and left out: on the unfiltered KuaiRand feed they changed
neither AUC by more than 0.0002 and cost 2x the time (a one-off check, with the earlier
counts; not a scorer of docs/RESULTS.md), so ``dim`` is not used; nor did a user x
duration-bucket cross, left out too.

Its compiled training steps (no autograd, numba) are :mod:`.steps` over the arithmetic of
:mod:`.kernels`, offered to the learner by :meth:`Wide.fast_steps`.

>>> import torch
>>> model = Wide(users=4, items=4, feature_sizes=(24, 16, 16))
>>> users, items = torch.tensor([0, 1]), torch.tensor([2, 3])
>>> model(users, items, torch.tensor([[5, 3, 0], [23, 15, 2]])).shape
torch.Size([2])
>>> model.observe(users, items, torch.tensor([1.0, 0.0]))
>>> model.user_counts[:2].tolist()
[[1.0, 1.0], [0.0, 1.0]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from learner.core.backbones.base import Backbone, sparse_table
from learner.core.features import FEATURE_SIZES

if TYPE_CHECKING:
    from learner.core.fast import FastSteps

N_COUNT_FEATURES = 2
#: the bounds of the prior's estimated strength, in events; and its value before any
#: estimate (fewer than ``MIN_PRIOR_EVENTS_COUNTED`` events counted)
PRIOR_EVENTS_RANGE = (1.0, 1000.0)
PRIOR_EVENTS_START = 2.0
MIN_PRIOR_EVENTS_COUNTED = 100


class Wide(Backbone):
    """Biases, context weights, a duration x tab cross and running counts.

    ``feature_sizes`` are (hour, duration bucket, tab, ...) as in
    :mod:`learner.core.features`.
    """

    user_tables = ("user_bias",)
    item_tables = ("item_bias",)
    user_buffers = ("user_counts",)
    item_buffers = ("item_counts",)
    # Adagrad on the context and count weights, as the wide part of Wide & Deep (which used
    # FTRL): large steps while they are new, smaller ones as they settle. With Adam instead,
    # a rate small enough for the long run learned the count weights so slowly that the
    # model ranked below the counters over the first 30% of the feed (docs/RESULTS.md).
    dense_optimizer = "adagrad"
    dense_lr = 0.1
    interactions = False
    user_counts: torch.Tensor  # buffers (register_buffer), typed for the checker
    item_counts: torch.Tensor
    prior: torch.Tensor
    moments: torch.Tensor
    offsets: torch.Tensor

    def __init__(
        self, dim: int = 0, users: int = 1024, items: int = 1024,
        feature_sizes: tuple[int, ...] = FEATURE_SIZES,
    ) -> None:
        super().__init__()
        if len(feature_sizes) < 2:
            raise ValueError("the wide model needs at least (hour, duration bucket) features")
        self.feature_sizes = tuple(feature_sizes)
        self.user_bias = sparse_table(users, 1)
        self.item_bias = sparse_table(items, 1)
        offsets = [0]
        for size in self.feature_sizes:
            offsets.append(offsets[-1] + size)
        self.cross_tab = len(self.feature_sizes) > 2  # duration x tab, where there is a tab
        cross = self.feature_sizes[1] * self.feature_sizes[2] if self.cross_tab else 0
        self.cross_start = offsets[-1]  # the cross's weights follow the single features'
        self.register_buffer("offsets", torch.tensor(offsets[:-1]), persistent=False)
        self.context = nn.Parameter(torch.zeros(self.cross_start + cross))
        self.counts_weight = nn.Parameter(torch.zeros(N_COUNT_FEATURES))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("user_counts", torch.zeros(users, 2))  # positives, genuine events
        self.register_buffer("item_counts", torch.zeros(items, 2))
        # the rates' prior strengths (user, video), in events: estimated from the counts
        self.register_buffer("prior", torch.full((2,), PRIOR_EVENTS_START))
        # the counts' moments per side (count_moments), kept up to date as rows are counted
        self.register_buffer("moments", torch.zeros(2, 4, dtype=torch.float64))

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        logit = self.bias + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0]
        if feats is not None:
            if feats.dim() != 2 or feats.shape[1] != len(self.feature_sizes):
                raise ValueError(f"feats must have shape (n, {len(self.feature_sizes)}), "
                                 f"got {tuple(feats.shape)}")
            logit = logit + self.context[feats + self.offsets].sum(dim=1)
            if self.cross_tab:
                at = self.cross_start + feats[:, 1] * self.feature_sizes[2] + feats[:, 2]
                logit = logit + self.context[at]
        return logit + self.count_features(users, items) @ self.counts_weight

    def count_features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(n, 2): the log-odds of the user's and the video's smoothed positive rates."""
        return torch.stack([_log_odds(self.user_counts[users], self.prior[0]),
                            _log_odds(self.item_counts[items], self.prior[1])], dim=1)

    def user_logit(self, users: torch.Tensor) -> torch.Tensor:
        """The user's bias and running-rate term: what ranking one user's candidates never
        sees."""
        return (self.user_bias(users)[:, 0]
                + _log_odds(self.user_counts[users], self.prior[0]) * self.counts_weight[0])

    @torch.no_grad()
    def observe(self, users: torch.Tensor, items: torch.Tensor, positive: torch.Tensor) -> None:
        """Count these genuine events (``positive`` 1.0 or 0.0), once they are scored, and
        re-estimate the rates' priors (the counts' moments are kept up to date row by row:
        a batch costs its own rows, not the tables')."""
        counted = torch.stack([positive, torch.ones_like(positive)], dim=1)
        for side, (rows, counts) in enumerate(((users, self.user_counts),
                                               (items, self.item_counts))):
            touched = torch.unique(rows)
            self.moments[side] -= count_moments(counts[touched])
            counts.index_add_(0, rows, counted)
            self.moments[side] += count_moments(counts[touched])
        self._estimate_priors()

    @torch.no_grad()
    def forget(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Zero the counts of these rows, their moments taken out, and re-estimate."""
        for side, (rows, counts) in enumerate(((users, self.user_counts),
                                               (items, self.item_counts))):
            self.moments[side] -= count_moments(counts[torch.unique(rows)])
        super().forget(users, items)
        self._estimate_priors()

    @torch.no_grad()
    def counts_changed(self) -> None:
        """Recount the counts' moments over every row, and re-estimate the priors."""
        self.moments.copy_(torch.stack([count_moments(self.user_counts),
                                        count_moments(self.item_counts)]))
        self._estimate_priors()

    def _estimate_priors(self) -> None:
        self.prior.copy_(torch.tensor([prior_strength(m) for m in self.moments]))

    def fast_steps(self, kernel: str = "auto") -> FastSteps | None:
        """The compiled steps (:mod:`learner.core.backbones.wide.steps`) with ``kernel="auto"``
        on the CPU, numba importable; else None."""
        from learner.core.backbones.wide import steps  # late: numba, and steps imports Wide
        from learner.core.fast import CompiledFastSteps

        if not steps.compiled_applies(self, kernel):
            return None
        return CompiledFastSteps(self, steps.WideLossStep, steps.WideInverseGradient)


def count_moments(counts: torch.Tensor) -> torch.Tensor:
    """(events, positives, sum of positives^2 / events, ids counted) of counts
    ``(positives, events)`` per id, in float64: what :func:`prior_strength` needs, and
    additive over ids."""
    positives, events = counts[:, 0].double(), counts[:, 1].double()
    seen = events > 0
    return torch.stack([events.sum(), positives.sum(),
                        (positives[seen] ** 2 / events[seen]).sum(), seen.sum().double()])


def prior_strength(moments: torch.Tensor) -> float:
    """The strength, in events, of the Beta prior that ids' counts suggest (their
    :func:`count_moments`), by the method of moments: ``m (1 - m) / tau^2 - 1``, where ``m``
    is the pooled rate and ``tau^2`` the variance of the ids' rates (weighted by their events)
    beyond their counts' binomial noise; within :data:`PRIOR_EVENTS_RANGE`, and
    :data:`PRIOR_EVENTS_START` until :data:`MIN_PRIOR_EVENTS_COUNTED` events are counted.

    >>> def strength(rows):
    ...     return round(prior_strength(count_moments(torch.tensor(rows * 5))), 1)
    >>> strength([[90.0, 100.0], [10.0, 100.0]])  # rates of 90% and 10%: a weak prior
    1.0
    >>> strength([[60.0, 100.0], [40.0, 100.0]])  # 60% and 40%: a strong one
    32.3
    >>> strength([[6.0, 10.0], [4.0, 10.0]] * 10)  # no more spread than the counts' noise
    1000.0
    """
    events, positives, squares, ids = moments.tolist()
    if events < MIN_PRIOR_EVENTS_COUNTED:
        return PRIOR_EVENTS_START
    pooled = positives / events
    spread = squares / events - pooled ** 2  # sum of n (r - m)^2 / sum of n
    excess = spread - pooled * (1 - pooled) * ids / events
    low, high = PRIOR_EVENTS_RANGE
    if excess <= 0:
        return high
    return min(max(pooled * (1 - pooled) / excess - 1, low), high)


def _log_odds(counts: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    positives, total = counts[:, 0], counts[:, 1]
    return torch.log(positives + prior / 2) - torch.log(total - positives + prior / 2)
