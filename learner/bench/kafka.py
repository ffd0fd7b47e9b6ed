"""Kafka benchmarks, side by side in one run on one broker: ceilings, end to end, latency, replay.

1. **Consume ceiling** of each client: a bare consumer (assigned every partition, no group,
   no decoding, no work) draining the benchmark topic. This is the most the learner can do.
   Each is set up as the learner's consumer fetches (confluent: ``FETCH_DEFAULTS``).
2. **End to end**: the learner daemon (its real code path: poll, decode, dead-letter, score,
   train, commit) draining the same topic with each client, for several learner setups;
   events/s from its first micro-batch, and the ratio to that client's ceiling. The ceiling
   and the defaults (the targets' setup, :data:`TARGET`) are taken in turns
   ``--kafka-rounds`` times, the median round reported with every round's share beside it.
   With kafka-python the learner's clients run in child processes (``--client-process
   auto``); the setup "the clients in the learner's process" measures it without them.
   The log's zero-duration rows (18%) are dead letters, each a produce on the dead-letter
   topic; so the defaults and both ceilings are measured again on a second topic of the
   valid events only (rows "valid events only"): the learner's own cost on a clean stream.
3. **Latency**: a ``dwell replay`` process paced at half the learner's measured rate (the
   defaults, with the same ``--kafka-set``) into a fresh topic while that learner consumes
   it; per record, the time from its Kafka timestamp (set by the producer at send) to the
   end of the model update that includes it: p50, p99.
4. **Replay**: producer events/s with each client (acks=all, idempotent).
5. **Device and settings**: the learner runs on ``--device``; ``--kafka-set KEY=VALUE,...``
   applies learner settings over every setup's own (e.g. ``train_batch=1024`` on a GPU).

The topic holds the shipped KuaiRand log repeated ``--kafka-repeat`` times (ids suffixed per
repeat, so the learner keeps meeting new users and videos), 4 partitions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from learner.bounds import csv, positive_int
from learner.core.settings import PAPER_SETTINGS
from learner.evaluation.datasets import KUAIRAND
from learner.service.config import Config
from learner.service.daemon import Daemon
from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import create_topic, end_offsets
from stream.broker import LocalBroker
from stream.event import decode_each

logger = logging.getLogger(__name__)

SECTION = "bench:kafka"
CLIENTS = ("kafka-python", "confluent")
_PAPER = {**PAPER_SETTINGS}  # the paper's GMF (the defaults are the wide model's)
SETUPS = {  # learner setups measured end to end: name -> Config overrides
    "defaults (wide, BCE)": {},
    "GMF IDL+IG": {**_PAPER, "loss": "idl", "meta": "ig", "num_neg": 1},
    "GMF IDL+IG, max 4 steps per batch, lr 0.03": {
        **_PAPER, "loss": "idl", "meta": "ig", "num_neg": 1, "max_steps": 4, "lr": 0.03},
    "GMF IDL+IG, the clients in the learner's process": {
        **_PAPER, "loss": "idl", "meta": "ig", "num_neg": 1, "client_process": "off"},
    "NeuMF IDL+IG": {**_PAPER, "model": "neumf", "loss": "idl", "meta": "ig", "num_neg": 1},
    "GMF BCE": {**_PAPER, "loss": "bce"},
}
#: The setup of issue 20's targets (the default model), measured in turns with the ceiling.
TARGET = "defaults (wide, BCE)"


@dataclass(frozen=True)
class Measure:
    what: str
    client: str
    events: int
    seconds: float
    extra: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def bench_events(repeat: int) -> list[dict]:
    """The KuaiRand log ``repeat`` times, ids made distinct per repeat, in one time order."""
    base = order_by_time(read_log(KUAIRAND).events)
    span = base[-1]["ts_ms"] - base[0]["ts_ms"] + 1
    out = []
    for r in range(repeat):
        for e in base:
            out.append({**e, "user_id": f"{e['user_id']}-{r}", "video_id": f"{e['video_id']}-{r}",
                        "ts_ms": e["ts_ms"] + r * span})
    return out


@contextlib.contextmanager
def local_broker(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap`` when given, else a single-node broker of the benchmark's own (stopped at
    the end, and by a watchdog should this process die)."""
    if bootstrap:
        yield bootstrap
        return
    with tempfile.TemporaryDirectory(prefix="dwell-bench-") as folder:
        broker = LocalBroker.on_free_ports(Path(folder) / "kafka", heap="1g")
        try:
            yield broker.start(timeout=120, owner_pid=os.getpid())
        finally:
            broker.stop()


def consume_ceiling(client: str, bootstrap: str, topic: str, total: int) -> Measure:
    """A bare consumer of ``client`` drains ``topic``: no group, no decoding, no work."""
    parts = sorted(end_offsets(bootstrap, topic))
    seen, start = 0, None
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 max_poll_records=4096, fetch_max_bytes=64 << 20)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        try:
            while seen < total:
                polled = consumer.poll(timeout_ms=1000)
                if start is None and polled:
                    start = time.perf_counter()
                seen += sum(len(v) for v in polled.values())
        finally:
            consumer.close()
    else:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from stream.clients.confluent import FETCH_DEFAULTS

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dwell-bench-bare",
                             "enable.auto.commit": False, **FETCH_DEFAULTS})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        try:
            while seen < total:  # asks for no more than is left: consume() waits for its count
                messages = consumer.consume(min(4096, total - seen), timeout=1.0)
                if start is None and messages:
                    start = time.perf_counter()
                seen += sum(1 for m in messages if m.error() is None)
        finally:
            consumer.close()
    return Measure("consume ceiling", client, seen, time.perf_counter() - (start or 0))


def _learner_config(bootstrap: str, topic: str, group: str, client: str, device: str,
                    extra: dict[str, str] | None, **settings) -> Config:
    """A benchmark learner's settings: no ``/metrics``, rare progress lines, no ``DWELL_*``
    environment, its model published to a topic of its own (``<group>.model``: the setups'
    models differ, and a model topic holds one); ``settings``, then ``extra`` (text, e.g.
    from ``--kafka-set``) over them."""
    flags = {"bootstrap": bootstrap, "topic": topic, "group": group, "client": client,
             "metrics_port": -1, "progress_interval_s": 30.0, "device": device,
             "model_topic": f"{group}.model", **settings, **(extra or {})}
    return Config.load(flags=flags, env={})


def end_to_end(client: str, bootstrap: str, topic: str, setup: str, overrides: dict,
               device: str = "cpu", extra: dict[str, str] | None = None) -> Measure:
    """The learner daemon drains ``topic`` with ``client``; events/s from its first batch.
    ``extra``: settings (as text, e.g. from ``--kafka-set``) over the setup's own."""
    cfg = _learner_config(bootstrap, topic, f"bench-{client}-{time.time_ns()}", client, device,
                          extra, until_end=True, batch_timeout_s=0.2, **overrides)
    totals = Daemon(cfg).run()
    return Measure(setup, client, totals["consumed"], totals["seconds"])


def latency(client: str, bootstrap: str, rate: float, device: str = "cpu",
            extra: dict[str, str] | None = None) -> Measure:
    """A ``dwell replay`` process sends the KuaiRand log at ``rate`` events/s while the
    learner consumes; p50/p99 of the time from a record's Kafka timestamp to the end of the
    model update that includes it. The producer runs in its own process, as in production:
    in the learner's process it would take the learner's interpreter lock."""
    import subprocess
    import sys

    topic = f"bench-latency-{client}-{time.time_ns()}"
    create_topic(bootstrap, topic, partitions=4)
    cfg = _learner_config(bootstrap, topic, f"{topic}-g", client, device, extra,
                          batch_timeout_s=0.05, **SETUPS[TARGET])
    daemon = Daemon(cfg)
    delays: list[np.ndarray] = []
    process = daemon.process

    def timed(records):
        process(records)
        daemon.settle()  # to the end of the update: the batch may train in the background
        sent = np.fromiter((r.timestamp for r in records), np.float64, len(records))
        delays.append(time.time() - sent / 1000.0)

    daemon.process = timed
    thread = threading.Thread(target=daemon.run, name="bench-learner")
    thread.start()
    try:
        time.sleep(3.0)  # let the learner join its group first
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "learner.cli", "replay", str(KUAIRAND), "--bootstrap",
             bootstrap, "--topic", topic, "--rate", str(rate), "--client", client],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        ends = end_offsets(bootstrap, topic)
        daemon.finish_at(ends)
        thread.join(timeout=600)
    finally:
        daemon.stop()
        thread.join()
    values = np.concatenate(delays) if delays else np.array([np.nan])
    p50, p99 = np.percentile(values, [50, 99])
    return Measure("latency", client, sum(ends.values()), seconds,
                   extra=f"rate {rate:,.0f}/s: p50 {p50 * 1e3:,.0f} ms, p99 {p99 * 1e3:,.0f} ms")


def replay_rate(client: str, bootstrap: str, events: list[dict]) -> Measure:
    topic = f"bench-replay-{client}-{time.time_ns()}"
    create_topic(bootstrap, topic, partitions=4)
    stats = replay(events, bootstrap=bootstrap, topic=topic, progress=False, client=client)
    return Measure("replay", client, stats.events_sent, stats.seconds)


VALID = ", valid events only"  # the measures on the second topic: no dead letters


def valid_events(events: list[dict]) -> list[dict]:
    """The events the learner accepts (the KuaiRand log's zero-duration rows are not)."""
    batch = decode_each([orjson.dumps(e) for e in events])
    return [events[i] for i in batch.index.tolist()]


def paired(client: str, bootstrap: str, topic: str, total: int, rounds: int, device: str,
           extra: dict[str, str]) -> tuple[Measure, Measure]:
    """``client``'s consume ceiling and the learner's :data:`TARGET` setup on ``topic``, in turns
    ``rounds`` times (the order flipped each round): the median round of each, the learner's
    with every round's share of the ceiling beside it. One pair alone can be 20 points off on
    a machine this noisy."""
    ceilings: list[Measure] = []
    learners: list[Measure] = []

    def ceiling() -> None:
        ceilings.append(consume_ceiling(client, bootstrap, topic, total))

    def learner() -> None:
        learners.append(end_to_end(client, bootstrap, topic, TARGET, SETUPS[TARGET], device,
                                   extra))

    for r in range(rounds):
        for measure in ((ceiling, learner) if r % 2 == 0 else (learner, ceiling)):
            measure()
    shares = ", ".join(f"{m.rate / c.rate:.0%}" for c, m in zip(ceilings, learners, strict=True))
    ceiling, learner = (sorted(ms, key=lambda m: m.rate)[len(ms) // 2]
                        for ms in (ceilings, learners))
    return ceiling, dataclasses.replace(learner, extra=f"rounds: {shares}" if rounds > 1 else "")


def kafka_measures(args: argparse.Namespace) -> tuple[list[Measure], int, int]:
    """Every measure; the records of the main topic and of the valid-only one."""
    events = bench_events(1 if args.quick else args.kafka_repeat)
    measures: list[Measure] = []
    extra = dict(args.kafka_set)
    with local_broker(args.kafka_bootstrap) as bootstrap:
        topic = f"bench-{time.time_ns()}"
        create_topic(bootstrap, topic, partitions=4)
        measures.append(replay_rate(args.clients[0], bootstrap, events[:50_000]))
        sent = replay(events, bootstrap=bootstrap, topic=topic, progress=True,
                      client=args.clients[-1])
        total = sent.events_sent
        rounds = 1 if args.quick else args.kafka_rounds
        targets = {}  # client -> its ceiling and the TARGET setup, taken in turns
        for client in args.clients:
            measures.append(replay_rate(client, bootstrap, events[:50_000]))
            targets[client] = paired(client, bootstrap, topic, total, rounds, args.device, extra)
            measures.append(targets[client][0])
        for setup, overrides in (list(SETUPS.items())[:1] if args.quick else SETUPS.items()):
            for client in args.clients:
                measures.append(targets[client][1] if setup == TARGET else end_to_end(
                    client, bootstrap, topic, setup, overrides, args.device, extra))
        # the same without dead letters: what the learner costs on a clean stream
        valid = valid_events(events)
        clean = f"{topic}-valid"
        create_topic(bootstrap, clean, partitions=4)
        replay(valid, bootstrap=bootstrap, topic=clean, progress=False, client=args.clients[-1])
        for client in args.clients:
            ceiling, learner = paired(client, bootstrap, clean, len(valid), rounds,
                                      args.device, extra)
            measures.append(dataclasses.replace(ceiling, what=ceiling.what + VALID))
            measures.append(dataclasses.replace(learner, what=learner.what + VALID))
        for client in args.clients:
            measures.append(latency(client, bootstrap, rate=targets[client][1].rate / 2,
                                    device=args.device, extra=extra))
    return measures[1:], len(events), len(valid)  # the first replay warmed the broker up


def format_markdown(measures: list[Measure], n: int, machine: str, command: str,
                    n_valid: int | None = None) -> str:
    def stream(m: Measure) -> bool:
        return m.what.endswith(VALID)

    ceilings = {(m.client, stream(m)): m.rate for m in measures
                if m.what.startswith("consume ceiling")}
    second = (f"; then a second topic of its {n_valid:,} valid records (rows marked \"valid "
              "events only\": no dead letters), each share against the ceiling on its own "
              "topic") if n_valid is not None else ""
    lines = [
        "## Kafka: ceilings, end to end, latency, replay",
        "",
        f"`{command}` on {machine}; single-node Apache Kafka 4.1.1 on loopback, a topic of "
        f"{n:,} records (the KuaiRand log, ids distinct per repeat), 4 partitions{second}.",
        "",
        "| measure | client | events | seconds | events/s | of the client's ceiling | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in measures:
        share = ""
        ceiling = ceilings.get((m.client, stream(m)))
        if not m.what.startswith(("consume ceiling", "replay", "latency")) and ceiling:
            share = f"{m.rate / ceiling:.0%}"
        lines.append(f"| {m.what} | {m.client} | {m.events:,} | {m.seconds:.1f} | "
                     f"{m.rate:,.0f} | {share} | {m.extra} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=csv(str), default=CLIENTS,
                   help="Kafka clients to measure (default kafka-python,confluent)")
    p.add_argument("--kafka-repeat", type=positive_int(), default=10,
                   help="the KuaiRand log this many times in the benchmark topic")
    p.add_argument("--kafka-rounds", type=positive_int(), default=3,
                   help="the consume ceilings and the defaults, taken in turns this many times "
                        "(the median round reported)")
    p.add_argument("--kafka-bootstrap", help="use this broker (default: start one)")
    p.add_argument("--kafka-set", type=csv(_setting), default=(), metavar="KEY=VALUE,...",
                   help="learner settings over every end-to-end setup's own, e.g. "
                        "train_batch=1024 for a GPU")


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def run(args: argparse.Namespace, machine: str) -> str:
    measures, n, n_valid = kafka_measures(args)
    command = f"dwell bench --suites kafka --clients {','.join(args.clients)}"
    command += (" --quick" if args.quick
                else f" --kafka-repeat {args.kafka_repeat} --kafka-rounds {args.kafka_rounds}")
    if args.device != "cpu":
        command += f" --device {args.device}"
    if args.kafka_set:
        command += " --kafka-set " + ",".join(f"{k}={v}" for k, v in args.kafka_set)
    return format_markdown(measures, n, machine, command, n_valid)
