"""Helpers of the compiled-step tests: a model and its twin (a copy), stepped two ways."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from learner.core.backbones.base import Backbone
from learner.core.meta import BRANCHES, InverseGradient, Pairs
from learner.core.optim import MixedAdam, ensure_rows


def grow_alike(pairs: tuple[tuple[Backbone, MixedAdam], ...], users: int, items: int) -> None:
    """Grow every (model, optimiser) to ``users`` x ``items`` rows, the same new rows in each."""
    for model, opt in pairs:
        torch.manual_seed(7)
        ensure_rows(model, opt, users, items)


def alternate_forced_branches(
    model: Backbone, twin: Backbone, opt: MixedAdam, opt_twin: MixedAdam, compiled,
    batch: Callable[[], tuple[Pairs, Pairs, torch.Tensor]], steps: int = 30,
) -> None:
    """Each IG branch forced in turn, the tables grown to 50 x 40 at step 10: autograd IG
    steps ``model``, while ``compiled`` (an IG step of ``twin``) and autograd IG take turns
    on ``twin``, so each must leave state the other can carry on from. ``batch()`` makes a
    step's (vague, meta, labels)."""
    slow = InverseGradient(model, opt, lookahead="sgd")
    mixed = {"compiled": compiled, "torch": InverseGradient(twin, opt_twin, lookahead="sgd")}
    for k in range(steps):
        if k == 10:
            grow_alike(((model, opt), (twin, opt_twin)), 50, 40)
        vague, meta, labels = batch()
        branch = BRANCHES[k % 3]
        opt.zero_grad()
        opt_twin.zero_grad()
        slow.step(vague, meta, labels, branch=branch)
        mixed["compiled" if k % 2 else "torch"].step(vague, meta, labels, branch=branch)


def same_step(slow: InverseGradient, fast, vague: Pairs, meta: Pairs,
              labels: torch.Tensor) -> str:
    """One IG step of each: the same branch, meta losses, loss and leaning; the branch."""
    b_slow, losses_slow, loss_slow = slow.step(vague, meta, labels)
    b_fast, losses_fast, loss_fast = fast.step(vague, meta, labels)
    assert b_fast == b_slow
    assert losses_fast == pytest.approx(losses_slow, rel=1e-5)
    assert loss_fast == pytest.approx(loss_slow, rel=1e-5)
    assert fast.last_vague_positive == slow.last_vague_positive
    return b_fast
