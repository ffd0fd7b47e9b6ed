"""The Inverse Gradient step for GMF on the CPU, written out in numpy: no autograd, no sparse
tensors, a few dozen array operations per step.

:class:`~learner.meta.InverseGradient` runs any backbone through autograd; at the learner's
train batch of 64 its step is ~100 small PyTorch operations, each paying PyTorch's
per-operation overhead, and it is most of the learner's time per event. For GMF,
``logit = w . (p_u * q_i) + b``, every gradient has a closed form:

- meta BCE: ``dL/dz = (sigmoid(z) - y) / n``;
- vague IDL with its detached weights ``wp + wn = 1``: ``dL/dz = (sigmoid(z) - wp) / n``;
- ``dL/dp_u = sum over the user's pairs of dL/dz * (q_i * w)``, and alike for ``q_i``;
  ``dL/dw = sum dL/dz * (p_u * q_i)``, ``dL/db = sum dL/dz``.

:class:`GMFInverseGradient` is the same step as ``InverseGradient`` over a GMF (look-ahead,
the three meta losses, the winner written back, then one step of the learner's own
:class:`~learner.optim.MixedAdam` on the meta loss), with the optimiser's arithmetic done on
numpy views of its own state tensors: SparseAdam's for the embedding rows, Adam's for ``w``
and ``b``. Checkpoints and the PyTorch path see the same state. It agrees with
``InverseGradient`` to float32 rounding (``tests/unit/test_gmf_ig.py``: same branch, the
parameters within 1e-6 after many steps). The learner uses it for GMF on the CPU unless
``ig_kernel="torch"``.

>>> import torch
>>> from learner.backbones import GMF
>>> from learner.meta import Pairs
>>> from learner.optim import MixedAdam
>>> model = GMF(dim=4, users=8, items=8)
>>> ig = GMFInverseGradient(model, MixedAdam(model, lr=0.01))
>>> vague, meta = Pairs(torch.tensor([0, 1]), torch.tensor([2, 3])), Pairs(
...     torch.tensor([1, 4]), torch.tensor([3, 5]))
>>> branch, losses, loss = ig.step(vague, meta, torch.tensor([1.0, 0.0]))
>>> branch in ("original", "forward", "inverse"), sorted(losses)
(True, ['forward', 'inverse', 'original'])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from learner.backbones.gmf import GMF
from learner.losses import IDL_A
from learner.meta import ADAM_EPS, BRANCHES, Pairs
from learner.optim import MixedAdam
from stream.errors import ConfigError


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * z) + 1)  # no overflow warning for large |z|


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    """Mean BCE with logits, in the stable form."""
    return float(np.mean(_softplus(z) - y * z))


ONE_HOT_LIMIT = 1 << 16  # rows x events up to which a one-hot product beats index_add_


def _row_sums(index: np.ndarray, rows: int, values: np.ndarray) -> np.ndarray:
    """``values`` summed per row ``index`` (into ``rows`` rows). Small batches (the learner's
    train batch of 64) take a one-hot matrix product; large ones torch's ``index_add_``
    (10x faster than ``np.add.at`` at 4,096 events)."""
    if rows * len(index) <= ONE_HOT_LIMIT:
        one_hot = np.zeros((rows, len(index)), values.dtype)
        one_hot[index, np.arange(len(index))] = 1
        return one_hot @ values
    out = torch.zeros(rows, values.shape[1], dtype=torch.from_numpy(values).dtype)
    return out.index_add_(0, torch.from_numpy(index), torch.from_numpy(values)).numpy()


SMALL_ROWS = 256  # below this many rows numpy's fancy indexing beats torch's index ops


def _take(table: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """Rows of a table as a new array; for many rows torch's gather (5x numpy's at 4,000
    rows of a 10^6-row table)."""
    if len(rows) < SMALL_ROWS:
        return table.numpy()[rows]
    return table.index_select(0, torch.from_numpy(rows)).numpy()


def _put(table: torch.Tensor, rows: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` to ``rows`` (unique) of a table."""
    if len(rows) < SMALL_ROWS:
        table.numpy()[rows] = values
    else:
        table.index_copy_(0, torch.from_numpy(rows), torch.from_numpy(values))


class GMFInverseGradient:
    """The IG step of :class:`~learner.meta.InverseGradient` for a GMF on the CPU, in numpy."""

    def __init__(self, model: GMF, optimizer: MixedAdam, sample_lr: float = 1e-3,
                 lookahead: str = "adam") -> None:
        if type(model) is not GMF:
            raise ConfigError(f"the numpy IG step is for GMF, not {type(model).__name__}")
        if lookahead not in ("adam", "sgd"):
            raise ConfigError(f"lookahead must be adam or sgd, not {lookahead!r}")
        for opt in optimizer.optimizers:
            group = opt.param_groups[0]
            if group.get("maximize") or group.get("weight_decay") or group.get("amsgrad"):
                raise ConfigError("the numpy IG step does plain Adam: no maximize, weight "
                                  "decay or amsgrad")
        self.model, self.optimizer = model, optimizer
        self.sample_lr, self.lookahead = sample_lr, lookahead
        self.last_vague_positive = 0

    def _delta(self, grad: np.ndarray) -> np.ndarray:
        if self.lookahead == "adam":  # a fresh Adam's first step (see learner.meta)
            return self.sample_lr * grad / (np.abs(grad) + ADAM_EPS)
        return self.sample_lr * grad

    def step(
        self, vague: Pairs, meta: Pairs, meta_labels: torch.Tensor, branch: str | None = None
    ) -> tuple[str, dict[str, float], float]:
        """One IG step; returns the branch kept, the three meta losses and the final loss."""
        model = self.model
        if model.user.weight.device.type != "cpu":
            raise ConfigError("the numpy IG step runs on the CPU only")
        users_all = model.user.weight.detach()  # writes to these go to the model
        items_all = model.item.weight.detach()
        w = model.predict.weight.detach().numpy()[0]
        b = model.predict.bias.detach().numpy()
        n_vague = len(vague)
        users, u_local = np.unique(np.concatenate([vague.users.numpy(), meta.users.numpy()]),
                                   return_inverse=True)
        items, i_local = np.unique(np.concatenate([vague.items.numpy(), meta.items.numpy()]),
                                   return_inverse=True)
        p, q = _take(users_all, users), _take(items_all, items)  # the rows it can change

        # 1. look ahead on the vague events' IDL
        uv, iv = u_local[:n_vague], i_local[:n_vague]
        pv, qv = p[uv], q[iv]
        hv = pv * qv
        zv = hv @ w + b[0]
        self.last_vague_positive = int((zv > 0).sum())
        lp, ln = _softplus(-zv), _softplus(zv)
        wp, wn = ln / (lp + IDL_A), lp / (ln + IDL_A)
        dz = (_sigmoid(zv) - wp / (wp + wn)) / n_vague
        dzw = dz[:, None] * w
        delta_p = self._delta(_row_sums(uv, len(users), dzw * qv))
        delta_q = self._delta(_row_sums(iv, len(items), dzw * pv))
        delta_w, delta_b = self._delta(dz @ hv), self._delta(np.array([dz.sum()], b.dtype))

        # 2. the three meta losses; the lowest wins, ties to the earlier branch
        um, im = u_local[n_vague:], i_local[n_vague:]
        y = meta_labels.numpy()
        thetas = {name: (p + s * delta_p, q + s * delta_q, w + s * delta_w, b + s * delta_b)
                  for name, s in zip(BRANCHES, (0, -1, 1), strict=True)}
        meta_losses = {name: _bce((tp[um] * tq[im]) @ tw + tb[0], y)
                       for name, (tp, tq, tw, tb) in thetas.items()}
        chosen = branch or min(BRANCHES, key=lambda name: meta_losses[name])
        p, q, w_new, b_new = thetas[chosen]
        if chosen != "original":
            _put(users_all, users, p)
            _put(items_all, items, q)
            w[:], b[:] = w_new, b_new

        # 3. one step of the learner's optimiser on the meta BCE, from the kept branch
        pm, qm = p[um], q[im]
        hm = pm * qm
        zm = hm @ w + b[0]
        loss = _bce(zm, y)
        dz = (_sigmoid(zm) - y) / len(y)
        dzw = dz[:, None] * w
        meta_users, mu = np.unique(um, return_inverse=True)
        meta_items, mi = np.unique(im, return_inverse=True)
        grad_w, grad_b = dz @ hm, np.array([dz.sum()], b.dtype)
        sparse = self.optimizer.sparse
        self._sparse_adam(sparse, model.user.weight, users[meta_users],
                          _row_sums(mu, len(meta_users), dzw * qm))
        self._sparse_adam(sparse, model.item.weight, items[meta_items],
                          _row_sums(mi, len(meta_items), dzw * pm))
        dense = self.optimizer.dense
        self._adam(dense, model.predict.weight, grad_w[None, :])
        self._adam(dense, model.predict.bias, grad_b)
        return chosen, meta_losses, loss

    @staticmethod
    def _sparse_adam(opt: torch.optim.Optimizer, param: torch.Tensor, rows: np.ndarray,
                     grad: np.ndarray) -> None:
        """:class:`~learner.optim.RowSparseAdam`'s update of ``rows`` (unique) by ``grad``."""
        group = opt.param_groups[0]
        beta1, beta2 = group["betas"]
        state = opt.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        avg = _take(state["exp_avg"], rows)
        avg += (grad - avg) * (1 - beta1)
        sq = _take(state["exp_avg_sq"], rows)
        sq += (grad * grad - sq) * (1 - beta2)
        _put(state["exp_avg"], rows, avg)
        _put(state["exp_avg_sq"], rows, sq)
        step = state["step"]
        step_size = float(group["lr"]) * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        table = param.detach()
        _put(table, rows, _take(table, rows) - step_size * (avg / (np.sqrt(sq) + group["eps"])))

    @staticmethod
    def _adam(opt: torch.optim.Optimizer, param: torch.Tensor, grad: np.ndarray) -> None:
        """Adam's update of a dense parameter (no weight decay, no amsgrad), in torch's
        state layout (``step`` a float32 scalar tensor)."""
        group = opt.param_groups[0]
        beta1, beta2 = group["betas"]
        state = opt.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()
        exp_avg += (grad - exp_avg) * (1 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        step_size = float(group["lr"]) / (1 - beta1**step)
        denom = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta2**step) + group["eps"]
        param.detach().numpy()[...] -= step_size * exp_avg / denom
