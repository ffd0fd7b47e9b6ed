"""What the model core needs to know, and the names it accepts: no torch, no numba.

The service's configuration (``learner.service.config``) builds a :class:`LearnerSettings`
and checks names against the tuples here without importing the modules that hold the
models, losses and compiled steps (``dwell replay`` and ``dwell broker`` import no torch).
Each registry checks itself against its tuple (``BACKBONES``, ``LOSSES``,
``NegativeSampler.MODES``).

>>> LearnerSettings(dim=4).dim, "gmf" in BACKBONE_NAMES
(4, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from learner.core.errors import ConfigError
from learner.core.labels import LabelRule

#: The backbones (``learner.core.backbones.BACKBONES``), the training losses
#: (``learner.core.losses.LOSSES``) and the ways unseen items are drawn
#: (``learner.core.sampling.NegativeSampler``).
BACKBONE_NAMES = ("gmf", "neumf", "deepfm", "wide")
LOSS_NAMES = ("bce", "bce_neg", "tce", "rce", "idl")
SAMPLER_MODES = ("uniform", "popularity")
LABEL_RULES = ("fixed", "quantile")
#: The training steps: ``auto`` (a backbone's compiled steps where it offers them, on the CPU)
#: or ``torch`` (autograd always).
KERNELS = ("auto", "torch")
#: The largest random seed (numpy's).
SEED_MAX = 2**32 - 1
#: The daemon's defaults that offline runs share: records per micro-batch, and genuine events
#: per chunk fed to the drift detector.
MICRO_BATCH = 1024
DRIFT_CHUNK = 500


#: The settings the MovieLens and KuaiRand like/hate results were measured with (the paper's
#: GMF, its learning rate, steps of 64 events), where they differ from the defaults.
PAPER_SETTINGS = {"model": "gmf", "lr": 0.01, "train_batch": 64}


def check_kernel(kernel: str) -> None:
    """ConfigError unless ``kernel`` is one of :data:`KERNELS`."""
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be auto or torch, not {kernel!r}")


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    """What the learner needs to know; built from the daemon's configuration."""

    # the defaults are the best configuration measured on a real, unfiltered feed
    # (docs/RESULTS.md, "An unfiltered feed"); the paper's own are PAPER_SETTINGS
    model: str = "wide"
    dim: int = 32
    lr: float = 0.003
    dense_lr: float = 0.0  # the dense layers' learning rate; 0: the backbone's, or lr
    loss: str = "bce"
    train_batch: int = 512
    max_steps: int = 0  # at most this many optimiser steps per micro-batch (0: no limit)
    seed: int = 0
    device: str = "cpu"
    auc_window: int = 5000
    auc_long_window: int = 50_000
    labels: LabelRule = field(default_factory=LabelRule)
    # fixed: the thresholds of ``labels``; quantile: the play time's quantile among earlier
    # watches of the same length (learner.core.quantile_labels; ``labels`` while cold)
    label_rule: str = "fixed"
    num_neg: int = 0
    sampler: str = "uniform"
    meta: str = "none"
    sample_lr: float = 1e-3
    lookahead: str = "adam"
    kernel: str = "auto"  # auto: the backbone's compiled steps (wide, GMF on the CPU); torch
    meta_source: str = "batch"
    meta_size: int = 4096
    meta_batch: int = 256
    threads: int = 1
    max_users: int = 0  # id-map capacity, least recently seen evicted; 0: unbounded
    max_videos: int = 0
    rank: int = 0  # rank in a distributed job: its draws (sampling, shuffles) differ
