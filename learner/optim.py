"""Optimiser for a backbone: SparseAdam on embedding rows, Adam on dense layers, tables that grow.

Adam's moments for an embedding row are updated only when the row is in the batch (that is
SparseAdam's semantics), so a step costs the same with 10^4 or 10^6 rows in a table. Tables
grow with :func:`ensure_rows`; rows that a full id map hands to new ids start afresh with
:func:`reset_rows`.

>>> from learner.backbones import GMF
>>> model = GMF(dim=4, users=2, items=2)
>>> opt = MixedAdam(model, lr=0.01)
>>> ensure_rows(model, opt, users=5, items=1)
>>> model.rows()
(8, 2)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from learner.backbones.base import INIT_STD, Backbone


class MixedAdam:
    """SparseAdam for sparse embedding tables and Adam for the dense parameters of a model."""

    def __init__(self, model: Backbone, lr: float) -> None:
        sparse = [getattr(model, n).weight for n in model.user_tables + model.item_tables]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)
        self.dense = torch.optim.Adam(dense, lr=lr) if dense else None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.sparse] + ([self.dense] if self.dense else [])

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, dict]:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense and self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.sparse.load_state_dict(state["sparse"])
        if self.dense:
            self.dense.load_state_dict(state["dense"])


def _grow_table(table: nn.Embedding, rows: int, opt: torch.optim.Optimizer) -> None:
    old = table.weight
    new = torch.empty(rows, old.shape[1], dtype=old.dtype, device=old.device)
    new[: old.shape[0]] = old.detach()
    nn.init.normal_(new[old.shape[0] :], std=INIT_STD)
    param = nn.Parameter(new)
    table.weight = param
    table.num_embeddings = rows
    for group in opt.param_groups:
        group["params"] = [param if p is old else p for p in group["params"]]
    state = opt.state.pop(old, None)
    if state:
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape[:1] == old.shape[:1]:
                padded = value.new_zeros((rows, *value.shape[1:]))
                padded[: old.shape[0]] = value
                state[key] = padded
        opt.state[param] = state


def ensure_rows(model: Backbone, opt: MixedAdam, users: int, items: int) -> None:
    """Grow every table (doubling) until it holds ``users`` / ``items`` rows; keep Adam state."""
    for names, needed in ((model.user_tables, users), (model.item_tables, items)):
        for name in names:
            table = getattr(model, name)
            rows = table.num_embeddings
            if needed <= rows:
                continue
            while rows < needed:
                rows *= 2
            _grow_table(table, rows, opt.sparse)


@torch.no_grad()
def reset_rows(model: Backbone, opt: MixedAdam, users: np.ndarray, items: np.ndarray) -> None:
    """Start the given user and item rows afresh, as :func:`ensure_rows` starts new rows:
    drawn again from N(0, INIT_STD) (user tables first, each in the order given) and their
    SparseAdam moments zeroed. For rows whose ids were evicted and that now hold new ids."""
    for names, rows in ((model.user_tables, users), (model.item_tables, items)):
        if len(rows) == 0:
            continue
        index = torch.as_tensor(rows, dtype=torch.int64)
        for name in names:
            weight = getattr(model, name).weight
            index = index.to(weight.device)
            fresh = torch.empty(index.numel(), weight.shape[1], dtype=weight.dtype,
                                device=weight.device)
            nn.init.normal_(fresh, std=INIT_STD)
            weight[index] = fresh
            for value in opt.sparse.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape[:1] == weight.shape[:1]:
                    value[index] = 0
