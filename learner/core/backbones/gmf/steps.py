"""GMF's training steps on the CPU, compiled: no autograd, no sparse tensors, one call a step.

:class:`~learner.core.meta.InverseGradient` runs any backbone through autograd; at the learner's
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
:class:`~learner.core.optim.MixedAdam` on the meta loss). Its arithmetic is in
:mod:`~learner.core.backbones.gmf.kernels` (numba), done in place on numpy views of the model's
tensors and
of the optimiser's own state: SparseAdam's for the embedding rows, Adam's for ``w`` and
``b``. Checkpoints and the PyTorch path see the same state. It agrees with
``InverseGradient`` to float32 rounding (``tests/unit/test_gmf_steps.py``: same branch, the
parameters within 1e-6 after many steps). :class:`GMFLossStep` is the learner's plain step
(``bce`` or ``idl``, ``MixedAdam``) the same way. :meth:`GMF.fast_steps` offers both
(:class:`learner.core.fast.CompiledFastSteps`) for GMF on the CPU unless ``kernel="torch"``
(:mod:`learner.core.fast`).

>>> import torch
>>> from learner.core.backbones import GMF
>>> from learner.core.meta import Pairs
>>> from learner.core.optim import MixedAdam
>>> model = GMF(dim=4, users=8, items=8)
>>> ig = GMFInverseGradient(model, MixedAdam(model, lr=0.01))
>>> vague, meta = Pairs(torch.tensor([0, 1]), torch.tensor([2, 3])), Pairs(
...     torch.tensor([1, 4]), torch.tensor([3, 5]))
>>> branch, losses, loss = ig.step(vague, meta, torch.tensor([1.0, 0.0]))
>>> branch in ("original", "forward", "inverse"), sorted(losses)
(True, ['forward', 'inverse', 'original'])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from learner.core import fast
from learner.core.backbones.base import Backbone
from learner.core.backbones.gmf import GMF
from learner.core.errors import ConfigError
from learner.core.meta import BRANCHES
from learner.core.optim import MixedAdam

try:  # numba is a dependency; where it cannot be imported, GMF trains through autograd
    from learner.core.backbones.gmf import kernels
except ImportError as exc:  # pragma: no cover - depends on the installation
    # None marks the kernels missing, checked before any use (``kernels is None``); cast,
    # as a module's type has no optional form
    kernels, NO_KERNELS = cast(Any, None), f"{type(exc).__name__}: {exc}"
else:
    NO_KERNELS = ""


def _index(rows: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.int64)


class _CompiledStep:
    """What both steps share: the checks, and the arrays and step sizes of one MixedAdam step."""

    def __init__(self, model: GMF, optimizer: MixedAdam) -> None:
        if type(model) is not GMF:
            raise ConfigError(f"the compiled steps are for GMF, not {type(model).__name__}")
        if model.user.weight.device.type != "cpu":
            raise ConfigError("the compiled steps run on the CPU only")
        for opt in optimizer.optimizers:
            group = opt.param_groups[0]
            if group.get("maximize") or group.get("weight_decay") or group.get("amsgrad"):
                raise ConfigError("the compiled steps do plain Adam: no maximize, weight "
                                  "decay or amsgrad")
        if kernels is None:
            raise ConfigError(f"the compiled steps need numba ({NO_KERNELS})")
        self.model, self.optimizer = model, optimizer
        kernels.warm_up()
        self._cache: tuple | None = None  # (key, states, their tensors, views): _arrays

    def _arrays(self, n: int = 1) -> tuple:
        """Numpy views of the model's tables, ``w``, ``b`` and the optimiser state's moments
        (:meth:`_cached`), and the sizes of the next ``n`` steps (the step counters
        advanced)."""
        states, (p, q, w, b, moments, steps) = self._cached()
        return p, q, w, b, moments, self._hyper(states, steps, n)

    def scores(self, users: np.ndarray, items: np.ndarray,
               feats: np.ndarray | None = None) -> np.ndarray:
        """Like probabilities (float32) of the pairs (table rows ``users``, ``items``; GMF
        takes no context ``feats``): the model's own, without torch's per-call overhead."""
        _states, (p, q, w, b, _moments, _steps) = self._cached()
        out = np.empty(len(users), np.float32)
        kernels.scores(p, q, w, b, _index(users), _index(items), out)
        return out

    def observe(self, users: np.ndarray, items: np.ndarray, positive: np.ndarray) -> None:
        """Nothing: GMF counts nothing (:meth:`Backbone.observe`)."""

    def _cached(self) -> tuple:
        """The optimiser's states of the four parameters, and numpy views of the model's
        tables, ``w``, ``b``, the moments and the dense step counters (:meth:`_views`). The
        views are made again only when a tensor or a state is replaced (tables grow, a
        checkpoint loads). The check reads the modules' parameter dicts directly: attribute
        access and a state lookup by tensor cost 1.4 and 3.4 us each, and the check would
        otherwise cost ~25 us a step."""
        # torch types the submodules and parameters as optional: GMF's are all set, and
        # MixedAdam has a dense Adam for GMF's w and b
        modules = cast("dict[str, torch.nn.Module]", self.model._modules)
        sparse, dense = self.optimizer.sparse, self.optimizer.dense
        assert dense is not None
        params = cast("tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]", (
            modules["user"]._parameters["weight"], modules["item"]._parameters["weight"],
            modules["predict"]._parameters["weight"], modules["predict"]._parameters["bias"]))
        key = (*params, sparse.state, dense.state)
        cache = self._cache
        if (cache is None or any(a is not b for a, b in zip(key, cache[0], strict=True))
                or any(state[k] is not t for state, k, t in cache[2])):
            states = (_state(sparse, params[0], False), _state(sparse, params[1], False),
                      _state(dense, params[2], True), _state(dense, params[3], True))
            tensors = [(state, k, t) for state in states for k, t in state.items()
                       if torch.is_tensor(t)]
            cache = self._cache = (key, states, tensors, self._views(params, states))
        return cache[1], cache[3]

    def _hyper(self, states: tuple, steps: tuple, n: int) -> np.ndarray:
        """Advance the step counters by ``n`` (SparseAdam's ints in ``states``, Adam's float32
        scalars through their views ``steps``); the sizes of these ``n`` steps, a row each,
        as :mod:`learner.core.backbones.gmf.kernels` takes them."""
        sparse, dense = self.optimizer.sparse, self.optimizer.dense
        assert dense is not None  # MixedAdam's Adam for GMF's w and b
        s_group, d_group = sparse.param_groups[0], dense.param_groups[0]
        beta1, beta2 = s_group["betas"]
        if tuple(d_group["betas"]) != (beta1, beta2):
            raise ConfigError("the compiled steps take one pair of Adam betas for all tables")
        hyper = np.empty((n, kernels.HYPER_SIZE))
        s_lr, d_lr = float(s_group["lr"]), float(d_group["lr"])
        ahead = np.arange(1, n + 1, dtype=np.float64)
        for state, at in ((states[0], kernels.SPARSE_USER), (states[1], kernels.SPARSE_ITEM)):
            step = state["step"] + ahead
            state["step"] += n
            hyper[:, at] = s_lr * np.sqrt(1 - beta2**step) / (1 - beta1**step)
        for step_view, at in ((steps[0], kernels.DENSE_W), (steps[1], kernels.DENSE_B)):
            step = float(step_view) + ahead
            step_view += n
            hyper[:, at], hyper[:, at + 1] = d_lr / (1 - beta1**step), np.sqrt(1 - beta2**step)
        hyper[:, kernels.BETA1], hyper[:, kernels.BETA2] = beta1, beta2
        hyper[:, kernels.EPS_S], hyper[:, kernels.EPS_D] = s_group["eps"], d_group["eps"]
        return hyper

    def _plan_steps(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                    vague: np.ndarray, order: np.ndarray, bounds: np.ndarray, ig: bool,
                    idl: bool, sample_lr: float = 0.0, adam_lookahead: bool = True,
                    ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:func:`~learner.core.backbones.gmf.kernels.train_steps` ready to call (the step counters
        advanced
        already), and the arrays it fills: the steps' branches, losses and leanings. The call
        holds the interpreter lock only to start and to return."""
        n = bounds.size - 1
        p, q, w, b, moments, hypers = self._arrays(n)
        branches, leans, losses = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n)
        run = functools.partial(
            kernels.train_steps, p, q, w, b, moments, _index(users), _index(items),
            np.asarray(labels, np.float32), np.asarray(vague, bool), _index(order),
            _index(bounds), ig, idl, sample_lr, adam_lookahead, hypers, branches, leans, losses)
        return run, (branches, losses, leans)

    @staticmethod
    def _views(params: tuple, states: tuple) -> tuple:
        """(user table, item table, w, b, the eight moments as the kernels take them, the
        dense step counters), all numpy views of the tensors."""
        def view(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy()

        moments = [view(state[key]) for state in states for key in ("exp_avg", "exp_avg_sq")]
        moments[4:] = [m.reshape(-1) for m in moments[4:]]  # w's are (1, dim)
        steps = (view(states[2]["step"]), view(states[3]["step"]))
        return (view(params[0]), view(params[1]), view(params[2]).reshape(-1),
                view(params[3]), tuple(moments), steps)


def _state(opt: torch.optim.Optimizer, param: torch.Tensor, dense: bool) -> dict:
    """The optimiser's state of ``param``, started as torch starts it (Adam's ``step`` a
    float32 scalar tensor, SparseAdam's an int)."""
    state = opt.state[param]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32) if dense else 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


class GMFInverseGradient(fast.InverseGradientOnArrays, _CompiledStep):
    """The IG step of :class:`~learner.core.meta.InverseGradient` for a GMF on the CPU, compiled."""

    def step_rows(
        self, vague_users: np.ndarray, vague_items: np.ndarray, vague_feats: np.ndarray | None,
        meta_users: np.ndarray, meta_items: np.ndarray, meta_feats: np.ndarray | None,
        meta_labels: np.ndarray, branch: str | None = None,
    ) -> tuple[str, dict[str, float], float]:
        """:meth:`step` on the table rows of the pairs, as arrays (the learner's call; GMF
        takes no context features)."""
        p, q, w, b, moments, hyper = self._arrays()
        losses = np.empty(len(BRANCHES))
        chosen, lean, loss = kernels.ig_step(
            p, q, w, b, moments, _index(vague_users), _index(vague_items), _index(meta_users),
            _index(meta_items), np.asarray(meta_labels, np.float32), self.sample_lr,
            self.lookahead == "adam", BRANCHES.index(branch) if branch else -1, hyper[0], losses)
        self.last_vague_positive = lean
        return BRANCHES[chosen], dict(zip(BRANCHES, losses.tolist(), strict=True)), loss

    def plan(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray, order: np.ndarray, bounds: np.ndarray,
             ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every step of a micro-batch as one call, to make, as the learner takes them one by
        one: step ``c`` trains the pairs ``order[bounds[c]:bounds[c + 1]]``, by
        :meth:`step_rows` on its vague pairs with its genuine ones as the meta batch, or by
        the plain IDL step when it lacks either. Returns the call and the arrays it fills:
        each step's branch (an index of ``BRANCHES``, or ``gmf_kernels.NO_BRANCH``), loss
        and leaning."""
        return self._plan_steps(users, items, labels, vague, order, bounds, True, True,
                                self.sample_lr, self.lookahead == "adam")


class GMFLossStep(_CompiledStep):
    """The learner's plain step (``MixedAdam`` on ``bce`` or ``idl`` of
    :mod:`learner.core.losses`) for a GMF on the CPU, compiled."""

    LOSSES = ("bce", "idl")

    def __init__(self, model: GMF, optimizer: MixedAdam, loss: str) -> None:
        super().__init__(model, optimizer)
        if loss not in self.LOSSES:
            raise ConfigError(f"the compiled step trains bce or idl, not {loss!r}")
        self.loss = loss

    def step(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray) -> tuple[float, int]:
        """One step on the pairs (table rows ``users``, ``items``; no context ``feats`` in
        GMF); ``labels`` 1/0 for the
        genuine events, ``vague`` marks the others. Returns the loss and the number of vague
        events the model leaned positive on (before the step)."""
        p, q, w, b, moments, hyper = self._arrays()
        return kernels.loss_step(p, q, w, b, moments, _index(users), _index(items),
                                 np.asarray(labels, np.float32), np.asarray(vague, bool),
                                 self.loss == "idl", hyper[0])

    def plan(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray, order: np.ndarray, bounds: np.ndarray,
             ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every step of a micro-batch as one call, to make: step ``c`` is :meth:`step` on the
        pairs ``order[bounds[c]:bounds[c + 1]]``. Returns the call and the arrays it fills:
        each step's branch (always ``gmf_kernels.NO_BRANCH`` here), loss and leaning."""
        return self._plan_steps(users, items, labels, vague, order, bounds, False,
                                self.loss == "idl")


def compiled_applies(model: Backbone, kernel: str) -> bool:
    """Whether the learner takes the compiled steps: ``kernel="auto"`` and a GMF on the CPU
    (:func:`learner.core.fast.compiled_applies`)."""
    return fast.compiled_applies(model, kernel, GMF, NO_KERNELS if kernels is None else "")
