"""Generalised Matrix Factorisation (He et al., WWW 2017), the paper's first backbone.

Its compiled training steps (no autograd, numba) are :mod:`.steps` over the arithmetic of
:mod:`.kernels`, offered to the learner by :meth:`GMF.fast_steps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from learner.core.backbones.base import Backbone, sparse_table

if TYPE_CHECKING:
    from learner.core.fast import FastSteps


class GMF(Backbone):
    """``logit = w . (p_u * q_i) + b``.

    >>> import torch
    >>> model = GMF(dim=8, users=4, items=4)
    >>> model(torch.tensor([0, 1]), torch.tensor([2, 3])).shape
    torch.Size([2])
    """

    user_tables = ("user",)
    item_tables = ("item",)

    def __init__(
        self, dim: int = 32, users: int = 1024, items: int = 1024,
        feature_sizes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.user = sparse_table(users, dim)
        self.item = sparse_table(items, dim)
        self.predict = nn.Linear(dim, 1)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.predict(self.user(users) * self.item(items)).squeeze(-1)

    def fast_steps(self, kernel: str = "auto") -> FastSteps | None:
        """GMF's compiled steps (:mod:`learner.core.backbones.gmf.steps`) with ``kernel="auto"``
        on the CPU, numba importable; else None."""
        from learner.core.backbones.gmf import steps  # late: numba, and steps imports GMF
        from learner.core.fast import CompiledFastSteps

        if not steps.compiled_applies(self, kernel):
            return None
        return CompiledFastSteps(self, steps.GMFLossStep, steps.GMFInverseGradient)
