"""One learner against a job of two ranks, side by side on one broker and one topic.

The topic (4 partitions) is filled once with the shipped KuaiRand log, repeated
``--ranks-repeat`` times with ids suffixed per repeat (so the stream is long enough for
stable rates, and the learner keeps meeting new users and videos), then drained by:

1. one learner: a plain ``dwell learn`` (GMF, IDL+IG, one negative);
2. a job of two ranks under ``torchrun`` (``python -m torch.distributed.run
   --nproc-per-node 2 ... -m learner.cli learn``), the same settings, once for each
   ``--sync-every`` of ``--ranks-sync`` (default 1, 16 and 64 optimiser steps between
   synchronisations).

Every configuration is a process of its own (as users run it), with a fresh consumer
group on the same filled topic, one after another, each with ``--until-end``. Events/s:
the events consumed over the learning time (from the first micro-batch; for a job, the
longest of its ranks' learning times, so the job's rate is that of its slowest rank).
AUC: the prequential run AUC on the genuine events against their dwell labels (for a job,
the ranks' histograms merged: the line ``job of N ranks: ... run AUC dwell X``).

A job of one rank (``--nproc-per-node 1``) is not measured: it is the plain daemon, plus
torchrun's launcher, which the learning time does not see.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from learner.bounds import positive_int
from producers.replay import replay
from stream.admin import create_topic, end_offsets
from stream.broker import free_port

from .kafka import bench_events, local_broker

logger = logging.getLogger(__name__)

SECTION = "bench:ranks"
LEARNER = ("--model", "gmf", "--lr", "0.01", "--train-batch", "64", "--loss", "idl", "--meta",
           "ig", "--num-neg", "1")  # the paper's GMF (the defaults are the wide model's)
FLAGS = ("--until-end", "--metrics-port", "-1", "--checkpoint-dir", "",
         "--batch-timeout-s", "0.2", "--progress-interval-s", "30")
DEFAULT_SYNC = (1, 16, 64)
QUICK_EVENTS = 4_000  # --quick: a smoke test (and the first --ranks-sync only)
RUN_TIMEOUT_S = 1800.0

_LEARNING = re.compile(r"learning time ([0-9.]+) s \(([0-9,.]+) events/s")
_CONSUMED = re.compile(r"^(?:\S+:)?consumed +([0-9,]+)\s*$", re.MULTILINE)
_AUC = re.compile(r"AUC \(window/run\)\s+dwell labels [0-9.na]+/([0-9.na]+)")
# the job's closing line (not its progress lines, "job of N ranks: consumed N | run AUC ...")
_JOB = re.compile(r"job of (\d+) ranks: consumed ([0-9,]+) accepted [0-9,]+ dead-lettered "
                  r"[0-9,]+ \| run AUC dwell ([0-9.na]+)")


@dataclass(frozen=True)
class Result:
    """One configuration's run: events consumed, learning seconds, run AUC (dwell labels)."""

    name: str
    ranks: int
    sync_every: int | None
    events: int
    seconds: float
    auc: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_learner(name: str, output: str) -> Result:
    """A plain ``dwell learn``'s closing summary: consumed, learning time, run AUC."""
    consumed, learning, auc = (_CONSUMED.search(output), _LEARNING.search(output),
                               _AUC.search(output))
    if not (consumed and learning and auc):
        raise ValueError(f"{name}: no closing summary in the learner's output:\n{output[-3000:]}")
    return Result(name, 1, None, int(_number(consumed.group(1))), float(learning.group(1)),
                  float(auc.group(1)))


def parse_job(name: str, sync_every: int, output: str) -> Result:
    """A torchrun job's output: every rank's ``learning time`` line (the longest is the
    job's) and the ``job of N ranks`` line (events of the whole job, its merged run AUC)."""
    seconds = [float(m.group(1)) for m in _LEARNING.finditer(output)]
    jobs = list(_JOB.finditer(output))  # every rank prints it, the same
    job = jobs[-1] if jobs else None
    if job is None or not seconds:
        raise ValueError(f"{name}: no job summary in the job's output:\n{output[-3000:]}")
    ranks = int(job.group(1))
    if len(seconds) < ranks:
        raise ValueError(f"{name}: {len(seconds)} learning times for {ranks} ranks:\n"
                         f"{output[-3000:]}")
    return Result(name, ranks, sync_every, int(_number(job.group(2))), max(seconds),
                  float(job.group(3)))


def _checked(result: Result, total: int, output: str) -> Result:
    if result.events != total:
        raise RuntimeError(f"{result.name} consumed {result.events:,} of {total:,} records:\n"
                           f"{output[-3000:]}")
    logger.info("%s: %s events in %.1f s, %s events/s, run AUC %.4f", result.name,
                f"{result.events:,}", result.seconds, f"{result.rate:,.0f}", result.auc)
    return result


def _run(name: str, command: list[str]) -> str:
    logger.info("%s: %s", name, " ".join(command))
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", timeout=RUN_TIMEOUT_S,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{proc.stdout[-3000:]}")
    logger.info("%s: done in %.1f s (wall, process start included)", name,
                time.perf_counter() - started)
    return proc.stdout


def learn_args(bootstrap: str, topic: str, group: str, client: str) -> list[str]:
    return ["-m", "learner.cli", "learn", "--bootstrap", bootstrap, "--topic", topic,
            "--group", group, "--client", client, *FLAGS, *LEARNER]


def one_learner(bootstrap: str, topic: str, client: str, total: int) -> Result:
    """A plain ``dwell learn`` drains ``topic`` (``total`` records) in a fresh group."""
    name = "1 learner"
    group = f"{topic}-learner-{time.time_ns()}"
    output = _run(name, [sys.executable, *learn_args(bootstrap, topic, group, client)])
    return _checked(parse_learner(name, output), total, output)


def job(bootstrap: str, topic: str, client: str, total: int, ranks: int,
        sync_every: int) -> Result:
    """``torchrun`` runs a job of ``ranks`` learners on ``topic`` in a fresh group."""
    name = f"{ranks} ranks, sync every {sync_every}"
    group = f"{topic}-ranks{ranks}-sync{sync_every}-{time.time_ns()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-port", str(free_port()), "--max-restarts", "0",
               *learn_args(bootstrap, topic, group, client),
               "--sync-every", str(sync_every)]
    output = _run(name, command)
    return _checked(parse_job(name, sync_every, output), total, output)


def _fill_client() -> str:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent"


def ranks_measures(args: argparse.Namespace) -> tuple[list[Result], int]:
    events = bench_events(1 if args.quick else args.ranks_repeat)
    if args.quick:
        events = events[:QUICK_EVENTS]
    sync = args.ranks_sync[:1] if args.quick else args.ranks_sync
    results: list[Result] = []
    with local_broker(args.ranks_bootstrap) as bootstrap:
        topic = f"bench-ranks-{time.time_ns()}"
        create_topic(bootstrap, topic, partitions=4)
        sent = replay(events, bootstrap=bootstrap, topic=topic, progress=not args.quick,
                      client=args.ranks_fill_client or _fill_client())
        total = sum(end_offsets(bootstrap, topic).values())
        if total != sent.events_sent:
            raise RuntimeError(f"the topic holds {total:,} records, {sent.events_sent:,} sent")
        results.append(one_learner(bootstrap, topic, args.ranks_client, total))
        for k in sync:
            results.append(job(bootstrap, topic, args.ranks_client, total, 2, k))
    return results, total


def format_markdown(results: list[Result], n: int, stream: str, machine: str,
                    command: str) -> str:
    """The section: one row per configuration, rates and AUCs beside the one learner's."""
    base = next(r for r in results if r.ranks == 1)
    lines = [
        "## Ranks: one learner against a job of two ranks",
        "",
        f"`{command}` on {machine}; single-node Apache Kafka 4.1.1 on loopback, one topic "
        f"of {n:,} records ({stream}), 4 partitions, filled once; each "
        "configuration drains it with a fresh consumer group, one after another, as its own "
        "process(es) (`dwell learn`, or `torchrun --nproc-per-node 2` running `dwell learn`): "
        "GMF, IDL+IG, one negative per event, batches of 1,024, one torch thread per process, "
        "no checkpoints. Events/s over the learning time from the first micro-batch (a "
        "job's: its slowest rank's); run AUC: prequential, genuine events against their "
        "dwell labels (a job's: its ranks' merged).",
        "",
        "**This machine cannot show scaling.** With 2 cores, the two ranks compete with each "
        "other for them, and with the Kafka broker (a JVM) and the Kafka client's threads "
        "in every process. The ratios below mix what the second "
        "process gains from the second core with what the synchronisations, the lockstep "
        "rounds and that contention cost; they are not what a second machine would bring.",
        "",
        "| configuration | events/s | x 1 learner | run AUC | AUC - 1 learner |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = r.rate / base.rate if base.rate else float("nan")
        lines.append(f"| {r.name} | {r.rate:,.0f} | {ratio:.2f} | {r.auc:.4f} | "
                     f"{r.auc - base.auc:+.4f} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks-repeat", type=positive_int(), default=5,
                   help="ranks: the KuaiRand log this many times in the topic (default 5)")
    p.add_argument("--ranks-sync", type=positive_int(many=True), default=DEFAULT_SYNC,
                   help="ranks: --sync-every values of the 2-rank jobs (default 1,16,64; "
                        "--quick: the first only)")
    p.add_argument("--ranks-client", default="kafka-python",
                   help="ranks: the learners' Kafka client (default kafka-python, dwell "
                        "learn's)")
    p.add_argument("--ranks-fill-client", default=None,
                   help="ranks: the client that fills the topic (default confluent if "
                        "installed, else kafka-python)")
    p.add_argument("--ranks-bootstrap", help="ranks: use this broker (default: start one)")


def run(args: argparse.Namespace, machine: str) -> str:
    results, n = ranks_measures(args)
    command = f"dwell bench --suites ranks --ranks-client {args.ranks_client}"
    if args.quick:
        command += " --quick"
        stream = f"the first {n:,} events of the shipped KuaiRand log, in event-time order"
    else:
        command += (f" --ranks-repeat {args.ranks_repeat} --ranks-sync "
                    f"{','.join(map(str, args.ranks_sync))}")
        stream = (f"the shipped KuaiRand log {args.ranks_repeat} times, ids distinct per "
                  "repeat" if args.ranks_repeat > 1 else "the shipped KuaiRand log")
    return format_markdown(results, n, stream, machine, command)
