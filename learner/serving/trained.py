"""A model trained on a log without Kafka, to serve: for the benchmark, the tests and the demo
when no learner publishes.

>>> model, events = train_on_log(limit=2000)
>>> model.version, len(events), bool(model.known_users([events[0].user_id[0]])[0])
(1, 2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from learner.core.batch import Events
from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from learner.evaluation.datasets import KUAIRAND, kuairand_batches
from learner.serving.model import ServedModel


def served(learner: OnlineLearner, batches: Sequence[Events], version: int = 1) -> ServedModel:
    """``learner`` trained on ``batches`` in order, as a served model of ``version``."""
    newest = 0
    for batch in batches:
        learner.learn_many(batch)
        if len(batch):
            newest = max(newest, int(batch.ts_ms.max()))
    return ServedModel.from_learner(learner, version, newest)


def train_on_log(path: Path = KUAIRAND, limit: int | None = None, batch_size: int = 1024,
                 settings: LearnerSettings | None = None) -> tuple[ServedModel, list[Events]]:
    """A learner with ``settings`` (the defaults) trained on the first ``limit`` events (all
    by default) of the KuaiRand log ``path`` in event-time order, served as version 1; and
    the micro-batches it learned."""
    batches = kuairand_batches(batch_size, path)
    if limit is not None:
        batches = batches[: -(-limit // batch_size)]
    return served(OnlineLearner(settings or LearnerSettings()), batches), batches
