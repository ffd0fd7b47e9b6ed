"""Generalised Matrix Factorisation (He et al., WWW 2017), the paper's first backbone."""

from __future__ import annotations

import torch
from torch import nn

from learner.backbones.base import Backbone, sparse_table


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
