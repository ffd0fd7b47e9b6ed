"""GMF's training steps on the CPU, written out in numpy: no autograd, no sparse tensors, a
few dozen array operations per step.

:class:`~learner.meta.InverseGradient` runs any backbone through autograd; at the learner's
train batch of 64 its step is ~100 small PyTorch operations, each paying PyTorch's
per-operation overhead, and it is most of the learner's time per event. For GMF,
``logit = w . (p_u * q_i) + b``, every gradient has a closed form:

- BCE: ``dL/dz = (sigmoid(z) - y) / n``;
- IDL on a vague event, with its detached weights ``wp + wn = 1``:
  ``dL/dz = (sigmoid(z) - wp) / n``;
- ``dL/dp_u = sum over the user's pairs of dL/dz * (q_i * w)``, and alike for ``q_i``;
  ``dL/dw = sum dL/dz * (p_u * q_i)``, ``dL/db = sum dL/dz``.

:class:`GMFInverseGradient` is the same step as ``InverseGradient`` over a GMF (look-ahead,
the three meta losses, the winner written back, then one step of the learner's own
:class:`~learner.optim.MixedAdam` on the meta loss), with the optimiser's arithmetic done on
numpy views of its own state tensors: SparseAdam's for the embedding rows, Adam's for ``w``
and ``b``. Checkpoints and the PyTorch path see the same state. It agrees with
``InverseGradient`` to float32 rounding (``tests/unit/test_gmf_steps.py``: same branch, the
parameters within 1e-6 after many steps). :class:`GMFLossStep` is the learner's plain step
(``bce`` or ``idl``, ``MixedAdam``) the same way. The learner takes both for GMF on the CPU
unless ``kernel="torch"``.

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

from learner.backbones.base import Backbone
from learner.backbones.gmf import GMF
from learner.losses import IDL_A
from learner.meta import ADAM_EPS, BRANCHES, InverseGradient, Pairs
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


def _idl_wp(z: np.ndarray) -> np.ndarray:
    """IDL's normalised positive weight of vague logits (see learner.losses.idl_weights)."""
    lp, ln = _softplus(-z), _softplus(z)
    wp, wn = ln / (lp + IDL_A), lp / (ln + IDL_A)
    return wp / (wp + wn)


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


class _NumpyStep:
    """What both steps share: the checks, the model's tensors, and one MixedAdam update."""

    def __init__(self, model: GMF, optimizer: MixedAdam) -> None:
        if type(model) is not GMF:
            raise ConfigError(f"the numpy steps are for GMF, not {type(model).__name__}")
        if model.user.weight.device.type != "cpu":
            raise ConfigError("the numpy steps run on the CPU only")
        for opt in optimizer.optimizers:
            group = opt.param_groups[0]
            if group.get("maximize") or group.get("weight_decay") or group.get("amsgrad"):
                raise ConfigError("the numpy steps do plain Adam: no maximize, weight decay "
                                  "or amsgrad")
        self.model, self.optimizer = model, optimizer

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
        """The tables (detached: writes go to the model) and views of ``w`` and ``b``."""
        model = self.model
        return (model.user.weight.detach(), model.item.weight.detach(),
                model.predict.weight.detach().numpy()[0], model.predict.bias.detach().numpy())

    def _update(self, users: np.ndarray, items: np.ndarray, p: np.ndarray, q: np.ndarray,
                dz: np.ndarray) -> None:
        """One MixedAdam step from ``dL/dz`` of the pairs (user row ``users[k]`` with value
        ``p[k]``, item row ``items[k]`` with value ``q[k]``). Every row of the pairs is
        updated, a zero gradient too, as autograd's sparse gradient of an embedding lookup
        holds every row looked up."""
        model = self.model
        dzw = dz[:, None] * model.predict.weight.detach().numpy()[0]
        user_rows, u_index = np.unique(users, return_inverse=True)
        item_rows, i_index = np.unique(items, return_inverse=True)
        sparse, dense = self.optimizer.sparse, self.optimizer.dense
        self._sparse_adam(sparse, model.user.weight, user_rows,
                          _row_sums(u_index, len(user_rows), dzw * q))
        self._sparse_adam(sparse, model.item.weight, item_rows,
                          _row_sums(i_index, len(item_rows), dzw * p))
        self._adam(dense, model.predict.weight, (dz @ (p * q))[None, :])
        self._adam(dense, model.predict.bias, np.array([dz.sum()], dz.dtype))

    @staticmethod
    def _sparse_adam(opt: torch.optim.Optimizer, param: torch.Tensor, rows: np.ndarray,
                     grad: np.ndarray) -> None:
        """:class:`~learner.optim.RowSparseAdam`'s update of ``rows`` (unique) by ``grad``,
        in numpy: calling its torch ops on these small arrays (``update_rows`` style) was
        measured at 133 us a table against 35 here, half the whole step's gain."""
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
        state layout (``step`` a float32 scalar tensor). Setting ``.grad`` and calling the
        learner's fused Adam on ``w`` and ``b`` costs 130 us a step, against 2 x 19 here."""
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


class GMFInverseGradient(_NumpyStep):
    """The IG step of :class:`~learner.meta.InverseGradient` for a GMF on the CPU, in numpy."""

    def __init__(self, model: GMF, optimizer: MixedAdam, sample_lr: float = 1e-3,
                 lookahead: str = "adam") -> None:
        super().__init__(model, optimizer)
        if lookahead not in ("adam", "sgd"):
            raise ConfigError(f"lookahead must be adam or sgd, not {lookahead!r}")
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
        users_all, items_all, w, b = self._tensors()
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
        dz = (_sigmoid(zv) - _idl_wp(zv)) / n_vague
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
        zm = (pm * qm) @ w + b[0]
        self._update(users[um], items[im], pm, qm, (_sigmoid(zm) - y) / len(y))
        return chosen, meta_losses, _bce(zm, y)


class GMFLossStep(_NumpyStep):
    """The learner's plain step (``MixedAdam`` on ``bce`` or ``idl`` of
    :mod:`learner.losses`) for a GMF on the CPU, in numpy."""

    LOSSES = ("bce", "idl")

    def __init__(self, model: GMF, optimizer: MixedAdam, loss: str) -> None:
        super().__init__(model, optimizer)
        if loss not in self.LOSSES:
            raise ConfigError(f"the numpy step trains bce or idl, not {loss!r}")
        self.loss = loss

    def step(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
             vague: np.ndarray) -> tuple[float, int]:
        """One step on the pairs (table rows ``users``, ``items``); ``labels`` 1/0 for the
        genuine events, ``vague`` marks the others. Returns the loss and the number of vague
        events the model leaned positive on (before the step)."""
        users_all, items_all, w, b = self._tensors()
        p, q = _take(users_all, users), _take(items_all, items)
        z = (p * q) @ w + b[0]
        genuine = ~vague
        y = np.where(genuine, labels, 0).astype(z.dtype)
        if self.loss == "bce":  # genuine events only; with none, a zero loss and gradient
            n = int(genuine.sum())
            dz = np.where(genuine, _sigmoid(z) - y, 0) / max(n, 1)
            loss = _bce(z[genuine], y[genuine]) if n else 0.0
        else:  # idl: BCE on genuine, IDL on vague events, the mean over all
            wp = _idl_wp(z)
            dz = (_sigmoid(z) - np.where(genuine, y, wp)) / len(z)
            idl = wp * _softplus(-z) + (1 - wp) * _softplus(z)
            loss = float(np.mean(np.where(genuine, _softplus(z) - y * z, idl)))
        lean = int(((z > 0) & vague).sum())
        self._update(users, items, p, q, dz.astype(z.dtype))
        return loss, lean



KERNELS = ("auto", "torch")


def _numpy_applies(model: Backbone, kernel: str) -> bool:
    """Whether the learner takes the numpy steps: ``kernel="auto"`` and a GMF on the CPU."""
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be auto or torch, not {kernel!r}")
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return kernel == "auto" and type(model) is GMF and on_cpu


def make_inverse_gradient(
    model: Backbone, optimizer: MixedAdam, sample_lr: float = 1e-3, lookahead: str = "adam",
    kernel: str = "auto",
) -> InverseGradient | GMFInverseGradient:
    """The learner's IG step: :class:`GMFInverseGradient` where the numpy steps apply, else
    :class:`~learner.meta.InverseGradient`. Both keep the same state in ``model`` and
    ``optimizer``."""
    if _numpy_applies(model, kernel):
        return GMFInverseGradient(model, optimizer, sample_lr, lookahead)
    return InverseGradient(model, optimizer, sample_lr, lookahead)


def make_loss_step(model: Backbone, optimizer: MixedAdam, loss: str,
                   kernel: str = "auto") -> GMFLossStep | None:
    """The numpy plain step where the numpy steps apply and ``loss`` is ``bce`` or ``idl``,
    else None: the learner's autograd step then."""
    if _numpy_applies(model, kernel) and loss in GMFLossStep.LOSSES:
        return GMFLossStep(model, optimizer, loss)
    return None
