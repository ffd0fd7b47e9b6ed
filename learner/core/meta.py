"""Inverse Gradient (Lin et al., WSDM 2024): a meta-corrected step on vague events.

Per mini-batch, with parameters ``θ``, the IDL loss ``Lv`` of the vague events and the BCE
``Lm`` of a meta batch of genuine events:

1. look ahead: ``θf = θ - Δ`` (a step on ``Lv``) and ``θi = θ + Δ`` (a step on ``-Lv``);
2. keep whichever of ``θ``, ``θf``, ``θi`` has the lowest ``Lm``;
3. from there, one step of the learner's own optimiser on ``Lm`` at ``lr``.

**How it is computed.** Only the embedding rows that the vague and meta events use, and the
dense layers, can change in steps 1-2; so they are gathered into small leaf tensors, the
model is run on them (:class:`SwappedCall`, a lean :func:`torch.func.functional_call`), and
``Δ`` is computed on them alone. Nothing of the size of a table is copied, and no optimiser
is built per step.
The winning branch's rows are written back in place; step 3 uses the persistent
:class:`~learner.core.optim.MixedAdam`, whose state carries across steps.

**What the look-ahead step is (a decision).** The reference code builds a fresh Adam at
``sample_lr`` for each copy at each step. The first step of a fresh Adam is exactly
``Δ = sample_lr * g / (|g| + eps)`` elementwise (its moment estimates, bias-corrected,
equal ``g`` and ``|g|``): a sign-like step of size ``sample_lr`` on every coordinate the
batch touches. The paper writes the look-ahead as a gradient step ``θ ∓ η∇Lv``. We follow
the reference's arithmetic by default (``lookahead="adam"``), because that is what produced
the published numbers and because it is scale-free: with a plain gradient step at
``sample_lr = 1e-3`` the three branches differ by ~1e-6 and the choice between them is
noise. ``lookahead="sgd"`` gives the paper's literal ``θ ∓ sample_lr * g``. The reference's
other quirks (a warm-up loop and copies that never zero their gradients, so gradients
accumulate across steps) are not followed: they are bugs, not the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from learner.core.backbones.base import Backbone
from learner.core.errors import ConfigError
from learner.core.losses import inverse_dual_loss
from learner.core.optim import MixedAdam

BRANCHES = ("original", "forward", "inverse")
ADAM_EPS = 1e-8


@dataclass(frozen=True, slots=True)
class Pairs:
    """(user rows, item rows, context feature ids or None) of some events, as tensors."""

    users: torch.Tensor
    items: torch.Tensor
    feats: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.users.numel()


def _cat(a: Pairs, b: Pairs) -> Pairs:
    feats = None if a.feats is None or b.feats is None else torch.cat([a.feats, b.feats])
    return Pairs(torch.cat([a.users, b.users]), torch.cat([a.items, b.items]), feats)


class SwappedCall:
    """Call a module with some of its parameters replaced by given tensors, then put them back.

    What :func:`torch.func.functional_call` does for the IG step, without its generic
    machinery (dotted-name resolution, weight tying, buffers, strictness checks), which cost
    ~0.24 ms per call, a quarter of an IG step on GMF (4 calls per step). The owning module
    of every parameter is looked up once; a call writes the tensors into the owners'
    parameter slots and restores the originals afterwards, even when the forward raises.
    Backbones with tied weights are refused (one slot would be replaced, not its twin).

    >>> import torch
    >>> layer = torch.nn.Linear(2, 1)
    >>> zero = {"weight": torch.zeros(1, 2), "bias": torch.ones(1)}
    >>> SwappedCall(layer)(zero, torch.ones(3, 2)).flatten().tolist()
    [1.0, 1.0, 1.0]
    >>> layer.weight is dict(layer.named_parameters())["weight"]  # put back
    True
    """

    def __init__(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        if len(names) != len(dict(model.named_parameters())):
            raise ConfigError("the IG step does not support a backbone with tied weights")
        self.model = model
        # where each parameter, and each buffer, is held: its owner's dict of them
        self.slots: dict[str, tuple[dict, str]] = {}
        for name in names:
            owner, _, attr = name.rpartition(".")
            self.slots[name] = (model.get_submodule(owner)._parameters, attr)
        for name, _ in model.named_buffers():
            owner, _, attr = name.rpartition(".")
            self.slots[name] = (model.get_submodule(owner)._buffers, attr)

    def __call__(self, params: dict[str, torch.Tensor], *args):
        saved = []
        try:
            for name, value in params.items():
                # torch types the slots as holding parameters; for the call one holds a plain
                # tensor, which the forward reads as it reads a parameter
                held, attr = cast("tuple[dict[str, torch.Tensor | None], str]", self.slots[name])
                saved.append((held, attr, held[attr]))
                held[attr] = value
            return self.model(*args)
        finally:
            for held, attr, original in reversed(saved):
                held[attr] = original


#: How the look-ahead steps its copies: Adam (the reference's) or plain SGD.
LOOKAHEADS = ("adam", "sgd")


def checked_lookahead(lookahead: str) -> str:
    """``lookahead`` if it is one of :data:`LOOKAHEADS`, else ConfigError."""
    if lookahead not in LOOKAHEADS:
        raise ConfigError(f"lookahead must be adam or sgd, not {lookahead!r}")
    return lookahead


class InverseGradient:
    """The IG step for one backbone and its optimiser."""

    def __init__(
        self, model: Backbone, optimizer: MixedAdam, sample_lr: float = 1e-3,
        lookahead: str = "adam", call: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        # the look-ahead's forward with given parameters; torch.func.functional_call(model,
        # params, args) would do the same, slower (the benchmarks' baseline)
        self._call = call or SwappedCall(model)
        self.sample_lr, self.lookahead = sample_lr, checked_lookahead(lookahead)
        self.last_vague_positive = 0  # vague events the last step's model leaned positive on
        self._counted: dict[str, torch.Tensor] = {}  # the step's rows of counted buffers

    def _gather(self, both: Pairs) -> tuple[dict[str, torch.Tensor], Pairs, torch.Tensor,
                                             torch.Tensor]:
        """Leaf tensors of the rows ``both`` uses and the dense layers; ids made local. The
        same rows of a counting backbone's buffers (not trained) are kept for the calls
        (:meth:`_logits`): a local id must read its own row's counts."""
        model = self.model
        users, u_local = torch.unique(both.users, return_inverse=True)
        items, i_local = torch.unique(both.items, return_inverse=True)
        self._counted = {name: getattr(model, name)[rows]
                         for names, rows in ((model.user_buffers, users),
                                             (model.item_buffers, items)) for name in names}
        params: dict[str, torch.Tensor] = {}
        for names, rows in ((model.user_tables, users), (model.item_tables, items)):
            for name in names:
                params[f"{name}.weight"] = getattr(model, name).weight.detach()[rows]
        for name, p in model.named_parameters():
            params.setdefault(name, p.detach())
        params = {k: v.clone().requires_grad_() for k, v in params.items()}
        return params, Pairs(u_local, i_local, both.feats), users, items

    def _logits(self, params: dict[str, torch.Tensor], pairs: Pairs, part: slice):
        feats = None if pairs.feats is None else pairs.feats[part]
        if self._counted:
            params = {**params, **self._counted}
        return self._call(params, pairs.users[part], pairs.items[part], feats)

    def _delta(self, grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if grad is None:
            return torch.zeros_like(like)
        grad = grad.to_dense() if grad.is_sparse else grad
        if self.lookahead == "adam":
            return self.sample_lr * grad / (grad.abs() + ADAM_EPS)
        return self.sample_lr * grad

    @torch.no_grad()
    def _write_back(self, theta: dict[str, torch.Tensor], users, items) -> None:
        model = self.model
        for names, rows in ((model.user_tables, users), (model.item_tables, items)):
            for name in names:
                getattr(model, name).weight[rows] = theta.pop(f"{name}.weight")
        for name, p in model.named_parameters():
            if name in theta:
                p.copy_(theta[name])

    def step(
        self, vague: Pairs, meta: Pairs, meta_labels: torch.Tensor, branch: str | None = None
    ) -> tuple[str, dict[str, float], float]:
        """One IG step. Returns the branch kept, the three meta losses and the final loss.

        ``branch`` forces the branch kept (for tests); by default the lowest meta loss wins,
        ties going to the earlier of original, forward, inverse.
        """
        n_vague = len(vague)
        params, local, users, items = self._gather(_cat(vague, meta))
        vague_part, meta_part = slice(0, n_vague), slice(n_vague, None)
        logits_v = self._logits(params, local, vague_part)
        self.last_vague_positive = int((logits_v.detach() > 0).sum())
        loss_v = inverse_dual_loss(logits_v).mean()
        names = list(params)
        grads = torch.autograd.grad(loss_v, [params[n] for n in names], allow_unused=True)
        with torch.no_grad():
            delta = {n: self._delta(g, params[n]) for n, g in zip(names, grads, strict=True)}
            thetas = {
                "original": {n: params[n].detach() for n in names},
                "forward": {n: params[n].detach() - delta[n] for n in names},
                "inverse": {n: params[n].detach() + delta[n] for n in names},
            }
            meta_losses = {
                b: float(F.binary_cross_entropy_with_logits(
                    self._logits(theta, local, meta_part), meta_labels))
                for b, theta in thetas.items()
            }
        chosen = branch or min(BRANCHES, key=lambda b: meta_losses[b])
        if chosen != "original":
            self._write_back(dict(thetas[chosen]), users, items)
        self.optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(
            self.model(meta.users, meta.items, meta.feats), meta_labels
        )
        loss.backward()
        self.optimizer.step()
        return chosen, meta_losses, float(loss.detach())
