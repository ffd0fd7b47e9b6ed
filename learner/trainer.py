"""The online learner: label, map ids, score (prequential), then train, one micro-batch at a time.

River's verbs, for batches: :meth:`OnlineLearner.predict_many` scores pairs,
:meth:`OnlineLearner.learn_many` tests then trains on an :class:`~stream.event.EventBatch`.

>>> from stream.event import decode_batch
>>> learner = OnlineLearner(LearnerSettings(dim=4))
>>> raw = b'{"user_id":1,"video_id":2,"play_ms":9000,"duration_ms":9000,"ts_ms":0}'
>>> batch = decode_batch([raw])
>>> learner.learn_many(batch).counts
{'positive': 1, 'negative': 0, 'vague': 0}
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from learner.backbones import make_backbone
from learner.idmap import IdMap
from learner.labels import CLASS_NAMES, NEGATIVE, POSITIVE, VAGUE, LabelRule
from learner.losses import make_loss
from learner.optim import MixedAdam, ensure_rows
from learner.prequential import Evaluator
from stream.event import EventBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    """What the learner needs to know; built from the daemon's configuration."""

    model: str = "gmf"
    dim: int = 32
    lr: float = 0.01
    loss: str = "bce"
    train_batch: int = 256
    seed: int = 0
    device: str = "cpu"
    auc_window: int = 5000
    labels: LabelRule = field(default_factory=LabelRule)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one micro-batch did: events per label class, training steps taken, mean loss."""

    counts: dict[str, int]
    steps: int
    loss: float


class OnlineLearner:
    """A backbone trained online on dwell-labelled micro-batches, evaluated prequentially."""

    def __init__(self, settings: LearnerSettings) -> None:
        torch.manual_seed(settings.seed)
        self.settings = settings
        self.device = torch.device(settings.device)
        self.model = make_backbone(settings.model, settings.dim).to(self.device)
        self.optimizer = MixedAdam(self.model, lr=settings.lr)
        self.loss = make_loss(settings.loss)
        self.users = IdMap()
        self.videos = IdMap()
        self.evaluator = Evaluator(settings.auc_window)
        self._rng = np.random.default_rng(settings.seed)

    def _rows(self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable]):
        users = self.users.lookup(user_ids)
        videos = self.videos.lookup(video_ids)
        ensure_rows(self.model, self.optimizer, len(self.users), len(self.videos))
        return (
            torch.from_numpy(users).to(self.device),
            torch.from_numpy(videos).to(self.device),
        )

    @torch.no_grad()
    def predict_many(self, user_ids: Sequence[Hashable], video_ids: Sequence[Hashable]):
        """Like probabilities for (user, video) pairs; unseen ids get fresh rows."""
        users, videos = self._rows(user_ids, video_ids)
        return torch.sigmoid(self.model(users, videos)).cpu().numpy()

    def learn_many(self, batch: EventBatch) -> BatchResult:
        """Score the batch (prequential metrics), then train on it in ``train_batch`` steps."""
        classes = self.settings.labels.classify(batch.play_ms, batch.duration_ms)
        counts = {name: int((classes == c).sum()) for c, name in CLASS_NAMES.items()}
        if not len(batch):
            return BatchResult(counts, 0, float("nan"))
        scores = self.predict_many(batch.user_id, batch.video_id)
        genuine = classes != VAGUE
        self.evaluator.update("dwell", scores[genuine], classes[genuine])
        explicit = ~np.isnan(batch.explicit)
        self.evaluator.update("explicit", scores[explicit], batch.explicit[explicit])

        users, videos = self._rows(batch.user_id, batch.video_id)
        targets = torch.from_numpy(classes == POSITIVE).float().to(self.device)
        vague = torch.from_numpy(classes == VAGUE).to(self.device)
        order = torch.from_numpy(self._rng.permutation(len(batch))).to(self.device)
        losses = []
        for chunk in order.split(self.settings.train_batch):
            self.optimizer.zero_grad()
            logits = self.model(users[chunk], videos[chunk])
            loss = self.loss(logits, targets[chunk], vague[chunk])
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return BatchResult(counts, len(losses), float(torch.stack(losses).mean()))


__all__ = ["BatchResult", "LearnerSettings", "OnlineLearner", "NEGATIVE", "POSITIVE", "VAGUE"]
