"""Where a record's time goes: each part of the learner's path alone, and two of them at once.

For each client, on one topic of the shipped KuaiRand log (``--budget-repeat`` times, ids
distinct per repeat, 4 partitions):

1. **fetch**: the learner's own consumer (:func:`stream.clients.make_consumer`, partitions
   assigned explicitly) drains the topic into micro-batches of 1,024;
2. **decode**: :func:`stream.event.decode_batch` on those micro-batches;
3. **dead letters**: the invalid records (18% of this log) through the learner's
   :class:`stream.dlq.DeadLetterQueue` (acks=all), flushed (every acknowledgement awaited)
   once a second, as the daemon does before each commit (after one warm-up letter: a new
   producer's first flush waits for its metadata);
4. **train**: :class:`learner.core.trainer.OnlineLearner` (GMF, IDL+IG, one sampled item per
   event) scores then trains on the decoded micro-batches;
5. **fetch beside train**: a thread fetches again (a fresh consumer) while the main thread
   trains again (a fresh learner); its wall time against fetch + train one after the other
   says whether a prefetch thread would pay on this machine (1.0x: no gain).

Per-record figures divide each part's wall time by all the records, valid or not, so that
they add up to the learner's cost per record.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

from learner.bounds import csv, positive_int
from learner.bridge import to_events
from learner.core.settings import PAPER_SETTINGS
from learner.core.trainer import OnlineLearner
from learner.service.config import Config
from stream.admin import create_topic
from stream.clients import ConsumerSettings, KafkaConnection, make_consumer
from stream.dlq import DeadLetterQueue
from stream.event import EventBatch, Reason, decode_batch

from .kafka import CLIENTS, bench_events, local_broker

SECTION = "bench:budget"
LEARNER = {**PAPER_SETTINGS, "loss": "idl", "meta": "ig", "num_neg": 1}  # the paper's GMF
BATCH = 1024
COMMIT_INTERVAL_S = Config().commit_interval_s


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fetch(client: str, bootstrap: str, topic: str, total: int) -> tuple[list[list], float]:
    """Every record of ``topic`` in micro-batches; seconds from the first non-empty batch."""
    consumer = make_consumer(
        KafkaConnection(bootstrap, client),
        ConsumerSettings(topic, f"{topic}-budget-{time.time_ns()}", max_records=BATCH,
                         max_wait_s=0.05, partitions=tuple(range(4))))
    batches: list[list] = []
    seen, started = 0, None
    try:
        while seen < total:
            records = consumer.poll_batch()
            if records and started is None:
                started = time.perf_counter()
            if records:
                batches.append(records)
                seen += len(records)
    finally:
        consumer.close()
    return batches, time.perf_counter() - (started or time.perf_counter())


def dead_letters(client: str, bootstrap: str, topic: str, batches: list[list],
                 decoded: list[EventBatch]) -> float:
    dlq_topic = f"{topic}.budget-dlq-{client}"
    create_topic(bootstrap, dlq_topic, partitions=1)
    dlq = DeadLetterQueue(bootstrap, dlq_topic, client=client)
    # a new producer's first flush waits for its metadata and producer id (~0.5 s here): a
    # start-up cost, which the learner pays once, not a cost a dead letter
    dlq.send(batches[0][0], Reason.NOT_JSON, "warm-up")
    dlq.flush()

    def send_all() -> None:
        flushed = time.monotonic()
        for records, batch in zip(batches, decoded, strict=True):
            for rejected in batch.rejected:
                dlq.send(records[rejected.index], rejected.reason, rejected.detail)
            if time.monotonic() - flushed >= COMMIT_INTERVAL_S:
                dlq.flush()
                flushed = time.monotonic()
        dlq.flush()

    try:
        return _timed(send_all)
    finally:
        dlq.close()


def train(decoded: list[EventBatch]) -> None:
    learner = OnlineLearner(Config(**LEARNER).learner_settings())
    for batch in decoded:
        learner.learn_many(to_events(batch))


def budget(client: str, bootstrap: str, topic: str, total: int) -> tuple[dict[str, float], int]:
    """Seconds per part (see the module's docstring) for ``client``, and the invalid records."""
    batches, fetch_s = fetch(client, bootstrap, topic, total)
    decoded: list[EventBatch] = []
    decode_s = _timed(lambda: decoded.extend(
        decode_batch([r.value for r in records]) for records in batches))
    dead_s = dead_letters(client, bootstrap, topic, batches, decoded)
    train(decoded[:2])  # warm-up: the first learner's start-up is not a per-record cost
    train_s = _timed(lambda: train(decoded))
    thread = threading.Thread(target=fetch, args=(client, bootstrap, topic, total))
    started = time.perf_counter()
    thread.start()
    train(decoded)
    thread.join()
    together_s = time.perf_counter() - started
    invalid = sum(len(batch.rejected) for batch in decoded)
    return {"fetch": fetch_s, "decode": decode_s, "dead letters": dead_s, "train": train_s,
            "fetch beside train": together_s}, invalid


def format_markdown(results: dict[str, dict[str, float]], n: int, invalid: int,
                    machine: str, command: str) -> str:
    lines = [
        "## Budget: where a record's time goes",
        "",
        f"`{command}` on {machine}; single-node Apache Kafka 4.1.1 on loopback, a topic of "
        f"{n:,} records ({invalid:,} of them invalid: dead letters), 4 partitions. Each part "
        "of the learner's path alone, in micro-batches of 1,024 (GMF, IDL+IG, one sampled "
        "item per event); microseconds per record over all the records.",
        "",
        "| client | fetch | decode | dead letters | train | sum | fetch beside train "
        "(x fetch + train one after the other) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for client, parts in results.items():
        per = {k: v / n * 1e6 for k, v in parts.items()}
        summed = per["fetch"] + per["decode"] + per["dead letters"] + per["train"]
        serial = parts["fetch"] + parts["train"]
        ratio = serial / parts["fetch beside train"]
        lines.append(
            f"| {client} | {per['fetch']:,.1f} us | {per['decode']:,.1f} us | "
            f"{per['dead letters']:,.1f} us | {per['train']:,.1f} us | {summed:,.1f} us | "
            f"{parts['fetch beside train']:,.1f} s against {serial:,.1f} s "
            f"({ratio:.2f}x) |")
    lines += [
        "",
        "A ratio near 1.0x in the last column means a thread fetching ahead of the "
        "training gains nothing here: with two cores, the broker on them too and the "
        "interpreter lock, there is no idle core to overlap on.",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-repeat", type=positive_int(), default=2,
                   help="budget suite: the KuaiRand log this many times in its topic")
    p.add_argument("--budget-clients", type=csv(str), default=CLIENTS,
                   help="budget suite: Kafka clients (default kafka-python,confluent)")


def run(args: argparse.Namespace, machine: str) -> str:
    from producers.replay import replay

    repeat = 1 if args.quick else args.budget_repeat
    events = bench_events(repeat)
    if args.quick:
        events = events[:5_000]
    results: dict[str, dict[str, float]] = {}
    with local_broker(args.kafka_bootstrap) as bootstrap:
        topic = f"bench-budget-{time.time_ns()}"
        create_topic(bootstrap, topic, partitions=4)
        sent = replay(events, bootstrap=bootstrap, topic=topic, progress=True,
                      client=args.budget_clients[-1]).events_sent
        invalid = 0
        for client in args.budget_clients:
            results[client], invalid = budget(client, bootstrap, topic, sent)
    command = (f"dwell bench --suites budget --budget-clients {','.join(args.budget_clients)}"
               + (" --quick" if args.quick else f" --budget-repeat {repeat}"))
    return format_markdown(results, sent, invalid, machine, command)
