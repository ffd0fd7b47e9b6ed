"""The peer benchmark: river's online matrix factorisation beside dwell's learner.

The same stream (the shipped KuaiRand log in event-time order) goes through river's
``reco.FunkMF`` and ``reco.BiasedMF``, one event at a time (``predict_one`` then
``learn_one``: prequential), and through dwell's :class:`~learner.core.trainer.OnlineLearner`
in micro-batches of 1,024 records, decoded from the raw bytes (river gets parsed dicts: the
comparison is tilted its way), each batch decoded while the one before trains (as in the
daemon: ``learn_many(background=True)``). river learns on the genuine events with their dwell labels
(0/1; it has no notion of vague events); dwell learns on everything as its method says.
Both are scored by the AUC of their prequential predictions on the genuine events. Events/s
count the stream's records over the wall time of the whole pass; each learner makes
``--peer-repeat`` passes (a fresh model each), interleaved round by round in a rotating
order, and the median is reported: a single pass of river's FunkMF takes ~0.3-0.6 s and
varied 2x between runs on the 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from learner.bounds import positive_int
from learner.bridge import to_events
from learner.core.labels import POSITIVE, VAGUE, LabelRule
from learner.core.prequential import auc_score
from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import OnlineLearner
from learner.evaluation.datasets import KUAIRAND
from learner.service.config import Config
from learner.service.runtime_tuning import tuned
from producers.readers import order_by_time, read_log
from stream.event import decode_batch

SECTION = "bench:peer"
DWELL_SETUPS = {
    "dwell defaults (wide, BCE)": {},
    "dwell wide, IDL+IG": {"loss": "idl", "meta": "ig", "num_neg": 1},
    "dwell GMF, BCE": {**PAPER_SETTINGS, "loss": "bce"},
    "dwell GMF, IDL+IG": {**PAPER_SETTINGS, "loss": "idl", "meta": "ig", "num_neg": 1},
    "dwell GMF, IDL+IG, max 4 steps per batch, lr 0.03": {
        **PAPER_SETTINGS, "loss": "idl", "meta": "ig", "num_neg": 1, "max_steps": 4,
        "lr": 0.03},
    "dwell DeepFM, IDL+IG": {**PAPER_SETTINGS, "model": "deepfm", "loss": "idl", "meta": "ig",
                             "num_neg": 1},
    "dwell DeepFM, IDL+IG, max 8 steps per batch": {
        **PAPER_SETTINGS, "model": "deepfm", "loss": "idl", "meta": "ig", "num_neg": 1,
        "max_steps": 8},
}


@dataclass(frozen=True)
class PeerResult:
    name: str
    events_per_s: float
    auc: float
    seconds: float


def _river_models() -> dict:
    from river import optim, reco

    return {
        "river FunkMF": reco.FunkMF(n_factors=32, optimizer=optim.SGD(0.05), seed=0),
        "river BiasedMF": reco.BiasedMF(n_factors=32, bias_optimizer=optim.SGD(0.05),
                                        latent_optimizer=optim.SGD(0.05), seed=0),
    }


def run_river(name: str, model, events: list[dict]) -> PeerResult:
    """Prequential pass of a river recommender over the genuine events."""
    labels = LabelRule().classify(
        np.array([e["play_ms"] for e in events]), np.array([e["duration_ms"] for e in events]))
    scores, truth = [], []
    start = time.perf_counter()
    for event, label in zip(events, labels.tolist(), strict=True):
        if label == VAGUE or event["duration_ms"] <= 0:
            continue
        user, item, y = event["user_id"], event["video_id"], float(label == POSITIVE)
        scores.append(model.predict_one(user, item))
        truth.append(y)
        model.learn_one(user, item, y)
    seconds = time.perf_counter() - start
    auc = auc_score(np.array(scores), np.array(truth))
    return PeerResult(name, len(events) / seconds, auc, seconds)


def run_dwell(name: str, overrides: dict, raw: list[bytes], batch: int = 1024) -> PeerResult:
    """Prequential pass of dwell's learner over the raw records, in micro-batches."""
    config = Config(**overrides)
    learner = OnlineLearner(config.learner_settings())
    with tuned(config.gc_threshold, config.switch_interval_s):  # as the daemon runs
        start = time.perf_counter()
        for i in range(0, len(raw), batch):  # as the daemon: the next batch decodes while
            events = to_events(decode_batch(raw[i:i + batch]))
            learner.learn_many(events, background=True)  # one trains
        learner.close()
        seconds = time.perf_counter() - start
    auc = learner.evaluator.values()[("run", "dwell")]
    return PeerResult(name, len(raw) / seconds, auc, seconds)


def peer_results(path: Path = KUAIRAND, limit: int | None = None,
                 rounds: int = 3) -> list[PeerResult]:
    """Every learner's median pass over ``rounds`` interleaved rounds (AUCs do not vary:
    every model is seeded)."""
    events = order_by_time(read_log(path).events)[:limit]
    raw = [orjson.dumps(e) for e in events]
    names = [*_river_models(), *DWELL_SETUPS]
    passes: dict[str, list[PeerResult]] = {name: [] for name in names}
    for r in range(rounds):
        river = _river_models()
        for name in names[r % len(names):] + names[:r % len(names)]:
            passes[name].append(run_river(name, river[name], events) if name in river
                                else run_dwell(name, DWELL_SETUPS[name], raw))
    return [sorted(passes[name], key=lambda p: p.events_per_s)[(rounds - 1) // 2]
            for name in names]


def format_markdown(results: list[PeerResult], machine: str, command: str, n: int) -> str:
    funk = next(r for r in results if r.name == "river FunkMF")
    lines = [
        "## Peer: river's online matrix factorisation",
        "",
        f"`{command}` on {machine}. The shipped KuaiRand log ({n:,} records, event-time "
        "order); prequential AUC on the genuine events against their dwell labels; each "
        "learner's median pass of interleaved rounds.",
        "",
        "| learner | events/s | x FunkMF | AUC | wall s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r.name} | {r.events_per_s:,.0f} | "
                     f"{r.events_per_s / funk.events_per_s:.1f} | {r.auc:.4f} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer-repeat", type=positive_int(), default=3,
                   help="passes of each learner, interleaved; the median is reported")


def run(args: argparse.Namespace, machine: str) -> str:
    limit = 5_000 if args.quick else None
    rounds = 1 if args.quick else args.peer_repeat
    results = peer_results(limit=limit, rounds=rounds)
    command = "dwell bench --suites peer" + (" --quick" if args.quick else
                                             f" --peer-repeat {rounds}")
    n = limit or len(read_log(KUAIRAND).events)
    return format_markdown(results, machine, command, n)
