"""Fault injection against the real broker: SIGKILL loops, exact resume, a full disk."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from learner.service.checkpoint import Checkpointer
from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import committed_offsets, create_topic, end_offsets
from tests.integration.helpers import learn_until_end, read_topic

KUAIRAND = "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"
INVALID_ROWS = 7_738  # duration_ms = 0


def _fill(bootstrap: str, topic: str, client: str) -> int:
    result = read_log(KUAIRAND)
    result.events = order_by_time(result.events)
    return replay(result, bootstrap=bootstrap, topic=topic, progress=False,
                  client=client).events_sent


def _learner(bootstrap, topic, group, ckpt, audit, client, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "learner.cli", "learn", "--bootstrap", bootstrap,
         "--client", client, "--topic", topic, "--group", group, "--checkpoint-dir", str(ckpt),
         "--audit-log", str(audit), "--metrics-port", "-1", "--batch-timeout-s", "0.2",
         "--progress-interval-s", "60", "--session-timeout-ms", "2000", *extra],
        stdout=open(f"{audit}.out", "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def _audit(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL
            pass
    return records


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_ten_times_loses_nothing(kafka_bootstrap, topic, tmp_path, kafka_client):
    sent = _fill(kafka_bootstrap, topic, kafka_client)
    ckpt, audit, group = tmp_path / "ckpt", tmp_path / "audit.jsonl", f"{topic}-g"
    audit.touch()
    rng = random.Random(11)
    kills = 0
    for _ in range(10):
        before = len(_audit(audit))
        proc = _learner(kafka_bootstrap, topic, group, ckpt, audit, kafka_client,
                        "--batch-size", "256", "--checkpoint-every", "1024")
        wanted = before + rng.randint(2, 8)  # start record + a few batches, then SIGKILL
        # killed once it has started (its start record; under load a start takes a while),
        # then after a few batches
        assert _wait_for(lambda: len(_audit(audit)) > before, timeout=300)  # noqa: B023
        _wait_for(lambda: len(_audit(audit)) >= wanted, timeout=40)  # noqa: B023
        time.sleep(rng.uniform(0, 0.3))
        _kill(proc)
        kills += 1
    daemon, totals, _ = learn_until_end(kafka_bootstrap, topic, group=group,
                                        checkpoint_dir=str(ckpt), audit_log=str(audit),
                                        batch_size=256, checkpoint_every=1024,
                                        session_timeout_ms=2000, client=kafka_client)
    ends = end_offsets(kafka_bootstrap, topic)
    assert kills == 10 and sum(ends.values()) == sent

    # split the audit into runs; check each run resumes where a checkpoint left off and
    # trains contiguously from there
    runs, trained, checkpointed = [], {p: [] for p in ends}, {p: 0 for p in ends}
    for record in _audit(audit):
        if record["kind"] == "start":
            runs.append({"resume": None, "spans": {p: [] for p in ends}})
        elif record["kind"] == "resume":
            runs[-1]["resume"] = {int(p): o for p, o in record["offsets"].items()}
        elif record["kind"] == "batch":
            for p, (first, last) in record["offsets"].items():
                runs[-1]["spans"][int(p)].append((first, last))
        elif record["kind"] == "checkpoint":
            for p, o in record["offsets"].items():
                checkpointed[int(p)] = max(checkpointed[int(p)], o)
            runs[-1]["checkpoint"] = dict(checkpointed)
    assert len(runs) == 11
    twice = 0
    previous_checkpoint = {p: 0 for p in ends}
    for run in runs:
        resume = run["resume"] or {}
        for p, spans in run["spans"].items():
            position = resume.get(p, previous_checkpoint[p])
            assert position >= previous_checkpoint[p]  # never behind a durable checkpoint
            for first, last in spans:
                assert first == position, (p, first, position)  # contiguous from the resume
                position = last + 1
            trained[p].extend(spans)
        previous_checkpoint = run.get("checkpoint", previous_checkpoint)
    for p, end in ends.items():
        counts = torch.zeros(end, dtype=torch.int64)
        for first, last in trained[p]:
            counts[first : last + 1] += 1
        assert bool((counts >= 1).all()), f"partition {p}: an offset was never trained"
        twice += int((counts > 1).sum())
    # the final state has seen everything; offsets committed; dead letters all there
    assert committed_offsets(kafka_bootstrap, group, topic) == ends
    final = Checkpointer(ckpt).load_latest()
    assert {int(p): o for p, o in final["offsets"].items()} == ends
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq")
    sources = {(dict(r.headers)["dwell.source.partition"], dict(r.headers)["dwell.source.offset"])
               for r in dead}
    assert len(sources) == INVALID_ROWS  # each invalid record dead-lettered (maybe twice)
    print(f"kills 10, events {sent}, trained twice {twice}, dead letters {len(dead)}")


def test_killed_and_resumed_run_ends_with_the_same_model(kafka_bootstrap, tmp_path,
                                                         kafka_client):
    name = f"test-resume-{time.time_ns()}"
    create_topic(kafka_bootstrap, name, partitions=1)
    _fill(kafka_bootstrap, name, kafka_client)
    # IDL+IG in batches of 1,024 records (~1,700 pairs with the sampled ones) trains in the
    # background (trainer.BACKGROUND_MIN_PAIRS): the resumed model must still be the same
    common = {"batch_size": 1024, "checkpoint_every": 3072, "dim": 16, "client": kafka_client,
              "loss": "idl", "meta": "ig", "num_neg": 1}

    learn_until_end(kafka_bootstrap, name, group="whole", checkpoint_dir=str(tmp_path / "a"),
                    audit_log=str(tmp_path / "a.jsonl"), **common)

    ckpt, audit = tmp_path / "b", tmp_path / "b.jsonl"
    proc = _learner(kafka_bootstrap, name, "killed", ckpt, audit, kafka_client,
                    "--batch-size", "1024", "--checkpoint-every", "3072", "--dim", "16",
                    "--loss", "idl", "--meta", "ig", "--num-neg", "1",
                    "--until-end")
    assert _wait_for(lambda: ckpt.is_dir() and any(ckpt.glob("ckpt-*.pt")), timeout=60)
    _kill(proc)
    interrupted = [r for r in _audit(audit) if r["kind"] == "batch"]
    assert interrupted and interrupted[-1]["offsets"]["0"][1] < 41_000  # killed mid-way
    learn_until_end(kafka_bootstrap, name, group="killed", checkpoint_dir=str(ckpt),
                    session_timeout_ms=2000, audit_log=str(audit), **common)

    # the same micro-batches after the resume as in the run straight through (a batch is cut
    # by count while the learner is behind the log, whatever the fetch timing)
    def batches(path: Path) -> list[tuple[int, int]]:
        return [tuple(r["offsets"]["0"]) for r in _audit(path) if r["kind"] == "batch"]

    resumed_at = next(r["offsets"]["0"] for r in _audit(audit) if r["kind"] == "resume")
    straight = batches(tmp_path / "a.jsonl")
    assert batches(audit)[-len([b for b in straight if b[0] >= resumed_at]):] == [
        b for b in straight if b[0] >= resumed_at]
    whole = Checkpointer(tmp_path / "a").load_latest()["learner"]["model"]
    resumed = Checkpointer(ckpt).load_latest()["learner"]["model"]
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.allclose(whole[key], resumed[key], atol=1e-6), key


def test_unwritable_checkpoint_folder_stops_commits_until_it_recovers(kafka_bootstrap, topic,
                                                                      tmp_path, kafka_client):
    import threading

    from learner.service.config import Config
    from learner.service.daemon import Daemon

    group, folder = f"{topic}-disk", tmp_path / "ckpt"
    daemon = Daemon(Config(bootstrap=kafka_bootstrap, topic=topic, group=group,
                           checkpoint_dir=str(folder), checkpoint_every=1024,
                           checkpoint_interval_s=0.2, batch_timeout_s=0.2,
                           client=kafka_client))
    sample = daemon.metrics.registry.get_sample_value
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        half = read_log(KUAIRAND)
        half.events = order_by_time(half.events)[:20_000]
        replay(half, bootstrap=kafka_bootstrap, topic=topic, progress=False,
               client=kafka_client)
        # wait for the first half to be checkpointed and committed: from then on nothing is
        # checkpointed or committed until new events come (reading the offsets earlier raced
        # with the daemon's next checkpoint and commit)
        first_half = end_offsets(kafka_bootstrap, topic)
        assert _wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic) == first_half, timeout=60)
        assert sample("dwell_checkpoint_healthy") == 1
        committed_before = first_half

        moved = tmp_path / "ckpt-away"
        folder.rename(moved)
        folder.write_text("the disk is gone")  # every checkpoint write now fails
        rest = read_log(KUAIRAND)
        rest.events = order_by_time(rest.events)[20_000:]
        replay(rest, bootstrap=kafka_bootstrap, topic=topic, progress=False,
               client=kafka_client)
        assert _wait_for(lambda: (sample("dwell_checkpoint_failures_total") or 0) >= 2, 60)
        assert sample("dwell_checkpoint_healthy") == 0
        time.sleep(1.0)
        assert committed_offsets(kafka_bootstrap, group, topic) == committed_before

        folder.unlink()
        moved.rename(folder)  # the disk is back
        ends = end_offsets(kafka_bootstrap, topic)
        daemon.finish_at(ends)
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert sample("dwell_checkpoint_healthy") == 1
    finally:
        daemon.stop()
        thread.join(timeout=120)
    assert committed_offsets(kafka_bootstrap, group, topic) == ends
    assert sample("dwell_events_consumed_total") == 41_828  # nothing lost, nothing repeated


def test_broker_restart_in_the_middle_of_a_replay(tmp_path, kafka_client):
    # With confluent, the broker's controlled shutdown can leave librdkafka's consumer without
    # any broker for good (librdkafka#5301): a synchronous commit sent then never returned,
    # and the learner hung (1 run in 4). stream/clients/confluent.py gives up such a commit
    # and lets a new handle take over.
    import os
    import threading

    from learner.service.config import Config
    from learner.service.daemon import Daemon
    from producers.pacing import Pacer
    from stream.broker import LocalBroker

    broker = LocalBroker.on_free_ports(tmp_path / "kafka")
    bootstrap = broker.start(timeout=90, owner_pid=os.getpid())
    try:
        create_topic(bootstrap, "restart", partitions=4)
        audit = tmp_path / "audit.jsonl"
        daemon = Daemon(Config(bootstrap=bootstrap, topic="restart", group="restart-g",
                               checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2048,
                               audit_log=str(audit), batch_timeout_s=0.2,
                               client=kafka_client))
        learner = threading.Thread(target=daemon.run)
        learner.start()
        # the restart comes in the middle of a run, not of the learner's start (under load,
        # starting took longer than the broker's 2.5 s)
        assert _wait_for(lambda: daemon.consumer is not None and daemon.consumer.assignment,
                         timeout=300)
        result = read_log(KUAIRAND)
        result.events = order_by_time(result.events)
        stats = {}
        producer = threading.Thread(target=lambda: stats.update(s=replay(
            result, bootstrap=bootstrap, topic="restart", pacer=Pacer(rate=6000),
            progress=False, client=kafka_client)))
        producer.start()
        time.sleep(2.5)  # a third of the replay is out
        broker.stop()
        time.sleep(2.0)
        broker.start(timeout=90, owner_pid=os.getpid())  # same ports, same data folder
        producer.join(timeout=300)
        assert not producer.is_alive()
        sent = stats["s"]
        assert sent.events_sent == 41_828 and sent.failed == 0
        ends = end_offsets(bootstrap, "restart")
        daemon.finish_at(ends)
        learner.join(timeout=300)
        assert not learner.is_alive()
    finally:
        daemon.stop()
        broker.stop()
    # acks=all + idempotence: no loss, no duplicate; but events sent again on a fresh producer
    # after timing out (the cluster away past the delivery timeout) are at-least-once
    assert 41_828 <= sum(ends.values()) <= 41_828 + sent.resent
    print(f"broker restart: {sent.resent} events sent again, {sum(ends.values())} in the topic")
    trained = {p: set() for p in ends}
    for record in _audit(audit):
        if record["kind"] == "batch":
            for p, (first, last) in record["offsets"].items():
                trained[int(p)].update(range(first, last + 1))
    assert all(trained[p] == set(range(end)) for p, end in ends.items())


def test_rebalance_between_two_learners(kafka_bootstrap, topic, tmp_path, kafka_client):
    import threading

    from learner.service.config import Config
    from learner.service.daemon import Daemon
    from producers.pacing import Pacer

    def learner(name: str) -> tuple[Daemon, threading.Thread, Path]:
        audit = tmp_path / f"{name}.jsonl"
        daemon = Daemon(Config(bootstrap=kafka_bootstrap, topic=topic, group=f"{topic}-g",
                               checkpoint_dir=str(tmp_path / name), checkpoint_every=1024,
                               audit_log=str(audit), batch_timeout_s=0.2,
                               session_timeout_ms=6000, metrics_port=-1,
                               client=kafka_client))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        return daemon, thread, audit

    # Two halves of the log: the second joins while the first half streams in; the first is
    # stopped as the second half starts, so every partition has events left for the second to
    # take over whatever the machine's speed (when the first had finished its partitions
    # before it was stopped, the second had nothing to take over: found under load).
    whole = read_log(KUAIRAND)
    events = order_by_time(whole.events)
    halves = [dataclasses.replace(whole, events=events[:20_000]),
              dataclasses.replace(whole, events=events[20_000:])]
    stats: dict[int, object] = {}

    def stream(half: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: stats.update({half: replay(
            halves[half], bootstrap=kafka_bootstrap, topic=topic, pacer=Pacer(rate=5000),
            progress=False, client=kafka_client)}))
        thread.start()
        return thread

    first, first_thread, first_audit = learner("first")
    producer = stream(0)
    second = None
    try:
        time.sleep(2.0)
        second, second_thread, second_audit = learner("second")  # joins: partitions split
        assert _wait_for(lambda: len(second.consumer.assignment if second.consumer else ()) > 0,
                         timeout=60)
        producer.join(timeout=300)
        producer = stream(1)
        first.stop()  # leaves the group cleanly: checkpoint, commit, close
        first_thread.join(timeout=120)
        assert not first_thread.is_alive()
        producer.join(timeout=300)
        ends = end_offsets(kafka_bootstrap, topic)
        second.finish_at(ends)
        second_thread.join(timeout=300)
        assert not second_thread.is_alive()
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert stats[0].events_sent + stats[1].events_sent == 41_828
    trained = {p: set() for p in ends}
    owners = {"first": set(), "second": set()}
    for name, audit in (("first", first_audit), ("second", second_audit)):
        for record in _audit(audit):
            if record["kind"] == "batch":
                for p, (lo, hi) in record["offsets"].items():
                    trained[int(p)].update(range(lo, hi + 1))
                    owners[name].add(int(p))
    assert all(trained[p] == set(range(end)) for p, end in ends.items())  # nothing lost
    assert owners["first"] and owners["second"]  # both learned
    assert committed_offsets(kafka_bootstrap, f"{topic}-g", topic) == ends
    # the second learner's checkpoint now holds every partition, at the end
    final = Checkpointer(tmp_path / "second").load_latest()
    assert {int(p): o for p, o in final["offsets"].items()} == ends


def test_unwritable_dead_letter_topic_holds_commits_until_it_recovers(kafka_bootstrap, topic,
                                                                     kafka_client):
    """The broker rejects every dead letter (records over the topic's size limit); the daemon
    keeps running, commits nothing past them, and writes them all once the limit is raised."""
    import threading

    from kafka.admin import ConfigResource, ConfigResourceType

    from learner.service.config import Config
    from learner.service.daemon import Daemon
    from stream.admin import admin_client

    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, dlq, partitions=1, config={"max.message.bytes": 16})
    group = f"{topic}-dlq"
    daemon = Daemon(Config(bootstrap=kafka_bootstrap, topic=topic, group=group,
                           batch_timeout_s=0.2, commit_interval_s=0.2, client=kafka_client))
    sample = daemon.metrics.registry.get_sample_value
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        sent = _fill(kafka_bootstrap, topic, kafka_client)
        assert _wait_for(lambda: (sample("dwell_dead_letter_failures_total") or 0) >= 2, 60)
        assert thread.is_alive()
        ends = end_offsets(kafka_bootstrap, topic)
        committed = committed_offsets(kafka_bootstrap, group, topic)
        assert sum(committed.values()) < sum(ends.values())  # held back by the dead letters

        with admin_client(kafka_bootstrap) as admin:  # the operator fixes the topic
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, dlq,
                                                configs={"max.message.bytes": "1048588"})])
        daemon.finish_at(ends)
        thread.join(timeout=120)
        assert not thread.is_alive()
    finally:
        daemon.stop()
        thread.join(timeout=120)
    assert committed_offsets(kafka_bootstrap, group, topic) == ends
    totals = daemon.metrics.totals()
    assert totals["consumed"] == sent == totals["accepted"] + totals["dead_lettered"]
    dead = read_topic(kafka_bootstrap, dlq)
    sources = {(dict(r.headers)["dwell.source.partition"], dict(r.headers)["dwell.source.offset"])
               for r in dead}
    assert len(sources) == INVALID_ROWS == totals["dead_lettered"]
