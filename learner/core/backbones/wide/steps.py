"""The wide model's training steps on the CPU, compiled: no autograd, no sparse tensors, one call.

Through autograd a step of the wide model at the learner's train batch of 512 is some fifty
small PyTorch operations (the forward's lookups and count features, the backward, the sparse
gradients' coalescing, SparseAdam on two tables and Adagrad on three dense tensors), each
paying PyTorch's per-operation overhead: about 1.2 ms, two thirds of the learner's time per
micro-batch offline. The model is linear in its parameters, so every gradient has a closed
form (:mod:`learner.core.backbones.wide.kernels`) and a whole micro-batch's steps are one
compiled call.

:class:`WideLossStep` is the learner's plain step (``bce`` or ``idl``: SparseAdam on the bias
rows, Adagrad on the context, cross and count weights and the global bias), done in place on
numpy views of the model's tensors, its count buffers and the optimiser's own state, so
checkpoints, the distributed update log and the autograd path see the same state. The views
are made again whenever a tensor is replaced (tables grow, a checkpoint loads); the step
counters are read from the optimiser's state at each call and written back after it.
:meth:`Wide.fast_steps` offers it (:class:`learner.core.fast.CompiledFastSteps`) on the CPU unless
``kernel="torch"``; the IG step stays autograd's.

>>> import numpy as np
>>> from learner.core.backbones import Wide
>>> from learner.core.optim import MixedAdam
>>> model = Wide(users=4, items=4)
>>> step = WideLossStep(model, MixedAdam(model, lr=0.01), "bce")
>>> rows, feats = np.array([0, 1]), np.array([[5, 3, 0], [23, 15, 2]])
>>> loss, lean = step.step(rows, rows, feats, np.array([1.0, 0.0], np.float32),
...                        np.array([False, False]))
>>> 0.65 < loss < 0.75, lean, step.scores(rows, rows, feats).shape  # about log 2 at first
(True, 0, (2,))
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from learner.core import fast
from learner.core.backbones.base import Backbone
from learner.core.backbones.gmf.steps import _index, _state
from learner.core.backbones.wide import Wide
from learner.core.errors import ConfigError
from learner.core.meta import BRANCHES
from learner.core.optim import MixedAdam

try:  # numba is a dependency; where it cannot be imported, the model trains through autograd
    from learner.core.backbones.wide import kernels
except ImportError as exc:  # pragma: no cover - depends on the installation
    kernels, NO_KERNELS = cast(Any, None), f"{type(exc).__name__}: {exc}"
else:
    NO_KERNELS = ""

#: the branch of a step that is not an IG step (as the GMF kernels mark it)
_DENSE = ("context", "counts_weight", "bias")


class _CompiledSteps:
    """What both steps share: the checks, the state as numpy views, the scores, a planned
    micro-batch."""

    def __init__(self, model: Wide, optimizer: MixedAdam) -> None:
        if type(model) is not Wide:
            raise ConfigError(f"the compiled wide steps are for Wide, not {type(model).__name__}")
        if model.user_bias.weight.device.type != "cpu":
            raise ConfigError("the compiled steps run on the CPU only")
        if not isinstance(optimizer.dense, torch.optim.Adagrad):
            raise ConfigError("the compiled wide steps take Adagrad on the dense weights")
        for opt in optimizer.optimizers:
            group = opt.param_groups[0]
            if len(opt.param_groups) > 1 or group.get("maximize") or group.get("weight_decay"):
                raise ConfigError("the compiled steps take one parameter group per optimiser, "
                                  "no maximize, no weight decay")
        if kernels is None:
            raise ConfigError(f"the compiled steps need numba ({NO_KERNELS})")
        self.model, self.optimizer = model, optimizer
        sizes = model.feature_sizes
        self._sizes = np.array(sizes, np.int64)
        self._no_context = (np.zeros(0, np.int64), -1, 1)
        self._layout = (model.offsets.numpy().astype(np.int64),
                        model.cross_start if model.cross_tab else -1,
                        sizes[2] if model.cross_tab else 1)
        self._cache: tuple | None = None  # (tensors, state tensors, views): _views
        kernels.warm_up()

    # -- the state, as numpy views ---------------------------------------------------------
    def _views(self) -> tuple:
        """(model, sparse, dense) tuples of numpy views as the kernels take them, the states
        of the five parameters (b_u, b_i, c, a, b), their step counts and the count moments.
        Made again only when a tensor or a state is replaced (tables grow, a checkpoint
        loads): never a stale view."""
        model = self.model
        modules, params, buffers = model._modules, model._parameters, model._buffers
        tensors = (
            cast(torch.nn.Module, modules["user_bias"])._parameters["weight"],
            cast(torch.nn.Module, modules["item_bias"])._parameters["weight"],
            buffers["user_counts"], buffers["item_counts"], buffers["prior"],
            *(params[name] for name in _DENSE), buffers["moments"],
            self.optimizer.sparse.state, cast(torch.optim.Optimizer, self.optimizer.dense).state)
        cache = self._cache
        if (cache is None or any(a is not b for a, b in zip(tensors, cache[0], strict=True))
                or any(state[k] is not t for state, k, t in cache[1])):
            cache = self._cache = (tensors, *self._made(tensors))
        return cache[2]

    def _made(self, tensors: tuple) -> tuple:
        sparse, dense = self.optimizer.sparse, self.optimizer.dense
        assert dense is not None  # checked: Adagrad
        states = (*(_state(sparse, p, False) for p in tensors[:2]),
                  *(dense.state[p] for p in tensors[5:8]))
        watched = [(state, k, t) for state in states for k, t in state.items()
                   if torch.is_tensor(t)]

        def view(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy()

        model = tuple(view(t) for t in tensors[:8])
        moments = tuple(view(state[k]) for state in states[:2]
                        for k in ("exp_avg", "exp_avg_sq"))
        sums = tuple(view(state["sum"]) for state in states[2:])
        steps = tuple(view(state["step"]).reshape(1) for state in states[2:])
        return watched, (model, moments, sums, states, steps, view(tensors[8]))

    def _hyper(self) -> np.ndarray:
        s_group = self.optimizer.sparse.param_groups[0]
        d_group = cast(torch.optim.Optimizer, self.optimizer.dense).param_groups[0]
        hyper = np.empty(kernels.HYPER_SIZE)
        hyper[kernels.LR_S], hyper[kernels.EPS_S] = s_group["lr"], s_group["eps"]
        hyper[kernels.BETA1], hyper[kernels.BETA2] = s_group["betas"]
        hyper[kernels.LR_D], hyper[kernels.EPS_D] = d_group["lr"], d_group["eps"]
        hyper[kernels.LR_DECAY] = d_group["lr_decay"]
        return hyper

    @staticmethod
    def _counters(states: tuple, steps: tuple) -> np.ndarray:
        """The five step counts: SparseAdam's ints, Adagrad's float32 scalars."""
        return np.array([states[0]["step"], states[1]["step"], *(float(s[0]) for s in steps)],
                        np.int64)

    @staticmethod
    def _write_back(states: tuple, steps: tuple, counters: np.ndarray) -> None:
        states[0]["step"], states[1]["step"] = int(counters[0]), int(counters[1])
        for view, count in zip(steps, counters[2:].tolist(), strict=True):
            view[0] = count

    def _context(self, feats: np.ndarray | None, n: int) -> tuple[tuple, np.ndarray]:
        """The layout of the context weights and the pairs' features, checked: (n, F) ids
        within the features' sizes. None: no context, as ``Wide.forward`` without ``feats``
        (a layout of no features)."""
        if feats is None:
            return self._no_context, np.zeros((n, 0), np.int64)
        feats = np.ascontiguousarray(feats, dtype=np.int64)
        if feats.shape != (n, self._sizes.size):
            raise ValueError(f"feats must have shape ({n}, {self._sizes.size}), "
                             f"got {feats.shape}")
        if n and (feats.min() < 0 or (feats.max(axis=0) >= self._sizes).any()):
            raise ValueError(f"feature ids must lie within the sizes {tuple(self._sizes)}")
        return self._layout, feats

    # -- the steps -------------------------------------------------------------------------
    def scores(self, users: np.ndarray, items: np.ndarray,
               feats: np.ndarray | None) -> np.ndarray:
        """Like probabilities (float32) of the pairs (table rows ``users``, ``items``, context
        ``feats``): the model's own, without torch's per-call overhead."""
        model = self._views()[0]
        out = np.empty(len(users), np.float32)
        layout, feats = self._context(feats, len(users))
        kernels.scores(model, layout, _index(users), _index(items), feats, out)
        return out

    def observe(self, users: np.ndarray, items: np.ndarray, positive: np.ndarray) -> None:
        """Count scored genuine events (table rows, ``positive`` 1.0 or 0.0 each) as
        :meth:`Wide.observe` does, compiled: the counts and their moments, then the priors
        estimated again."""
        model, *_, count_moments = self._views()
        kernels.count(model[2], model[3], count_moments, _index(users), _index(items),
                      np.asarray(positive, np.float32))
        self.model._estimate_priors()

    def _stepped(self, kernel: Callable[..., Any], layout: tuple, *args: Any) -> Any:
        """``kernel(model, layout, sparse state, dense state, counters, hyper, *args)``, the
        step counts written back after it."""
        model, moments, sums, states, steps, _counted = self._views()
        counters = self._counters(states, steps)
        out = kernel(model, layout, moments, sums, counters, self._hyper(), *args)
        self._write_back(states, steps, counters)
        return out

    def _plan_steps(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
                    labels: np.ndarray, vague: np.ndarray, order: np.ndarray,
                    bounds: np.ndarray, ig: bool, idl: bool, sample_lr: float = 0.0,
                    adam_lookahead: bool = True,
                    ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:func:`~learner.core.backbones.wide.kernels.train_steps` ready to call (the step
        counts written back after it), and the arrays it fills: the steps' branches, losses
        and leanings. The call holds the interpreter lock only to start and to return."""
        n = bounds.size - 1
        branches, leans, losses = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n)
        layout, feats = self._context(feats, len(users))
        run = functools.partial(
            self._stepped, kernels.train_steps, layout, _index(users), _index(items), feats,
            np.asarray(labels, np.float32),
            np.asarray(vague, bool), _index(order), _index(bounds), ig, idl, sample_lr,
            adam_lookahead, branches, leans, losses)
        return run, (branches, losses, leans)


class WideLossStep(_CompiledSteps):
    """The learner's plain step (``MixedAdam`` on ``bce`` or ``idl`` of
    :mod:`learner.core.losses`) for the wide model on the CPU, compiled."""

    LOSSES = ("bce", "idl")

    def __init__(self, model: Wide, optimizer: MixedAdam, loss: str) -> None:
        super().__init__(model, optimizer)
        if loss not in self.LOSSES:
            raise ConfigError(f"the compiled step trains bce or idl, not {loss!r}")
        self.idl = loss == "idl"

    def step(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray) -> tuple[float, int]:
        """One step on the pairs; ``labels`` 1/0 for the genuine events, ``vague`` marks the
        others. Returns the loss and the number of vague events the model leaned positive on
        (before the step)."""
        layout, feats = self._context(feats, len(users))
        return self._stepped(kernels.loss_step, layout, _index(users), _index(items), feats,
                             np.asarray(labels, np.float32), np.asarray(vague, bool), self.idl)

    def plan(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray, order: np.ndarray, bounds: np.ndarray,
             ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every step of a micro-batch as one call, to make: step ``c`` is :meth:`step` on the
        pairs ``order[bounds[c]:bounds[c + 1]]``. Returns the call and the arrays it fills:
        each step's branch (always ``NO_BRANCH``), loss and leaning."""
        return self._plan_steps(users, items, feats, labels, vague, order, bounds, False,
                                self.idl)


class WideInverseGradient(fast.InverseGradientOnArrays, _CompiledSteps):
    """The IG step of :class:`~learner.core.meta.InverseGradient` for the wide model on the
    CPU, compiled."""

    def step_rows(
        self, vague_users: np.ndarray, vague_items: np.ndarray, vague_feats: np.ndarray | None,
        meta_users: np.ndarray, meta_items: np.ndarray, meta_feats: np.ndarray | None,
        meta_labels: np.ndarray, branch: str | None = None,
    ) -> tuple[str, dict[str, float], float]:
        """:meth:`step` on the table rows of the pairs, as arrays (the learner's call). The
        context features of both or of neither (no context, as ``Wide.forward`` without)."""
        if (vague_feats is None) != (meta_feats is None):
            raise ValueError("context features for both the vague and the meta pairs, or none")
        layout, vague_feats = self._context(vague_feats, len(vague_users))
        meta_feats = self._context(meta_feats, len(meta_users))[1]
        losses = np.empty(len(BRANCHES))
        chosen, lean, loss = self._stepped(
            kernels.ig_step, layout, _index(vague_users), _index(vague_items), vague_feats,
            _index(meta_users), _index(meta_items), meta_feats,
            np.asarray(meta_labels, np.float32), self.sample_lr, self.lookahead == "adam",
            BRANCHES.index(branch) if branch else -1, losses)
        self.last_vague_positive = lean
        return BRANCHES[chosen], dict(zip(BRANCHES, losses.tolist(), strict=True)), loss

    def plan(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray | None,
             labels: np.ndarray, vague: np.ndarray, order: np.ndarray, bounds: np.ndarray,
             ) -> tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every step of a micro-batch as one call, to make, as the learner takes them one by
        one: step ``c`` trains the pairs ``order[bounds[c]:bounds[c + 1]]``, by
        :meth:`step_rows` on its vague pairs with its genuine ones as the meta batch, or by
        the plain IDL step when it lacks either. Returns the call and the arrays it fills:
        each step's branch (an index of ``BRANCHES``, or ``NO_BRANCH``), loss and leaning."""
        return self._plan_steps(users, items, feats, labels, vague, order, bounds, True, True,
                                self.sample_lr, self.lookahead == "adam")


def compiled_applies(model: Backbone, kernel: str) -> bool:
    """Whether the learner takes the compiled steps: ``kernel="auto"`` and a Wide on the CPU
    (:func:`learner.core.fast.compiled_applies`)."""
    return fast.compiled_applies(model, kernel, Wide, NO_KERNELS if kernels is None else "")
