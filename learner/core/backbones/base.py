"""The backbone interface: id-embedding tables that grow with the id space, plus dense layers.

Embedding tables are sparse (``sparse=True``): a step touches the rows of the batch only, so
the cost of a step does not grow with the number of users or videos. Dense layers are
ordinary parameters. :class:`~learner.core.optim.MixedAdam` steps each kind with its own Adam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from learner.core.settings import check_kernel

if TYPE_CHECKING:
    from learner.core.fast import FastSteps

INIT_STD = 0.01


def sparse_table(rows: int, dim: int) -> nn.Embedding:
    """An embedding table with sparse gradients, initialised N(0, 0.01) as in the paper's code."""
    table = nn.Embedding(rows, dim, sparse=True)
    nn.init.normal_(table.weight, std=INIT_STD)
    return table


class Backbone(nn.Module):
    """A model that scores (user row, item row) pairs with one logit each.

    Subclasses create their tables with :func:`sparse_table` and list them in
    ``user_tables`` and ``item_tables`` so that :meth:`rows` and the table growth in
    :mod:`learner.core.optim` can find them.
    """

    user_tables: tuple[str, ...] = ()
    item_tables: tuple[str, ...] = ()
    #: the dense parameters' optimiser (``adam`` or ``adagrad``) and, for ``adagrad``, its
    #: learning rate when the settings give none (:class:`~learner.core.optim.MixedAdam`)
    #: whether the score has user x item interaction terms (the wide model's has none)
    interactions: bool = True
    dense_optimizer: str = "adam"
    dense_lr: float = 0.0
    #: buffers with a row per user / item that are counted, not trained (zeros when new)
    user_buffers: tuple[str, ...] = ()
    item_buffers: tuple[str, ...] = ()

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One logit per (user row, item row) pair; ``feats`` is an (n, F) int64 tensor of
        context feature ids (see :mod:`learner.core.features`), ignored by id-only models."""
        raise NotImplementedError

    def user_logit(self, users: torch.Tensor) -> torch.Tensor:
        """The terms of a user's logit that depend on the user alone, the same for every video
        (a constant when ranking candidates for one user): zeros here, for a backbone whose
        every term involves the video."""
        return torch.zeros(users.shape[0])

    def observe(self, users: torch.Tensor, items: torch.Tensor, positive: torch.Tensor) -> None:
        """Take note of scored genuine events (``positive`` 1.0 or 0.0 each), for a backbone
        that counts (:attr:`user_buffers`); nothing here."""

    @torch.no_grad()
    def forget(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Zero the counted buffers' rows of these user and item rows (their ids were
        evicted: the rows start afresh)."""
        for names, rows in ((self.user_buffers, users), (self.item_buffers, items)):
            for name in names:
                getattr(self, name)[rows] = 0

    def counts_changed(self) -> None:
        """The counted buffers (:attr:`user_buffers`) were changed other than by
        :meth:`observe` (a distributed synchronisation): refresh what derives from them;
        nothing here."""

    def fast_steps(self, kernel: str = "auto") -> FastSteps | None:
        """The compiled training steps this backbone offers with ``kernel`` (``auto``: where
        they apply; ``torch``: never), or None: autograd then. None here; a backbone with
        compiled steps overrides it (:mod:`learner.core.fast`)."""
        check_kernel(kernel)
        return None

    def rows(self) -> tuple[int, int]:
        """Current capacity (user rows, item rows)."""
        return (
            getattr(self, self.user_tables[0]).num_embeddings,
            getattr(self, self.item_tables[0]).num_embeddings,
        )
