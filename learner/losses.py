"""Training losses behind one interface: ``loss(logits, labels, vague) -> scalar tensor``.

``labels`` holds 1 (positive) or 0 (negative) for genuine events; ``vague`` marks the events
whose label is uncertain (their entry in ``labels`` is meaningless). BCE trains on the
genuine events only. T-CE, R-CE and the Inverse Dual Loss plug in here (next issue).

>>> import torch
>>> loss = make_loss("bce")
>>> float(loss(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([False, True])))
0.6931...
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from stream.errors import ConfigError


class Loss(Protocol):
    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, vague: torch.Tensor
    ) -> torch.Tensor: ...


def bce(logits: torch.Tensor, labels: torch.Tensor, vague: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, averaged over the genuine events."""
    genuine = ~vague
    if not bool(genuine.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[genuine], labels[genuine])


LOSSES: dict[str, Loss] = {"bce": bce}


def make_loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
