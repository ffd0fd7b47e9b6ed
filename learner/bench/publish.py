"""The model synced through Kafka: what publishing costs the learner, and how fresh servers are.

1. **Cost**: the learner daemon (the defaults: the wide model) drains a topic of the
   KuaiRand log repeated ``--publish-repeat`` times, without publishing and publishing every
   ``--publish-intervals`` seconds, in turns ``--publish-rounds`` times (the order turned
   each round); the median round of each, events/s from its first micro-batch, and its
   ratio to the learner that does not publish.
2. **Freshness**: a replay process sends the same events at half the rate of the learner
   that publishes (the first interval) into a fresh topic while that learner consumes it and
   a replica, in a process of its own as a server's would be, tails the model topic. Per
   event, event-to-servable is the time from its Kafka timestamp (set by the producer) to the
   moment the replica's ``current()`` first holds a version covering its offset (the
   completion record names the input offsets each version covers): p50, p99, max, against
   the issue's target (p99 under 5 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from learner.bench.kafka import _learner_config, bench_events, local_broker
from learner.bounds import Flag, Range, csv, positive_int
from learner.service.daemon import Daemon
from producers.replay import replay
from stream.admin import create_topic, end_offsets

logger = logging.getLogger(__name__)

SECTION = "bench:publish"
TARGET_P99_S = 5.0


@dataclass(frozen=True)
class Drain:
    """One learner's run over the benchmark topic."""

    interval: float  # publish_interval_s (0: no publishing)
    client: str
    events: int
    seconds: float
    versions: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def drain(bootstrap: str, topic: str, interval: float, client: str) -> Drain:
    """The learner daemon drains ``topic`` with ``client``, publishing every ``interval`` s
    (0: never)."""
    group = f"bench-publish-{time.time_ns()}"
    cfg = _learner_config(bootstrap, topic, group, client, "cpu", None,
                          until_end=True, batch_timeout_s=0.2, publish_interval_s=interval,
                          model_topic=f"{group}.model")
    daemon = Daemon(cfg)
    totals = daemon.run()
    versions = daemon.publisher.stats.versions if daemon.publisher is not None else 0
    return Drain(interval, client, totals["consumed"], totals["seconds"], versions)


def costs(bootstrap: str, topic: str, clients: list[str], intervals: list[float],
          rounds: int) -> list[Drain]:
    """The median round of each client and interval (0 first: no publishing), taken in
    turns (the order turned each round)."""
    runs: dict[tuple[str, float], list[Drain]] = {
        (c, i): [] for c in clients for i in [0.0, *intervals]}
    for r in range(rounds):
        for client, interval in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            run = drain(bootstrap, topic, interval, client)
            runs[(client, interval)].append(run)
            logger.info("%s, publishing every %g s: %.0f events/s", client, interval, run.rate)
    return [sorted(ms, key=lambda m: m.rate)[len(ms) // 2] for ms in runs.values()]


# -- freshness ----------------------------------------------------------------------------
def _replica_main() -> None:
    """A replica in a process of its own: one JSON line per version it swaps in (version,
    when, the offsets it covers); it ends once a version covers ``ends`` or at the deadline.
    ``python -c 'from learner.bench.publish import _replica_main; _replica_main()'
    BOOTSTRAP MODEL_TOPIC ENDS_JSON SECONDS``."""
    from learner.serving.replica import Replica
    from stream.clients import KafkaConnection

    bootstrap, topic, ends_text, seconds = sys.argv[1:5]
    ends = {int(p): int(o) for p, o in json.loads(ends_text).items()}
    done = threading.Event()

    def seen(model, at: float) -> None:  # noqa: ANN001 - a ServedModel
        offsets = replica.builder.info.get("offsets", {})
        print(json.dumps({"version": model.version, "at": at,
                          "offsets": {str(p): o for p, o in offsets.items()}}), flush=True)
        if ends and all(offsets.get(p, 0) >= o for p, o in ends.items()):
            done.set()

    replica = Replica(KafkaConnection(bootstrap), topic, on_version=seen)
    replica.start()
    done.wait(float(seconds))
    replica.stop()


def _replay_main() -> None:
    """The replay in a process of its own, paced: ``EVENTS_FILE BOOTSTRAP TOPIC RATE``."""
    from producers.pacing import Pacer

    path, bootstrap, topic, rate = sys.argv[1:5]
    events = [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]
    replay(events, bootstrap=bootstrap, topic=topic, pacer=Pacer(rate=float(rate)),
           progress=False)


def _child(function: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", f"from learner.bench.publish import {function}; {function}()",
         *args], **kw)


def freshness(bootstrap: str, events: list[dict], rate: float, interval: float,
              client: str) -> dict[str, float]:
    """Event-to-servable seconds at ``rate`` events/s, the learner of ``client`` publishing
    every ``interval`` s."""
    topic = f"bench-fresh-{time.time_ns()}"
    create_topic(bootstrap, topic, partitions=4)
    cfg = _learner_config(bootstrap, topic, f"{topic}-g", client, "cpu", None,
                          batch_timeout_s=0.05, publish_interval_s=interval,
                          model_topic=f"{topic}.model")
    daemon = Daemon(cfg)
    learner = threading.Thread(target=daemon.run, name="bench-learner")
    learner.start()
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as file:
        file.write(b"\n".join(orjson.dumps(e) for e in events))
        file.flush()
        try:
            while daemon.publisher is None and learner.is_alive():  # the model topic exists
                time.sleep(0.1)
            time.sleep(2.0)  # the learner joins its group first
            limit = str(int(len(events) / rate) + 180)  # the replica's own deadline
            replica = _child("_replica_main", bootstrap, f"{topic}.model", "{}", limit,
                             stdout=subprocess.PIPE, text=True)
            producer = _child("_replay_main", file.name, bootstrap, topic, str(rate))
            producer.wait()
            ends = end_offsets(bootstrap, topic)
            daemon.finish_at(ends)
            learner.join(timeout=600)
        finally:
            daemon.stop()
            learner.join()
    versions = []
    assert replica.stdout is not None
    for line in replica.stdout:  # until a version covers the ends, or the replica's deadline
        versions.append(json.loads(line))
        if all(versions[-1]["offsets"].get(str(p), 0) >= o for p, o in ends.items()):
            break
    replica.terminate()
    replica.wait()
    return _event_to_servable(bootstrap, topic, ends, versions)


def servable_delays(partition: int, offsets: np.ndarray, stamps_ms: np.ndarray,
                    versions: list[dict]) -> np.ndarray:
    """Seconds from each event's timestamp to the first version (in the order made current)
    that covers its offset in ``partition``; inf where none does.

    >>> versions = [{"at": 10.0, "offsets": {"0": 2}}, {"at": 11.5, "offsets": {"0": 5}}]
    >>> servable_delays(0, np.array([0, 1, 4, 5]), np.array([9000, 9500, 10000, 10500]),
    ...                 versions).tolist()
    [1.0, 0.5, 1.5, inf]
    """
    covered = np.maximum.accumulate(np.array(
        [v["offsets"].get(str(partition), 0) for v in versions] or [0], np.int64))
    at = np.array([v["at"] for v in versions] or [np.inf])
    first = np.searchsorted(covered, offsets, side="right")
    return np.append(at, np.inf)[first] - stamps_ms / 1000.0


def _event_to_servable(bootstrap: str, topic: str, ends: dict[int, int],
                       versions: list[dict]) -> dict[str, float]:
    """Per event of ``topic``: the first version covering its offset, made current at
    ``at``, less its Kafka timestamp."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    delays = []
    try:
        for partition, end in ends.items():
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            offsets, stamps = [], []
            while consumer.position(tp) < end:
                for records in consumer.poll(timeout_ms=1000).values():
                    offsets += [r.offset for r in records]
                    stamps += [r.timestamp for r in records]
            delays.append(servable_delays(partition, np.array(offsets), np.array(stamps),
                                          versions))
    finally:
        consumer.close()
    values = np.concatenate(delays)
    missing = int(np.isinf(values).sum())
    p50, p99 = np.percentile(values[np.isfinite(values)], [50, 99])
    return {"events": float(values.size), "p50": p50, "p99": p99,
            "max": float(np.max(values[np.isfinite(values)])), "never": float(missing),
            "versions": float(len(versions))}


def format_markdown(drains: list[Drain], fresh: dict[str, float], rate: float,
                    interval: float, machine: str, command: str, events: int,
                    client: str) -> str:
    base = {d.client: d for d in drains if d.interval == 0}
    lines = [
        "## The model synced through Kafka: publishing's cost and freshness",
        "",
        f"`{command}` on {machine}. The learner's defaults (the wide model; kafka-python's "
        f"clients in processes of their own); {events:,} events (the KuaiRand log repeated, "
        "18% dead letters). Events/s from the first micro-batch, the median of the rounds "
        "taken in turns.",
        "",
        "| client | learner | events/s | versions published | against no publishing |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for d in drains:
        what = "no publishing" if d.interval == 0 else f"publishing every {d.interval:g} s"
        lines.append(f"| {d.client} | {what} | {d.rate:,.0f} | {d.versions} | "
                     f"{d.rate / base[d.client].rate:.2f}x |")
    verdict = "met" if fresh["p99"] < TARGET_P99_S else "NOT met"
    lines += [
        "",
        f"Freshness at half the publishing learner's rate ({client}, {rate:,.0f} events/s, "
        f"publishing every {interval:g} s), a replica in a process of its own: the time "
        "from an event's Kafka timestamp to the replica's `current()` holding a version "
        "that covers it, over "
        f"{fresh['events']:,.0f} events and {fresh['versions']:.0f} versions: "
        f"p50 {fresh['p50']:.2f} s, p99 {fresh['p99']:.2f} s, max {fresh['max']:.2f} s "
        f"(target p99 < {TARGET_P99_S:g} s: {verdict}); events no version covered: "
        f"{fresh['never']:.0f}.",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publish-repeat", type=positive_int(), default=10,
                   help="the KuaiRand log this many times in the publishing benchmark's topic")
    p.add_argument("--publish-rounds", type=positive_int(), default=3,
                   help="runs of each publishing interval, taken in turns (median reported)")
    p.add_argument("--publish-clients", type=csv(str), default=("kafka-python", "confluent"),
                   help="Kafka clients of the learners measured (the first's freshness)")
    p.add_argument("--publish-intervals",
                   type=Flag(float, Range(0, 3600.0, low_open=True), many=True), default=(1.0,),
                   help="publishing intervals (s) measured against no publishing; the first "
                        "is the one whose freshness is measured")


def run(args: argparse.Namespace, machine: str) -> str:
    repeat, rounds = (1, 1) if args.quick else (args.publish_repeat, args.publish_rounds)
    intervals = list(args.publish_intervals)
    events = bench_events(repeat)
    with local_broker(getattr(args, "kafka_bootstrap", None)) as bootstrap:
        topic = f"bench-publish-{time.time_ns()}"
        create_topic(bootstrap, topic, partitions=4)
        replay(events, bootstrap=bootstrap, topic=topic, progress=False)
        clients = list(args.publish_clients)
        drains = costs(bootstrap, topic, clients, intervals, rounds)
        rate = drains[1].rate / 2  # the first client's, publishing every intervals[0]
        fresh = freshness(bootstrap, events, rate, intervals[0], clients[0])
    command = "dwell bench --suites publish" + (
        " --quick" if args.quick else f" --publish-repeat {repeat} --publish-rounds {rounds} "
        f"--publish-intervals {','.join(f'{i:g}' for i in intervals)}")
    command += f" --publish-clients {','.join(clients)}"
    return format_markdown(drains, fresh, rate, intervals[0], machine, command, len(events),
                           clients[0])
