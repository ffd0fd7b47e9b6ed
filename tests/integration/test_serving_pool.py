"""The popular pool fed from the events topic of a real broker, and ``dwell serve`` end to end:
a subprocess that tails the topic and answers ``/rank`` from its pool."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from learner.serving.feed import PoolFeed
from learner.serving.metrics import ServeMetrics
from learner.serving.pool import PopularityPool
from learner.serving.source import LatestModel
from stream.admin import end_offsets
from stream.broker import free_ports
from stream.clients import KafkaConnection, make_producer
from tests.deploy_files import REPO
from tests.integration.helpers import learn_until_end

HOUR_MS = 3600 * 1000


def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = make_producer("kafka-python", {"bootstrap_servers": bootstrap})
    failures = []
    for i, value in enumerate(values):
        producer.produce(topic, value, key=str(i % 7).encode(),
                         on_delivery=lambda err: err and failures.append(err))
    producer.flush(30)
    producer.close(30)
    assert not failures


def _event(video: str | int, ts_ms: int, user: int = 1) -> bytes:
    return orjson.dumps({"user_id": user, "video_id": video, "play_ms": 1000,
                         "duration_ms": 9000, "ts_ms": ts_ms})


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_pool_reads_back_then_tails_the_events_topic(kafka_bootstrap, topic, kafka_client):
    t0 = 1_700_000_000_000
    # "old" was viewed most, but a day before the others: with a 1-hour half-life it decays
    old = [_event("old", t0) for _ in range(50)]
    recent = [_event(v, t0 + 24 * HOUR_MS) for v, n in (("a", 5), ("b", 9), (3, 7))
              for _ in range(n)]
    _send(kafka_bootstrap, topic, old + recent + [b"not json", b'{"user_id": 1}'])
    pool = PopularityPool(size=3, half_life_s=3600.0, tracked=100)
    metrics = ServeMetrics(CollectorRegistry(), LatestModel(), pool)
    feed = PoolFeed(KafkaConnection(kafka_bootstrap, kafka_client), topic, pool, metrics,
                    lookback=1000, batch=64).start()
    try:
        _wait(feed.caught_up.is_set)
        assert pool.top()[0] == ["b", 3, "a"]
        assert pool.top()[1].tolist() == [9.0, 7.0, 5.0]
        assert pool.weights(["old"])[0] == 50 * 2.0 ** -24
        events = metrics.pool_events
        assert events.labels("counted")._value.get() == 50 + 21
        assert events.labels("not_json")._value.get() == 1
        assert events.labels("missing_field")._value.get() == 1
        # then it follows the log: an hour later, "a" is the most viewed
        _send(kafka_bootstrap, topic, [_event("a", t0 + 25 * HOUR_MS)] * 20)
        _wait(lambda: pool.events == 91)
        assert pool.top()[0][0] == "a"
    finally:
        feed.stop()


def test_the_pool_reads_back_only_the_lookback(kafka_bootstrap, topic, kafka_client):
    _send(kafka_bootstrap, topic, [_event(f"v{i}", 1_000 + i) for i in range(400)])
    pool = PopularityPool(size=10, half_life_s=60.0, tracked=1000)
    feed = PoolFeed(KafkaConnection(kafka_bootstrap, kafka_client), topic, pool,
                    ServeMetrics(CollectorRegistry(), LatestModel(), pool), lookback=10).start()
    try:
        _wait(feed.caught_up.is_set)
        ends = end_offsets(kafka_bootstrap, topic)
        assert len(ends) == 4 and sum(ends.values()) == 400
        assert pool.events == sum(min(10, end) for end in ends.values())
    finally:
        feed.stop()


class ServeProcess:
    """``dwell serve`` as a user runs it, in a subprocess on a free port."""

    def __init__(self, *flags: str) -> None:
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from learner.cli import main; sys.exit(main())",
             "serve", "--serve-port", str(port), *flags],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)

    def status(self) -> int:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code
        except httpx.TransportError:
            return 0

    def wait_ready(self, timeout: float = 180) -> None:
        _wait(lambda: self.status() == 200 or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""

    def stop(self) -> str:
        """SIGTERM; its output, after checking that it stopped cleanly."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return out


def test_dwell_serve_answers_with_the_learners_published_model(kafka_bootstrap, topic):
    """A learner trains on the shipped log's first events and publishes to the model topic;
    ``dwell serve`` rebuilds the model from that topic and answers with its newest version,
    the scores of a model rebuilt from the same topic; its pool ranks the topic's videos."""
    from learner.serving.replica import read_model_topic
    from producers.readers import order_by_time, read_log
    from producers.replay import replay

    result = read_log(REPO / "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv")
    result.events = order_by_time(result.events)[:3000]
    replay(result, bootstrap=kafka_bootstrap, topic=topic, progress=False)
    learn_until_end(kafka_bootstrap, topic, publish_interval_s=0.5)
    published = read_model_topic(KafkaConnection(kafka_bootstrap), f"{topic}.model")
    model = published.current()
    assert model is not None and model.version >= 1
    server = ServeProcess("--bootstrap", kafka_bootstrap, "--topic", topic)
    try:
        server.wait_ready()
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        assert health["model_version"] == model.version
        assert health["newest_event_ms"] == model.newest_event_ms
        user = result.events[-1]["user_id"]
        videos = list(dict.fromkeys(e["video_id"] for e in result.events))[:100]
        r = httpx.post(f"{server.url}/rank", json={"user_id": user, "k": 5, "hour": 4,
                                                   "candidates": videos}, timeout=10)
        assert r.json()["ranked_by"] == "model" and r.json()["model_version"] == model.version
        r = httpx.post(f"{server.url}/score", json={"pairs": [[user, v] for v in videos],
                                                    "hour": 4}, timeout=10)
        assert r.json()["scores"] == pytest.approx(
            model.score([user] * len(videos), videos, hour=4).tolist(), rel=1e-6)
        r = httpx.post(f"{server.url}/rank", json={"user_id": "someone-new", "k": 3}, timeout=10)
        assert r.json()["ranked_by"] == "popularity"
        assert {i["video_id"] for i in r.json()["items"]} <= set(e["video_id"]
                                                                 for e in result.events)
    finally:
        server.stop()


def test_dwell_serve_with_a_model_trained_on_a_log(kafka_bootstrap, topic):
    """``dwell serve --train-log``: healthz 200 once its model is trained; /rank with no
    candidates ranks the videos of the events topic; SIGTERM stops it."""
    videos = [f"pool-{i}" for i in range(30)]
    _send(kafka_bootstrap, topic, [_event(v, 1_650_000_000_000 + i, user=i % 5)
                                   for i, v in enumerate(videos * 3)])
    server = ServeProcess("--bootstrap", kafka_bootstrap, "--topic", topic, "--train-log",
                          str(REPO / "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"),
                          "--pool-size", "20", "--batch-size", "256", "--pool-tracked", "1000")
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/rank", json={"user_id": "someone-new", "k": 20},
                       timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["ranked_by"] == "popularity"
        assert {i["video_id"] for i in r.json()["items"]} <= set(videos)
        assert len(r.json()["items"]) == 20
        assert "dwell_serving_model_version 1.0" in httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
