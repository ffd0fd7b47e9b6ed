"""Optimiser for a backbone: SparseAdam on embedding rows, Adam on dense layers, tables that grow.

Adam's moments for an embedding row are updated only when the row is in the batch (that is
SparseAdam's semantics), so a step costs the same with 10^4 or 10^6 rows in a table. Tables
grow with :func:`ensure_rows`; rows that a full id map hands to new ids start afresh with
:func:`reset_rows`.

>>> from learner.core.backbones import GMF
>>> model = GMF(dim=4, users=2, items=2)
>>> opt = MixedAdam(model, lr=0.01)
>>> ensure_rows(model, opt, users=5, items=1)
>>> model.rows()
(8, 2)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from learner.core.backbones.base import INIT_STD, Backbone


class RowSparseAdam(torch.optim.SparseAdam):
    """:class:`torch.optim.SparseAdam` with its step done on the gradient's rows directly.

    The same state (``step``, ``exp_avg``, ``exp_avg_sq``) and the same arithmetic in the
    same order, so the results are bit for bit torch's (``tests/unit/test_learner.py``
    checks it); but the moments of the rows in the gradient are read with ``index_select``
    and written with ``index_add_``, where torch masks the whole table with ``sparse_mask``
    and builds three sparse tensors per table and step: 1.65x less time per step, measured
    side by side on two tables of 50,000 rows and 256-row gradients (docs/BENCHMARKS.md).
    """

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], float(group["lr"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                grad = param.grad.coalesce()  # the update is non-linear: unique rows
                values = grad._values()
                if values.numel() == 0:
                    continue
                if group.get("maximize", False):
                    values = -values
                rows = grad._indices()[0]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                old_avg = exp_avg.index_select(0, rows)
                avg_update = values.sub(old_avg).mul_(1 - beta1)
                exp_avg.index_add_(0, rows, avg_update)
                old_sq = exp_avg_sq.index_select(0, rows)
                sq_update = values.pow(2).sub_(old_sq).mul_(1 - beta2)
                exp_avg_sq.index_add_(0, rows, sq_update)
                numer = avg_update.add_(old_avg)
                denom = sq_update.add_(old_sq).sqrt_().add_(eps)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                param.index_add_(0, rows, -step_size * numer.div_(denom))
        return loss


class MixedAdam:
    """SparseAdam for sparse embedding tables and Adam for the dense parameters of a model.

    By default :class:`RowSparseAdam` and torch's fused Adam (one kernel for all the dense
    tensors, where the default runs a Python loop over them); ``lean=False`` takes torch's
    SparseAdam and Adam as they come (the benchmarks' baseline, ``dwell bench --suites
    steps``). Both keep torch's state layout, so checkpoints load into either. ``dense_lr``
    is the dense parameters' own learning rate (0: the backbone's, :attr:`Backbone.dense_lr`,
    or ``lr``). A backbone whose ``dense_optimizer`` is ``"adagrad"`` (the wide model) has
    its dense parameters stepped by Adagrad, as the wide part of Wide & Deep.
    """

    def __init__(self, model: Backbone, lr: float, lean: bool = True,
                 dense_lr: float = 0.0) -> None:
        sparse = [getattr(model, n).weight for n in model.user_tables + model.item_tables]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
        self.sparse = (RowSparseAdam if lean else torch.optim.SparseAdam)(sparse, lr=lr)
        self.dense: torch.optim.Optimizer | None
        if not dense:
            self.dense = None
        elif model.dense_optimizer == "adagrad":
            self.dense = torch.optim.Adagrad(dense, lr=dense_lr or model.dense_lr)
        else:
            self.dense = torch.optim.Adam(dense, lr=dense_lr or lr, fused=lean or None)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.sparse] + ([self.dense] if self.dense else [])

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, dict[str, Any] | None]:
        """Both optimisers' states; ``"dense"`` None where the model has no dense parameters."""
        return {"sparse": self.sparse.state_dict(),
                "dense": self.dense.state_dict() if self.dense else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
                state[key] = _zero_padded(value, rows)
        opt.state[param] = state


def _zero_padded(value: torch.Tensor, rows: int) -> torch.Tensor:
    """``value`` with zero rows added up to ``rows``."""
    padded = value.new_zeros((rows, *value.shape[1:]))
    padded[: value.shape[0]] = value
    return padded


def _doubled(rows: int, needed: int) -> int:
    """``rows`` doubled until it holds ``needed``."""
    while rows < needed:
        rows *= 2
    return rows


def ensure_rows(model: Backbone, opt: MixedAdam, users: int, items: int) -> None:
    """Grow every table (doubling) until it holds ``users`` / ``items`` rows; keep Adam state."""
    for names, needed in ((model.user_tables, users), (model.item_tables, items)):
        for name in names:
            table = getattr(model, name)
            if needed > table.num_embeddings:
                _grow_table(table, _doubled(table.num_embeddings, needed), opt.sparse)
    for names, needed in ((model.user_buffers, users), (model.item_buffers, items)):
        for name in names:
            buffer = getattr(model, name)
            if needed > buffer.shape[0]:  # a registered buffer stays one when set again
                setattr(model, name, _zero_padded(buffer, _doubled(buffer.shape[0], needed)))


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
    device = next(model.parameters()).device
    model.forget(torch.as_tensor(users, dtype=torch.int64, device=device),
                 torch.as_tensor(items, dtype=torch.int64, device=device))
