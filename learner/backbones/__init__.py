"""Recommendation backbones behind one interface (:class:`~learner.backbones.base.Backbone`).

Losses and the meta step never name a backbone: they see logits and parameters only.
"""

from __future__ import annotations

from learner.backbones.base import Backbone
from learner.backbones.deepfm import DeepFM
from learner.backbones.gmf import GMF
from learner.backbones.neumf import NeuMF
from learner.features import FEATURE_SIZES

BACKBONES: dict[str, type[Backbone]] = {"gmf": GMF, "neumf": NeuMF, "deepfm": DeepFM}


def make_backbone(name: str, dim: int, feature_sizes: tuple[int, ...] = FEATURE_SIZES) -> Backbone:
    """Build the backbone registered under ``name`` with ``dim`` latent factors."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        from stream.errors import ConfigError

        raise ConfigError(f"unknown model {name!r}; choose from {sorted(BACKBONES)}") from None
    return cls(dim=dim, feature_sizes=feature_sizes)


__all__ = ["BACKBONES", "Backbone", "DeepFM", "GMF", "NeuMF", "make_backbone"]
