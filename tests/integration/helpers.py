"""Shared steps of the pipeline integration tests: run the learner, read topics and metrics."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from learner.service.config import Config
from learner.service.daemon import Daemon
from learner.service.monitoring import serve_metrics
from producers.pacing import Pacer
from producers.readers import order_by_time, read_log
from producers.replay import ReplayStats, replay
from stream.admin import describe_partitions, end_offsets
from stream.broker import LocalCluster

log = logging.getLogger(__name__)

#: The shipped KuaiRand log: events sent by a replay, and those the learner dead-letters
#: (duration_ms = 0).
KUAIRAND = "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"
KUAIRAND_EVENTS = 41_828
KUAIRAND_INVALID = 7_738


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
        thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
        totals = daemon.run()
        # gc_threshold and switch_interval_s hold only while it runs
        assert (gc.get_threshold(), sys.getswitchinterval()) == (thresholds, interval)
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


def read_audit(path: Path) -> list[dict]:
    """The records of a learner's audit log (``--audit-log``); a line cut by SIGKILL is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def trained_offsets(*audits: Path) -> dict[int, Counter]:
    """How many times each offset of each partition was in a trained batch, over the audit
    logs of one or more learners (ranks): ``{partition: Counter({offset: times})}``."""
    trained: dict[int, Counter] = {}
    for audit in audits:
        for record in read_audit(audit):
            if record["kind"] == "batch":
                for p, (first, last) in record["offsets"].items():
                    trained.setdefault(int(p), Counter()).update(range(first, last + 1))
    return trained


@dataclasses.dataclass
class BrokerLoss:
    """What :func:`replay_through_broker_loss` did."""

    stats: ReplayStats           # the producer's counts: acknowledged, failed
    killed: int                  # the node SIGKILLed
    led: list[int]               # the partitions of the topic it led when it was killed
    in_topic_at_kill: int        # records in the topic when it was killed
    ends: dict[int, int]         # the topic's end offsets after the replay
    seconds: float               # the replay's duration


def replay_through_broker_loss(
    cluster: LocalCluster, topic: str, *, node: int, client: str, rate: float = 6000.0,
    kill_at: float = 0.4, restart: bool = True, timeout: float = 240.0,
    on_killed: Callable[[], None] | None = None,
) -> BrokerLoss:
    """Replay the shipped KuaiRand log into ``topic`` on ``cluster`` (producer acks=all,
    idempotent, ``rate`` events/s, with ``client``) and SIGKILL cluster node ``node`` once
    ``kill_at`` of the events are in the topic; return after the replay has finished.

    Start the learner(s) before calling this and let them finish after it: they consume
    through the loss. With ``restart`` the killed node is started again after the replay,
    while the learners still consume, so that the cluster is whole for the next test (the
    node is restarted even when the replay fails). ``on_killed`` runs right after the kill.
    Raises AssertionError if the replay does not finish within ``timeout`` s.
    """
    result = read_log(KUAIRAND)
    result.events = order_by_time(result.events)
    total = len(result.events)
    outcome: dict[str, object] = {}

    def produce() -> None:
        try:
            outcome["stats"] = replay(result, bootstrap=cluster.bootstrap, topic=topic,
                                      pacer=Pacer(rate=rate), progress=False, client=client)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    started = time.monotonic()
    producer = threading.Thread(target=produce, name="replay-through-broker-loss")
    producer.start()
    killed = False
    try:
        in_topic = 0
        while producer.is_alive() and in_topic < kill_at * total:
            time.sleep(0.1)
            in_topic = sum(end_offsets(cluster.bootstrap, topic).values())
        assert producer.is_alive(), f"the replay ended before the kill ({in_topic} in the topic)"
        led = [p for p, d in describe_partitions(cluster.bootstrap, topic).items()
               if d["leader"] == node]
        cluster.kill(node)
        killed = True
        log.info("node %d, leader of partitions %s, killed with %d of %d events in %s",
                 node, led, in_topic, total, topic)
        if on_killed is not None:
            on_killed()
        producer.join(timeout=timeout)
        assert not producer.is_alive(), f"the replay is still running after {timeout:.0f} s"
        seconds = time.monotonic() - started
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
    finally:
        if restart and killed:
            cluster.start_node(node)
    ends = end_offsets(cluster.bootstrap, topic)
    return BrokerLoss(outcome["stats"], node, led, in_topic, ends, seconds)  # type: ignore[arg-type]
