"""``dwell serve``: the HTTP API (:mod:`learner.serving.app`) on uvicorn, its popular pool fed
from the events topic.

Settings: the ``[serve]`` concern of :class:`~learner.service.config.Config` (address, port,
bounds of a request, the pool), the Kafka connection and the events topic; flags over
``DWELL_*`` variables over the TOML file, as for every command.

The model: a :class:`~learner.serving.replica.Replica` of the model topic (``--model-topic``,
default ``<topic>.model``, which ``dwell learn`` publishes to) rebuilds the learner's model
from the topic's start and swaps each new complete version in; ``/healthz`` answers 503 until
the first. With ``--train-log FILE`` the server instead answers with a model it trains at start
on that log (KuaiRand format), as version 1: a server without a learner.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from learner.service.config import CONCERN_OF, Config, add_config_args, config_from_args
from learner.serving.app import ServeApp
from learner.serving.feed import PoolFeed
from learner.serving.pool import PopularityPool
from learner.serving.requests import Limits
from learner.serving.server import HttpServer
from learner.serving.source import LatestModel, ModelSource

logger = logging.getLogger(__name__)

#: The settings ``dwell serve`` takes: its own concern's, the Kafka connection's, the topic,
#: and the decoder's bound on a record.
SERVE_FLAGS = (*(name for name, concern in CONCERN_OF.items() if concern in ("serve", "kafka")),
               "topic", "model_topic", "partitions", "batch_size", "max_value_bytes", "model",
               "dim", "seed")


def build_app(cfg: Config, source: ModelSource, registry: CollectorRegistry,
              pool: PopularityPool | None) -> ServeApp:
    """The serving app with ``cfg``'s bounds."""
    return ServeApp(source, pool, Limits(cfg.serve_max_k, cfg.serve_max_candidates),
                    cfg.serve_max_body_bytes, registry)


def make_pool(cfg: Config) -> PopularityPool:
    """An empty popular pool of ``cfg``'s size, half-life and bound."""
    return PopularityPool(cfg.pool_size, cfg.pool_half_life_s, cfg.pool_tracked)


def _trained_source(cfg: Config, log: str) -> LatestModel:
    """A source that answers with a model trained on ``log`` on a thread (None until then)."""
    from learner.core.trainer import OnlineLearner
    from learner.evaluation.datasets import kuairand_batches
    from learner.serving.trained import served

    source = LatestModel()

    def train() -> None:  # /healthz answers 503 meanwhile
        logger.info("training on %s to serve it", log)
        source.put(served(OnlineLearner(cfg.learner_settings()),
                          kuairand_batches(cfg.batch_size, Path(log))))
        logger.info("model ready: %s", source.current())

    threading.Thread(target=train, name="dwell-serve-train", daemon=True).start()
    return source


def _serve(args: argparse.Namespace) -> int:
    from learner.serving.replica import Replica

    cfg = config_from_args(args)
    registry = CollectorRegistry()
    replica = None
    if args.train_log:
        source: ModelSource = _trained_source(cfg, args.train_log)
    else:
        replica = Replica(cfg.connection, cfg.model_topic_name).start()
        source = replica
        logger.info("model from the model topic %s", cfg.model_topic_name)
    pool = make_pool(cfg)
    app = build_app(cfg, source, registry, pool)
    feed = PoolFeed(cfg.connection, cfg.topic, pool, app.metrics, cfg.pool_lookback,
                    cfg.batch_size, cfg.max_value_bytes).start()
    server = HttpServer(app.asgi(), cfg.serve_addr, cfg.serve_port)
    logger.info("serving on %s (/rank, /score, /healthz, /metrics); popular pool from %s",
                server.url, cfg.topic)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        stop.wait()
        logger.info("stopping")
    finally:
        server.stop()
        feed.stop()
        if replica is not None:
            replica.stop()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dwell serve`` on the ``dwell`` command's subparsers."""
    p = subparsers.add_parser("serve", help="serve rankings over HTTP (POST /rank, /score; GET "
                                            "/healthz, /metrics)", description=__doc__)
    p.add_argument("--train-log", default=None, metavar="FILE",
                   help="answer with a model trained at start on this KuaiRand-format log "
                        "(e.g. data/kuairand27k_like_hate/processed_standard_kcore_15.tsv) "
                        "instead of the model topic's")
    add_config_args(p, SERVE_FLAGS)
    p.set_defaults(func=_serve)
