"""Compiled fast paths, as a backbone offers them: one interface the trainer calls for every
backbone.

A backbone that has compiled training steps returns a :class:`FastSteps` from
:meth:`~learner.core.backbones.base.Backbone.fast_steps` (on the CPU, GMF:
:mod:`learner.core.backbones.gmf.steps`, and the wide model:
:mod:`learner.core.backbones.wide.steps`); the others return None and train through autograd.
The steps it makes take table rows and the pairs' context features (an (n, F) int64 array,
:mod:`learner.core.features`; a backbone without context ignores them) as numpy arrays
(:class:`CompiledStep`), and can run every step of a micro-batch in one call (``plan``).
:func:`make_inverse_gradient` and :func:`make_loss_step` are the learner's choice between
them and the autograd steps; a next fast backbone needs no change here nor in the trainer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from learner.core.backbones.base import Backbone
from learner.core.meta import InverseGradient, Pairs, checked_lookahead
from learner.core.optim import MixedAdam
from learner.core.settings import check_kernel

logger = logging.getLogger(__name__)

#: What a planned micro-batch fills: each step's branch, loss and leaning.
Planned = tuple[Callable[[], None], tuple[np.ndarray, np.ndarray, np.ndarray]]


class CompiledStep(Protocol):
    """A compiled step over table rows (numpy arrays): scores, and a whole micro-batch planned
    as one call."""

    def scores(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Like probabilities (float32) of the pairs of table rows ``users``, ``items`` with
        context ``feats``."""
        ...

    def observe(self, users: np.ndarray, items: np.ndarray, positive: np.ndarray) -> None:
        """:meth:`~learner.core.backbones.base.Backbone.observe` on table rows, compiled:
        count scored genuine events (``positive`` 1.0 or 0.0 each); nothing for a backbone
        that counts nothing."""
        ...

    def plan(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray, labels: np.ndarray,
             vague: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> Planned:
        """Every step of a micro-batch as one call: step ``c`` trains the pairs
        ``order[bounds[c]:bounds[c + 1]]``."""
        ...


class CompiledLossStep(CompiledStep, Protocol):
    """The learner's plain step (a loss, ``MixedAdam``), compiled."""

    def step(self, users: np.ndarray, items: np.ndarray, feats: np.ndarray, labels: np.ndarray,
             vague: np.ndarray) -> tuple[float, int]:
        """One step; the loss and the number of vague events leaned positive on."""
        ...


class CompiledInverseGradient(CompiledStep, Protocol):
    """The IG step of :class:`~learner.core.meta.InverseGradient`, compiled; it also takes
    the pairs as table rows (:meth:`step_rows`)."""

    last_vague_positive: int

    def step_rows(self, vague_users: np.ndarray, vague_items: np.ndarray,
                  vague_feats: np.ndarray, meta_users: np.ndarray, meta_items: np.ndarray,
                  meta_feats: np.ndarray, meta_labels: np.ndarray,
                  branch: str | None = None) -> tuple[str, dict[str, float], float]:
        """One IG step on table rows: the branch kept, the three meta losses, the loss."""
        ...


class InverseGradientOnArrays:
    """What a compiled IG step adds to its backbone's compiled steps (list it first among
    the bases): the look-ahead's settings, and :meth:`step` on
    :class:`~learner.core.meta.Pairs` as the arrays its ``step_rows`` takes."""

    step_rows: Callable[..., tuple[str, dict[str, float], float]]

    def __init__(self, model: Backbone, optimizer: MixedAdam, sample_lr: float = 1e-3,
                 lookahead: str = "adam") -> None:
        super().__init__(model, optimizer)  # type: ignore[call-arg]  # the steps' own base
        self.sample_lr, self.lookahead = sample_lr, checked_lookahead(lookahead)
        self.last_vague_positive = 0

    def step(
        self, vague: Pairs, meta: Pairs, meta_labels: torch.Tensor, branch: str | None = None
    ) -> tuple[str, dict[str, float], float]:
        """One IG step; returns the branch kept, the three meta losses and the final loss."""
        def array(feats: torch.Tensor | None) -> np.ndarray | None:
            return None if feats is None else feats.numpy()

        return self.step_rows(vague.users.numpy(), vague.items.numpy(), array(vague.feats),
                              meta.users.numpy(), meta.items.numpy(), array(meta.feats),
                              meta_labels.numpy(), branch)


class FastSteps(Protocol):
    """The compiled steps a backbone offers (:meth:`Backbone.fast_steps`)."""

    def inverse_gradient(self, optimizer: MixedAdam, sample_lr: float,
                         lookahead: str) -> CompiledInverseGradient | None:
        """The compiled IG step over ``optimizer``'s state, or None where it has none."""
        ...

    def loss_step(self, optimizer: MixedAdam, loss: str) -> CompiledLossStep | None:
        """The compiled plain step for ``loss``, or None where it has none."""
        ...


class CompiledFastSteps:
    """A backbone's compiled steps as :class:`FastSteps`: its loss-step class (which names
    the ``LOSSES`` it compiles) and its IG-step class, both built on ``(model, optimizer,
    ...)``."""

    def __init__(self, model: Backbone, loss_step: Callable[..., CompiledLossStep],
                 inverse_gradient: Callable[..., CompiledInverseGradient]) -> None:
        self.model, self._loss_step, self._inverse_gradient = model, loss_step, inverse_gradient

    def inverse_gradient(self, optimizer: MixedAdam, sample_lr: float = 1e-3,
                         lookahead: str = "adam") -> CompiledInverseGradient:
        return self._inverse_gradient(self.model, optimizer, sample_lr, lookahead)

    def loss_step(self, optimizer: MixedAdam, loss: str) -> CompiledLossStep | None:
        """The compiled plain step for ``loss`` where the backbone compiles it, else None."""
        losses = getattr(self._loss_step, "LOSSES", ())
        return self._loss_step(self.model, optimizer, loss) if loss in losses else None


def make_inverse_gradient(
    model: Backbone, optimizer: MixedAdam, sample_lr: float = 1e-3, lookahead: str = "adam",
    kernel: str = "auto",
) -> InverseGradient | CompiledInverseGradient:
    """The learner's IG step: the backbone's compiled one where it offers it (``kernel="auto"``),
    else :class:`~learner.core.meta.InverseGradient`. Both keep the same state in ``model`` and
    ``optimizer``."""
    fast = model.fast_steps(kernel)
    compiled = fast.inverse_gradient(optimizer, sample_lr, lookahead) if fast else None
    if compiled is not None:
        return compiled
    return InverseGradient(model, optimizer, sample_lr, lookahead)


def make_loss_step(model: Backbone, optimizer: MixedAdam, loss: str,
                   kernel: str = "auto") -> CompiledLossStep | None:
    """The backbone's compiled plain step for ``loss`` where it offers one, else None: the
    learner's autograd step then."""
    fast = model.fast_steps(kernel)
    return fast.loss_step(optimizer, loss) if fast is not None else None


def compiled_applies(model: Backbone, kernel: str, backbone: type[Backbone],
                     missing: str) -> bool:
    """Whether the learner takes ``backbone``'s compiled steps for ``model``:
    ``kernel="auto"``, ``model`` a ``backbone`` (not a subclass) on the CPU, and the kernels
    importable (``missing``: why not, empty where they are; warned once)."""
    check_kernel(kernel)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    applies = kernel == "auto" and type(model) is backbone and on_cpu
    if applies and missing:
        _warn_no_kernels(backbone.__name__, missing)
    return applies and not missing


@functools.cache
def _warn_no_kernels(backbone: str, why: str) -> None:
    logger.warning("numba cannot be imported (%s): %s trains through autograd", why, backbone)
