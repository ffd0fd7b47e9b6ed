"""``dwell serve``'s HTTP API over real HTTP on loopback (uvicorn on a thread), with a model
trained on the shipped KuaiRand log: every endpoint, hostile requests, and the metrics scraped
by a real Prometheus running the shipped configuration and alert rules."""

from __future__ import annotations

import math
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from learner.core.settings import LearnerSettings
from learner.core.trainer import OnlineLearner
from learner.serving.app import ServeApp
from learner.serving.pool import PopularityPool
from learner.serving.requests import Limits
from learner.serving.server import HttpServer
from learner.serving.source import LatestModel
from learner.serving.trained import served as served_model
from learner.serving.trained import train_on_log
from tests.deploy_files import ALERTS, alert_rules, dashboard_expressions, metric_names
from tests.prometheus_server import PrometheusServer

MAX_K, MAX_CANDIDATES, MAX_BODY = 50, 2000, 64 * 1024


@pytest.fixture(scope="module")
def trained():
    model, batches = train_on_log(limit=20_000)
    return model, batches


class Served:
    def __init__(self, source, pool, registry):
        self.source, self.pool, self.registry = source, pool, registry
        self.app = ServeApp(source, pool, Limits(MAX_K, MAX_CANDIDATES), MAX_BODY, registry)
        self.server = HttpServer(self.app.asgi()).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)

    def close(self):
        self.http.close()
        self.server.stop()


@pytest.fixture
def served(trained):
    model, batches = trained
    pool = PopularityPool(size=200, half_life_s=3 * 24 * 3600.0, tracked=50_000)
    for batch in batches:
        pool.add(batch.video_id, batch.ts_ms)
    s = Served(LatestModel(model), pool, CollectorRegistry())
    yield s
    s.close()


def _known_user(batches):
    return batches[-1].user_id[0]


def test_healthz_waits_for_a_model_then_answers_ready(trained):
    model, _ = trained
    source = LatestModel()
    s = Served(source, None, CollectorRegistry())
    try:
        r = s.http.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "waiting for a model"
        r = s.http.post("/rank", json={"user_id": 1, "candidates": [1, 2]})
        assert r.status_code == 503 and r.json()["cause"] == "no_model"
        source.put(model)
        r = s.http.get("/healthz")
        assert r.status_code == 200
        assert r.json()["model_version"] == model.version
    finally:
        s.close()


def test_rank_a_known_user_by_the_model(served, trained):
    model, batches = trained
    user = _known_user(batches)
    candidates = list(dict.fromkeys(batches[-1].video_id))[:300]
    r = served.http.post("/rank", json={"user_id": user, "candidates": candidates, "k": 10,
                                        "hour": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ranked_by"] == "model" and body["model_version"] == model.version
    assert body["hour"] == 5
    got = [item["video_id"] for item in body["items"]]
    scores = model.score([user] * len(candidates), candidates, hour=5)
    expected = [candidates[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert got == expected
    assert [item["score"] for item in body["items"]] == pytest.approx(
        np.sort(scores)[::-1][:10].tolist(), rel=1e-6)


def test_rank_from_the_popular_pool_when_no_candidates_are_named(served, trained):
    _, batches = trained
    r = served.http.post("/rank", json={"user_id": _known_user(batches), "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    pool_ids, _ = served.pool.top()
    assert len(body["items"]) == 5
    assert {item["video_id"] for item in body["items"]} <= set(pool_ids)


def test_an_unknown_user_gets_the_popularity_order(served):
    pool_ids, views = served.pool.top(20)
    r = served.http.post("/rank", json={"user_id": "nobody-ever-seen", "k": 20})
    body = r.json()
    assert body["ranked_by"] == "popularity"
    assert [item["video_id"] for item in body["items"]] == pool_ids
    assert [item["views"] for item in body["items"]] == pytest.approx(views.tolist())
    # named candidates: the pool's order first, then videos it never saw by their bias
    never = ["unseen-video-a", "unseen-video-b"]
    r = served.http.post("/rank", json={"user_id": "nobody", "k": 4,
                                        "candidates": never + pool_ids[:2][::-1]})
    got = [item["video_id"] for item in r.json()["items"]]
    assert got[:2] == pool_ids[:2] and set(got[2:]) == set(never)


def test_score_pairs_equals_the_model_and_unknown_ids_get_biases(served, trained):
    model, batches = trained
    users = list(batches[-1].user_id[:20]) + ["new-user"]
    videos = list(batches[-1].video_id[:20]) + ["new-video"]
    pairs = [[u, v] for u, v in zip(users, videos, strict=True)]
    r = served.http.post("/score", json={"pairs": pairs, "hour": 7})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == model.version and r.json()["hour"] == 7
    assert r.json()["scores"] == pytest.approx(model.score(users, videos, hour=7).tolist(),
                                               rel=1e-6)
    # no hour named: the hour now, UTC, as the learner's feature of an event now
    before = int(time.time() // 3600 % 24)
    r = served.http.post("/score", json={"pairs": pairs})
    assert r.json()["hour"] in (before, int(time.time() // 3600 % 24))
    assert r.json()["scores"] == pytest.approx(
        model.score(users, videos, hour=r.json()["hour"]).tolist(), rel=1e-6)


def test_one_answer_comes_from_one_model_version(served, trained):
    """Requests in flight while a newer model is put: every answer's scores are exactly those
    of the model whose version it names."""
    model, batches = trained
    newer = served_model(OnlineLearner(LearnerSettings(seed=1)), batches[:3], version=2)
    user = _known_user(batches)
    candidates = list(dict.fromkeys(batches[-1].video_id))[:200]
    expected = {m.version: m.score([user] * len(candidates), candidates, hour=3)
                for m in (model, newer)}
    answers: list[dict] = []

    def ask() -> None:
        with httpx.Client(base_url=served.server.url, timeout=30) as client:
            for _ in range(15):
                answers.append(client.post("/score", json={
                    "pairs": [[user, v] for v in candidates], "hour": 3}).json())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    served.source.put(newer)
    for t in threads:
        t.join()
    assert {a["model_version"] for a in answers} <= {1, 2} and len(answers) == 45
    assert served.http.post("/score", json={"pairs": [[user, 1]]}).json()["model_version"] == 2
    for answer in answers:
        assert answer["scores"] == pytest.approx(expected[answer["model_version"]].tolist(),
                                                 rel=1e-6)


HOSTILE = [
    (b"", 400, "not_json"),
    (b"{", 400, "not_json"),
    (b"[1, 2]", 400, "invalid"),
    (b'"just a string"', 400, "invalid"),
    (b'{"user_id": 1, "k": NaN}', 400, "not_json"),
    (b'{"user_id": 1, "k": 1e999}', 400, "invalid"),
    (b'{"user_id": 1, "k": 10.5}', 400, "invalid"),
    (b'{"user_id": 1, "k": "10"}', 400, "invalid"),
    (b'{"user_id": 1, "k": true}', 400, "invalid"),
    (b'{"user_id": 1, "k": 0}', 400, "invalid"),
    (b'{"user_id": 1, "k": -3}', 400, "invalid"),
    (b'{"user_id": 1, "k": 100000000000000000000000}', 400, "invalid"),
    (b'{"user_id": 1, "k": 51}', 400, "invalid"),
    (b'{"user_id": 1, "hour": 24}', 400, "invalid"),
    (b'{"user_id": 1, "hour": -1}', 400, "invalid"),
    (b'{"user_id": 1, "hour": "3"}', 400, "invalid"),
    (b'{"user_id": null}', 400, "invalid"),
    (b'{"user_id": [1]}', 400, "invalid"),
    (b'{"user_id": 1.5}', 400, "invalid"),
    (b'{"user_id": ""}', 400, "invalid"),
    (b'{"user_id": 18446744073709551615}', 400, "invalid"),
    (b'{"k": 3}', 400, "invalid"),
    (b'{"user_id": 1, "candidate": [1]}', 400, "invalid"),
    (b'{"user_id": 1, "candidates": []}', 400, "invalid"),
    (b'{"user_id": 1, "candidates": "v1"}', 400, "invalid"),
    (b'{"user_id": 1, "candidates": [1, null]}', 400, "invalid"),
    (b'{"user_id": 1, "candidates": [{"a": 1}]}', 400, "invalid"),
    (b'{"user_id": "\\ud800"}', 400, "not_json"),
    (b'{"user_id": "\xff\xfe"}', 400, "not_json"),
    (b'{"user_id": "' + b"x" * 129 + b'"}', 400, "invalid"),
    (b'{"user_id": "' + "\u00e9".encode() * 65 + b'"}', 400, "invalid"),
    (b"[" * 30_000 + b"]" * 30_000, 400, "invalid"),
    (b'{"user_id": 1, "candidates": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "invalid"),
    (b"\x00\x01", 400, "not_json"),
    (b'{"user_id": 1} trailing', 400, "not_json"),
]


@pytest.mark.parametrize(("body", "status", "cause"), HOSTILE,
                         ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_rank_requests_get_a_4xx_with_a_message(served, body, status, cause):
    r = served.http.post("/rank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["cause"] == cause and r.json()["error"]


def test_hostile_score_requests_and_sizes(served):
    post = served.http.post
    for body in ({"pairs": []}, {"pairs": [[1]]}, {"pairs": [[1, 2, 3]]}, {"pairs": [1, 2]},
                 {"pairs": [[1, None]]}, {"pairs": [[1, 2]] * (MAX_CANDIDATES + 1)},
                 {"pair": [[1, 2]]}):
        r = post("/score", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["cause"] == "invalid"
    r = post("/rank", json={"user_id": 1, "candidates": list(range(MAX_CANDIDATES + 1))})
    assert r.status_code == 400 and "candidates must hold" in r.json()["error"]
    r = post("/rank", content=b'{"user_id": 1, "candidates": [' + b"1," * 40_000 + b"1]}")
    assert r.status_code == 413 and r.json()["cause"] == "too_large"

    def chunks():  # no Content-Length: the size is found out while reading
        for _ in range(100):
            yield b" " * 1024

    r = post("/rank", content=chunks())
    assert r.status_code == 413
    # a Content-Length past the bound is refused before the body is read
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=10) as conn:
        conn.sendall(b"POST /rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 99999999999\r\n\r\n{}")
        assert conn.recv(1024).startswith(b"HTTP/1.1 413 ")


def test_unicode_ids_round_trip(served):
    ids = ["视频-1", "🎬", "é" * 64, 2**63 - 1, -(2**63)]
    r = served.http.post("/rank", json={"user_id": "用户", "candidates": ids, "k": 5})
    assert r.status_code == 200, r.text
    assert sorted(map(str, (i["video_id"] for i in r.json()["items"]))) == sorted(map(str, ids))
    assert all(math.isfinite(i["score"]) for i in r.json()["items"])


def test_the_same_id_as_a_string_and_an_integer_are_two_videos(served):
    r = served.http.post("/rank", json={"user_id": 1, "candidates": [7, "7", 7], "k": 10})
    assert sorted(map(repr, (i["video_id"] for i in r.json()["items"]))) == ["'7'", "7"]


def test_wrong_paths_and_methods(served):
    assert served.http.get("/rank").status_code == 405
    assert served.http.post("/nowhere", json={}).json()["cause"] == "not_found"
    assert served.http.post("/healthz").status_code == 405


def _value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def test_metrics_count_requests_errors_and_show_the_model(served, trained):
    model, batches = trained
    served.http.post("/rank", json={"user_id": _known_user(batches), "k": 3})
    served.http.post("/rank", content=b"{")
    text = served.http.get("/metrics").text
    assert _value(text, "dwell_serving_requests_total", endpoint="rank", code="200") == 1
    assert _value(text, "dwell_serving_requests_total", endpoint="rank", code="400") == 1
    assert _value(text, "dwell_serving_errors_total", cause="not_json") == 1
    assert _value(text, "dwell_serving_request_duration_seconds_count", endpoint="rank") == 2
    assert _value(text, "dwell_serving_model_version") == model.version
    age = time.time() - model.newest_event_ms / 1000
    assert _value(text, "dwell_serving_model_age_seconds") == pytest.approx(age, abs=5)
    assert _value(text, "dwell_serving_rankings_total", basis="model") == 1


def test_prometheus_scrapes_the_server_and_the_stale_model_alert_fires(served, tmp_path):
    """The shipped scrape config's serving job, the dashboard's serving queries and the stale
    model alert, on a real Prometheus (the trained model's newest event is from 2022: stale)."""
    served.http.post("/rank", json={"user_id": "x", "k": 3})
    prometheus = PrometheusServer(tmp_path / "prometheus", f"127.0.0.1:{served.server.port}",
                                  job="dwell-serve")
    prometheus.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # pending: its condition holds (it fires once it has held for the rule's 5 min)
            firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]
                      if a["state"] in ("pending", "firing")}
            if "DwellServingModelStale" in firing:
                break
            time.sleep(1)
        assert "DwellServingModelStale" in firing
        serving = [e for e in dashboard_expressions()
                   if any(n.startswith("dwell_serving_") for n in metric_names(e))]
        assert len(serving) >= 5
        for expr in serving:  # rates need two scrapes: keep asking while Prometheus scrapes
            deadline = time.monotonic() + 60
            while not prometheus.query(expr) and time.monotonic() < deadline:
                served.http.post("/rank", json={"user_id": "x", "k": 3})
                served.http.post("/rank", content=b"{")  # an error, for the errors panel
                time.sleep(0.5)
            assert prometheus.query(expr), f"no data for {expr}"
    finally:
        prometheus.stop()
    (rule,) = [r for r in alert_rules(ALERTS) if r["alert"] == "DwellServingModelStale"]
    assert "dwell_serving_model_age_seconds" in rule["expr"]
