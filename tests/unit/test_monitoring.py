"""Metrics, drift detectors and the run log, without a broker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from learner.core.drift import DriftMonitor, SignalDetector
from learner.core.prequential import Evaluator
from learner.service.monitoring import BulkHistogram, Metrics
from learner.serving.metrics import ServeMetrics
from learner.serving.pool import PopularityPool
from learner.serving.source import LatestModel
from tests.deploy_files import EXPORTED_METRICS


def _family_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def test_the_learner_and_dwell_serve_export_exactly_what_the_dashboard_and_alerts_use():
    names = _family_names(Metrics(CollectorRegistry()).registry)
    names.discard("dwell_learner")  # the Info family; its sample is dwell_learner_info
    serving = CollectorRegistry()
    ServeMetrics(serving, LatestModel(), PopularityPool(size=10, half_life_s=60.0, tracked=10))
    assert not names & _family_names(serving)  # declared once: no name in both
    assert names | _family_names(serving) == set(EXPORTED_METRICS)


def test_metric_conventions():
    m = Metrics(CollectorRegistry())
    text = generate_latest(m.registry).decode()
    for family in m.registry.collect():
        assert family.documentation, family.name
        assert family.name.startswith("dwell_")
        for sample in family.samples:  # bounded labels only: never an id
            assert not {"user", "user_id", "video", "video_id"} & set(sample.labels)
    assert "dwell_events_consumed_total 0.0" in text


def test_bulk_histogram_matches_one_by_one_observations():
    from prometheus_client import Histogram

    rng = np.random.default_rng(1)
    values = rng.exponential(0.3, 5000)
    buckets = (0.01, 0.1, 0.5, 1.0, 2.0)
    bulk = BulkHistogram("bulk_seconds", "b", buckets, CollectorRegistry())
    bulk.observe_many(values[:2000])
    bulk.observe_many(values[2000:])
    plain = Histogram("plain_seconds", "p", buckets=buckets, registry=CollectorRegistry())
    for v in values:
        plain.observe(v)
    got = {(s.name.replace("bulk", "x"), s.labels.get("le")): s.value
           for s in next(iter(bulk.collect())).samples}
    want = {(s.name.replace("plain", "x"), s.labels.get("le")): s.value
            for s in next(iter(plain.collect())).samples if not s.name.endswith("_created")}
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key]), key


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley"])
def test_detectors_ignore_improvement_and_catch_degradation(kind):
    rng = np.random.default_rng(0)
    rising = SignalDetector(kind, "down")
    # quality improving (an AUC rising as the model learns): never drift
    assert not any(rising.update(v) for v in np.linspace(0.5, 0.8, 200) + rng.normal(0, .01, 200))
    falling = SignalDetector(kind, "down")
    series = np.r_[np.full(100, 0.8), np.full(100, 0.3)] + rng.normal(0, 0.01, 200)
    fired = [i for i, v in enumerate(series) if falling.update(v)]
    assert fired and fired[0] >= 100


def test_adwin_watches_every_event_loss_and_reports_where():
    rng = np.random.default_rng(3)
    monitor = DriftMonitor("adwin", chunk=500)
    found = []
    for flip in [False] * 30 + [True] * 10:
        labels = rng.random(400) < 0.5
        margin = -0.3 if flip else 0.3
        scores = np.clip(0.5 + margin * (2 * labels - 1) + rng.normal(0, .1, 400), 0, 1)
        found += monitor.update(scores, labels)
    assert found and all(d.events > 30 * 400 for d in found)
    assert {d.signal for d in found} >= {"log_loss"}


def test_evaluator_windows_and_shares():
    ev = Evaluator(window=4, long_window=8)
    ev.update("dwell", np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 1, 0]))
    ev.update("dwell", np.array([0.1, 0.9, 0.2, 0.8]), np.array([1, 0, 1, 0]))  # all wrong
    auc = ev.values()
    assert auc[("short", "dwell")] == 0.0 and auc[("long", "dwell")] == 0.5
    ev.update_classes(np.array([True, False, False, False]), np.array([False, True, True, False]))
    means = ev.window_means()
    assert means[("positive", "short")] == 0.25 and means[("vague", "long")] == 0.5
    assert means[("log_loss", "long")] > means[("log_loss", "short")] / 2
    state = ev.state_dict()
    other = Evaluator(window=4, long_window=8)
    other.load_state_dict(state)
    assert other.values() == pytest.approx(auc, nan_ok=True)


def test_run_log_is_strict_json_with_nulls(tmp_path):
    from learner.service.daemon import Daemon
    from learner.service.metrics_log import read_run_log

    path = tmp_path / "metrics.jsonl"
    with path.open("w") as fh:
        Daemon._append(fh, {"kind": "progress", "time": 1.0, "events": 10, "auc": {
            "short/dwell": float("nan"), "long/dwell": 0.6}, "lag": 0})
    record = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert record["auc"]["short/dwell"] is None
    log = read_run_log(path)
    assert np.isnan(log.auc_short_dwell[0]) and log.auc_long_dwell[0] == 0.6
