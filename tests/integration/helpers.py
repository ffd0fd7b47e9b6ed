"""Shared steps of the pipeline integration tests: run the learner, read topics and metrics."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections import Counter

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from learner.config import Config
from learner.daemon import Daemon
from learner.monitoring import serve_metrics


def learn_until_end(bootstrap: str, topic: str, **overrides) -> tuple[Daemon, dict, dict]:
    """Run a learner on ``topic`` until it reaches the end offsets; return it, its totals and
    the samples scraped from its ``/metrics`` endpoint after it finished."""
    cfg = Config(bootstrap=bootstrap, topic=topic, group=f"{topic}-learner", until_end=True,
                 batch_timeout_s=0.2, progress_interval_s=1.0, metrics_port=0)
    cfg = dataclasses.replace(cfg, **overrides)
    registry = CollectorRegistry()
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        daemon = Daemon(cfg, registry)
        totals = daemon.run()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics") as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return daemon, totals, samples


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of ``topic``, from the beginning to the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def dlq_reasons(records) -> Counter:
    """Reason header of each dead letter, counted."""
    return Counter(dict(r.headers)["dwell.reason"].decode() for r in records)
