"""A wide model for feeds: biases, context, a cross and running counts; no latent factors.

The wide part of Wide & Deep (Cheng et al., DLRS 2016) over what a dwell event carries, with
the id counters that beat every factor model on an unfiltered feed (issue 20, docs/RESULTS.md)
as two of its inputs::

    logit = b + b_u + b_i                                   global, user and video biases
          + w_hour + w_dur + w_tab + w_dur,tab             context and its cross
          + a_u lg(r_u) + a_i lg(r_i)                       running rates (counted, not trained)

``r_u`` is the user's running positive rate over genuine events with a prior worth
``PRIOR_EVENTS`` events at one half, ``(pos + 5) / (n + 10)``, and ``lg`` its log-odds; the
same for the video. The prior is strong on purpose: a user's rate estimated from a handful of
events moves a lot from event to event, and those moves rank a user's own videos by when they
were shown rather than by what they are; a video's few first events say little about whether
it engages. With a prior of two events and ``log1p(n)`` of both counts as two more inputs,
the model scored 0.7486 against the dwell labels, 0.6118 against engagement and 0.5920 /
0.5010 per user; with this prior and without the counts, 0.7471, 0.6256 and 0.5965 / 0.5236
(the unfiltered KuaiRand feed, 3 seeds, docs/RESULTS.md).

The counts are buffers that grow with the tables, updated by :meth:`Wide.observe` after an
event is scored: a prediction never sees its own label. Tables are sparse (SparseAdam per
row), the context and count weights dense (Adagrad). Latent factors (a ``p_u . q_i`` term
of ``dim`` factors) were tried and left out: on the unfiltered KuaiRand feed they changed
neither AUC by more than 0.0002 and cost 2x the time (a one-off check, with the earlier
counts; not a scorer of docs/RESULTS.md), so ``dim`` is not used; nor did a user x
duration-bucket cross, left out too.

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

import torch
from torch import nn

from learner.core.backbones.base import Backbone, sparse_table
from learner.core.features import FEATURE_SIZES

N_COUNT_FEATURES = 2
#: the running rates' prior: this many events at a rate of one half
PRIOR_EVENTS = 10.0


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
        return torch.stack([_log_odds(self.user_counts[users]),
                            _log_odds(self.item_counts[items])], dim=1)

    def user_logit(self, users: torch.Tensor) -> torch.Tensor:
        """The user's bias and running-rate term: what ranking one user's candidates never
        sees."""
        return (self.user_bias(users)[:, 0]
                + _log_odds(self.user_counts[users]) * self.counts_weight[0])

    @torch.no_grad()
    def observe(self, users: torch.Tensor, items: torch.Tensor, positive: torch.Tensor) -> None:
        """Count these genuine events (``positive`` 1.0 or 0.0), once they are scored."""
        counted = torch.stack([positive, torch.ones_like(positive)], dim=1)
        self.user_counts.index_add_(0, users, counted)
        self.item_counts.index_add_(0, items, counted)


def _log_odds(counts: torch.Tensor) -> torch.Tensor:
    positives, total = counts[:, 0], counts[:, 1]
    prior = PRIOR_EVENTS / 2
    return torch.log(positives + prior) - torch.log(total - positives + prior)
