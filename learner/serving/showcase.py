"""The end of ``dwell demo``: a running server's recommendations for one user.

The serving app runs in-process on a free loopback port as ``dwell serve`` runs it: its model
from a replica of the model topic the demo's learner published to (or, with
``--publish-interval-s 0``, the learner's model as it stands, version 1), its popular pool fed
from the demo's events topic. One ``POST /rank`` over HTTP asks for the top videos of the user
with the most events, and the answer is printed.
"""

from __future__ import annotations

import collections
import json
import urllib.request
from collections.abc import Hashable

from prometheus_client import CollectorRegistry

from learner.core.trainer import OnlineLearner
from learner.service.config import Config
from learner.serving.command import build_app, make_pool
from learner.serving.feed import PoolFeed
from learner.serving.model import ServedModel
from learner.serving.replica import Replica
from learner.serving.server import HttpServer
from learner.serving.source import LatestModel, ModelSource


def recommend(cfg: Config, learner: OnlineLearner, events: list[dict], k: int = 5) -> str:
    """Serve ``learner`` trained on ``events`` (the demo's topic ``cfg.topic`` holds them)
    and return the printed lines of one ``/rank`` answer for its most active user."""
    replica = None
    if cfg.publish_interval_s > 0:
        replica = Replica(cfg.connection, cfg.model_topic_name).start()
        if not replica.caught_up.wait(120) or replica.current() is None:
            replica.stop()
            raise TimeoutError(f"no model read from {cfg.model_topic_name} in 120 s")
        source: ModelSource = replica
    else:
        newest = max(int(e["ts_ms"]) for e in events)
        source = LatestModel(ServedModel.from_learner(learner, 1, newest))
    pool = make_pool(cfg)
    registry = CollectorRegistry()
    app = build_app(cfg, source, registry, pool)
    feed = PoolFeed(cfg.connection, cfg.topic, pool, app.metrics, cfg.pool_lookback,
                    cfg.batch_size, cfg.max_value_bytes).start()
    server = HttpServer(app.asgi()).start()
    try:
        if not feed.caught_up.wait(120):
            raise TimeoutError(f"the popular pool did not read {cfg.topic} back in 120 s")
        user: Hashable = collections.Counter(e["user_id"] for e in events).most_common(1)[0][0]
        request = urllib.request.Request(
            f"{server.url}/rank", data=json.dumps({"user_id": user, "k": k}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = json.load(answer)
    finally:
        server.stop()
        feed.stop()
        if replica is not None:
            replica.stop()
    origin = f"the model topic {cfg.model_topic_name}" if replica else "the learner"
    lines = [f"top {k} for user {user} from POST {server.url}/rank (model version "
             f"{body['model_version']} from {origin}, ranked by {body['ranked_by']}, among "
             f"the {len(pool.top()[0])} most popular videos):"]
    lines += [f"  {i}. video {item['video_id']}  score {item['score']:.3f}"
              for i, item in enumerate(body["items"], 1)]
    return "\n".join(lines)
