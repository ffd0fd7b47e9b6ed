"""Recommendation backbones behind one interface (:class:`~learner.core.backbones.base.Backbone`).

Losses and the meta step never name a backbone: they see logits and parameters only.
"""

from __future__ import annotations

from learner.core.backbones.base import Backbone
from learner.core.backbones.deepfm import DeepFM
from learner.core.backbones.gmf import GMF
from learner.core.backbones.neumf import NeuMF
from learner.core.backbones.wide import Wide
from learner.core.features import FEATURE_SIZES
from learner.core.settings import BACKBONE_NAMES

BACKBONES: dict[str, type[Backbone]] = {"gmf": GMF, "neumf": NeuMF, "deepfm": DeepFM,
                                   "wide": Wide}
assert tuple(BACKBONES) == BACKBONE_NAMES, "learner.core.settings.BACKBONE_NAMES names them all"


def make_backbone(name: str, dim: int, feature_sizes: tuple[int, ...] = FEATURE_SIZES) -> Backbone:
    """Build the backbone registered under ``name`` with ``dim`` latent factors."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        from learner.core.errors import ConfigError

        raise ConfigError(f"unknown model {name!r}; choose from {sorted(BACKBONES)}") from None
    return cls(dim=dim, feature_sizes=feature_sizes)


__all__ = ["BACKBONES", "Backbone", "DeepFM", "GMF", "NeuMF", "Wide", "make_backbone"]
