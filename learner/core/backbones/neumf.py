"""Neural Matrix Factorisation (He et al., WWW 2017), the paper's second backbone.

Built as in the NCF model of the InverseLearning / DenoisingRec reference code: a GMF part and
an MLP part with their own embeddings, whose outputs are concatenated into one predict layer.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.core.backbones.base import Backbone, sparse_table


class NeuMF(Backbone):
    """``logit = h . [p_u * q_i ; MLP([p'_u ; q'_i])] + b``.

    The GMF embeddings have ``dim`` factors; the MLP embeddings have
    ``dim * 2**(num_layers - 1)``, so the concatenated MLP input of ``dim * 2**num_layers``
    is halved by each of the ``num_layers`` layers (dropout, linear, ReLU) down to ``dim``.
    Context features are ignored.

    >>> import torch
    >>> model = NeuMF(dim=8, users=4, items=4)
    >>> model.mlp_user.embedding_dim
    32
    >>> model(torch.tensor([0, 1]), torch.tensor([2, 3])).shape
    torch.Size([2])
    """

    user_tables = ("gmf_user", "mlp_user")
    item_tables = ("gmf_item", "mlp_item")

    def __init__(
        self, dim: int = 32, users: int = 1024, items: int = 1024,
        feature_sizes: tuple[int, ...] = (), num_layers: int = 3, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        mlp_dim = dim * 2 ** (num_layers - 1)
        self.gmf_user = sparse_table(users, dim)
        self.gmf_item = sparse_table(items, dim)
        self.mlp_user = sparse_table(users, mlp_dim)
        self.mlp_item = sparse_table(items, mlp_dim)
        layers: list[nn.Module] = []
        for i in range(num_layers):
            width = dim * 2 ** (num_layers - i)
            layers += [nn.Dropout(p=dropout), nn.Linear(width, width // 2), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.predict = nn.Linear(dim * 2, 1)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat((self.mlp_user(users), self.mlp_item(items)), dim=-1))
        return self.predict(torch.cat((gmf, mlp), dim=-1)).squeeze(-1)
