"""DeepFM (Guo et al., IJCAI 2017) over the fields [user, item, *context features].

User and item are open-ended id spaces: their embeddings and first-order weights are sparse
tables that grow with the ids (:func:`~learner.core.optim.ensure_rows`). The context fields of
:mod:`learner.core.features` have a fixed, small vocabulary: they are ordinary dense embeddings,
trained by the dense Adam of :class:`~learner.core.optim.MixedAdam`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from learner.core.backbones.base import INIT_STD, Backbone, sparse_table
from learner.core.features import FEATURE_SIZES


class DeepFM(Backbone):
    """``logit = b + sum_f w_f + FM(v_1..v_F) + DNN([v_1; ..; v_F])``.

    ``FM`` is the second-order term ``0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2)``; the DNN
    has hidden layers of ``hidden`` units with ReLU. Field ``f >= 2`` is column ``f - 2`` of
    ``feats`` (sizes ``feature_sizes``). Without ``feats`` only the user and item fields are
    used: the context fields contribute nothing to the first- and second-order terms and
    zeros to the DNN input.

    >>> import torch
    >>> model = DeepFM(dim=8, users=4, items=4, feature_sizes=(24, 16))
    >>> users, items = torch.tensor([0, 1]), torch.tensor([2, 3])
    >>> model(users, items, torch.tensor([[5, 3], [23, 15]])).shape
    torch.Size([2])
    >>> model(users, items).shape
    torch.Size([2])
    """

    user_tables = ("user", "user_bias")
    item_tables = ("item", "item_bias")

    def __init__(
        self, dim: int = 32, users: int = 1024, items: int = 1024,
        feature_sizes: tuple[int, ...] = FEATURE_SIZES, hidden: tuple[int, ...] = (64, 64),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.feature_sizes = tuple(feature_sizes)
        self.user = sparse_table(users, dim)
        self.item = sparse_table(items, dim)
        self.user_bias = sparse_table(users, 1)
        self.item_bias = sparse_table(items, 1)
        self.context = nn.ModuleList(nn.Embedding(size, dim) for size in self.feature_sizes)
        self.context_bias = nn.ModuleList(nn.Embedding(size, 1) for size in self.feature_sizes)
        for table in (*self.context, *self.context_bias):
            nn.init.normal_(table.weight, std=INIT_STD)
        layers: list[nn.Module] = []
        width = (2 + len(self.feature_sizes)) * dim
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, 1))
        self.deep = nn.Sequential(*layers)
        for module in self.deep:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        fields = [self.user(users), self.item(items)]
        first = self.user_bias(users) + self.item_bias(items)
        missing = len(self.context)
        if feats is not None and missing:
            if feats.dim() != 2 or feats.shape[1] != missing:
                raise ValueError(
                    f"feats must have shape (n, {missing}), got {tuple(feats.shape)}"
                )
            pairs = zip(self.context, self.context_bias, strict=True)
            for column, (table, bias) in enumerate(pairs):
                ids = feats[:, column]
                fields.append(table(ids))
                first = first + bias(ids)
            missing = 0
        v = torch.stack(fields, dim=1)  # (n, fields, dim)
        summed = v.sum(dim=1)
        second = 0.5 * (summed.pow(2) - v.pow(2).sum(dim=1)).sum(dim=-1)
        deep_in = F.pad(v.flatten(1), (0, missing * self.dim))
        deep = self.deep(deep_in).squeeze(-1)
        return self.bias + first.squeeze(-1) + second + deep

    def user_logit(self, users: torch.Tensor) -> torch.Tensor:
        """The user's bias: the second-order and deep terms all involve the video."""
        return self.user_bias(users)[:, 0]
