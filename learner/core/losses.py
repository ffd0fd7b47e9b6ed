"""Training losses behind one interface: ``loss(logits, labels, vague, step) -> scalar tensor``.

``labels`` holds 1 (positive) or 0 (negative) for genuine events; ``vague`` marks the events
whose label is uncertain (mid-band dwell events and sampled unseen items; their entry in
``labels`` is ignored). ``step`` is the learner's optimiser step count, for losses with a
schedule (T-CE).

=========  =================================================================================
``bce``     BCE on the genuine events only; vague events are not trained on.
``bce_neg`` BCE with vague events as negatives (the usual implicit-feedback set-up).
``tce``     Truncated CE (Wang et al., WSDM 2021): BCE with vague as negatives, dropping the
            ``drop_rate`` largest losses; the rate grows linearly from 0 to ``max_drop`` over
            ``num_gradual`` steps.
``rce``     Reweighted CE (Wang et al., WSDM 2021): BCE with vague as negatives, each loss
            weighted by ``p**beta`` (label 1) or ``(1-p)**beta`` (label 0), ``p`` detached.
``idl``     Inverse Dual Loss (Lin et al., WSDM 2024): BCE on genuine events; on a vague event
            with ``Lp = BCE(y, 1)``, ``Ln = BCE(y, 0)``: ``wp = Ln / (Lp + a)``,
            ``wn = Lp / (Ln + a)`` from the *detached* losses, normalised to ``wp + wn = 1``,
            loss ``wp * Lp + wn * Ln`` (``a = 1e-9``).
=========  =================================================================================

All losses average over the events they train on, so a batch of only vague events under
``bce`` gives a zero loss with no gradient.

>>> import torch
>>> loss = make_loss("idl")
>>> float(loss(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([False, True])))
0.3708...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from learner.core.errors import ConfigError
from learner.core.settings import LOSS_NAMES

IDL_A = 1e-9


class Loss(Protocol):
    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, vague: torch.Tensor, step: int = 0
    ) -> torch.Tensor: ...


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0


def idl_weights(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IDL's (wp, wn) for vague logits, from detached losses, normalised to sum to 1.

    ``BCE(y, 1) = softplus(-y)`` and ``BCE(y, 0) = softplus(y)`` are computed in the stable
    softplus form, so logits of +-30 (or +-100) give finite weights.
    """
    y = logits.detach()
    lp, ln = F.softplus(-y), F.softplus(y)
    wp, wn = ln / (lp + IDL_A), lp / (ln + IDL_A)
    total = wp + wn
    return wp / total, wn / total


def inverse_dual_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per-event IDL on vague logits (no reduction)."""
    wp, wn = idl_weights(logits)
    return wp * F.softplus(-logits) + wn * F.softplus(logits)


def bce(logits, labels, vague, step=0):
    genuine = ~vague
    if not bool(genuine.any()):
        return _zero(logits)
    return F.binary_cross_entropy_with_logits(logits[genuine], labels[genuine])


def bce_neg(logits, labels, vague, step=0):
    return F.binary_cross_entropy_with_logits(logits, labels.masked_fill(vague, 0.0))


@dataclass(frozen=True)
class TruncatedCE:
    """T-CE: drop the largest-loss share of events, the share growing over the first steps."""

    max_drop: float = 0.2
    num_gradual: int = 1_000

    def drop_rate(self, step: int) -> float:
        return self.max_drop * min(step, self.num_gradual) / self.num_gradual

    def __call__(self, logits, labels, vague, step=0):
        targets = labels.masked_fill(vague, 0.0)
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        keep = max(1, int(round(losses.numel() * (1.0 - self.drop_rate(step)))))
        kept = torch.topk(losses, keep, largest=False, sorted=False).indices
        return losses[kept].mean()


@dataclass(frozen=True)
class ReweightedCE:
    """R-CE: down-weight events the model finds hard, by ``p**beta`` or ``(1-p)**beta``."""

    beta: float = 0.25

    def __call__(self, logits, labels, vague, step=0):
        targets = labels.masked_fill(vague, 0.0)
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits.detach())
        weight = torch.where(targets > 0.5, p, 1.0 - p).pow(self.beta)
        return (losses * weight).mean()


def idl(logits, labels, vague, step=0):
    genuine = ~vague
    labels = labels.masked_fill(vague, 0.0)  # a vague event's label may be anything, NaN too
    parts = logits.new_zeros(logits.shape)
    if bool(genuine.any()):
        parts = parts + torch.where(
            genuine, F.binary_cross_entropy_with_logits(logits, labels, reduction="none"), 0.0
        )
    if bool(vague.any()):
        parts = parts + torch.where(vague, inverse_dual_loss(logits), 0.0)
    return parts.mean()


LOSSES: dict[str, Loss] = {
    "bce": bce,
    "bce_neg": bce_neg,
    "tce": TruncatedCE(),
    "rce": ReweightedCE(),
    "idl": idl,
}
assert tuple(LOSSES) == LOSS_NAMES, "learner.core.settings.LOSS_NAMES names every loss"


def make_loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
