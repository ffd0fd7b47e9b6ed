"""A three-node Kafka cluster (KRaft, real JVMs on loopback): replicated topics, and the loss
of one broker in the middle of a replay, with a learner consuming all along."""

from __future__ import annotations

import threading
import time

from kafka.errors import UnknownTopicOrPartitionError

from learner.service.config import Config
from learner.service.daemon import Daemon
from stream.admin import (
    committed_offsets,
    create_topic,
    delete_topic,
    describe_partitions,
    topic_config,
)
from stream.broker import wait_for_brokers
from tests.integration.helpers import (
    KUAIRAND_EVENTS,
    KUAIRAND_INVALID,
    read_topic,
    replay_through_broker_loss,
    trained_offsets,
)

#: The node each client's run kills: a different one per run.
NODE_TO_KILL = {"kafka-python": 2, "confluent": 3}


def _partitions_in_sync(bootstrap: str, topic: str, replicas: int, timeout: float = 30.0):
    """The topic's partitions once each has ``replicas`` in-sync replicas (metadata reaches
    every broker a moment after the topic is created); the last answer at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        try:
            partitions = describe_partitions(bootstrap, topic)
        except UnknownTopicOrPartitionError:  # not known yet to the broker asked
            if expired:
                raise
        else:
            if expired or all(len(p["isr"]) == replicas for p in partitions.values()):
                return partitions
        time.sleep(0.2)


def test_cluster_has_three_brokers_and_topics_keep_three_in_sync_replicas(kafka_cluster,
                                                                          replicated_topic):
    bootstrap = kafka_cluster.bootstrap
    assert bootstrap.count(",") == 2
    wait_for_brokers(bootstrap, [1, 2, 3], timeout=10)
    assert kafka_cluster.status() == {1: True, 2: True, 3: True}

    partitions = _partitions_in_sync(bootstrap, replicated_topic, 3)
    assert sorted(partitions) == [0, 1, 2, 3]
    for p in partitions.values():
        assert p["replicas"] == [1, 2, 3] and p["isr"] == [1, 2, 3]
    assert {p["leader"] for p in partitions.values()} == {1, 2, 3}  # leaders spread out
    assert topic_config(bootstrap, replicated_topic)["min.insync.replicas"] == "2"

    # a topic created without a replication factor (the learner's dead-letter topic, `dwell
    # replay`'s topic) takes the cluster's defaults: 3 replicas, min.insync.replicas 2
    name = f"{replicated_topic}-defaults"
    create_topic(bootstrap, name, partitions=1)
    try:
        assert _partitions_in_sync(bootstrap, name, 3)[0]["replicas"] == [1, 2, 3]
        assert topic_config(bootstrap, name)["min.insync.replicas"] == "2"
    finally:
        delete_topic(bootstrap, name)


def test_broker_loss_in_the_middle_of_a_replay(kafka_cluster, replicated_topic, tmp_path,
                                               kafka_client):
    """SIGKILL one of three brokers while the producer (acks=all) replays the shipped data
    and a learner consumes: both carry on; every event is in the topic once and trained."""
    bootstrap, topic, group = kafka_cluster.bootstrap, replicated_topic, f"{replicated_topic}-g"
    audit = tmp_path / "audit.jsonl"
    daemon = Daemon(Config(bootstrap=bootstrap, topic=topic, group=group,
                           checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2048,
                           audit_log=str(audit), batch_timeout_s=0.2, session_timeout_ms=6000,
                           metrics_port=-1, client=kafka_client))
    learner = threading.Thread(target=daemon.run, name="learner")
    learner.start()
    try:
        loss = replay_through_broker_loss(kafka_cluster, topic, node=NODE_TO_KILL[kafka_client],
                                          client=kafka_client)
        daemon.finish_at(loss.ends)
        learner.join(timeout=240)
        assert not learner.is_alive(), "the learner did not reach the end offsets"
    finally:
        daemon.stop()
        learner.join(timeout=60)

    # the producer: every event acknowledged, none failed; the topic holds each exactly once
    # (acks=all + idempotence; min.insync.replicas=2 with two brokers left)
    assert loss.stats.events_sent == KUAIRAND_EVENTS and loss.stats.failed == 0
    assert 0 < loss.in_topic_at_kill < KUAIRAND_EVENTS
    assert loss.led  # the killed broker led partitions the producer and learner were using
    assert sum(loss.ends.values()) == KUAIRAND_EVENTS

    # the learner: every offset of every partition trained (at least once), offsets committed
    trained = trained_offsets(audit)
    for p, end in loss.ends.items():
        missing = set(range(end)) - set(trained.get(p, ()))
        assert not missing, f"partition {p}: {len(missing)} offsets never trained"
    assert committed_offsets(bootstrap, group, topic) == loss.ends

    # sent = accepted + dead-lettered, counting each offset once (a rebalance may replay some)
    totals = daemon.metrics.totals()
    repeats = sum(n - 1 for counts in trained.values() for n in counts.values())
    assert totals["consumed"] == totals["accepted"] + totals["dead_lettered"]
    assert totals["consumed"] - repeats == loss.stats.events_sent
    dead = read_topic(bootstrap, f"{topic}.dlq")
    sources = {(dict(r.headers)["dwell.source.partition"], dict(r.headers)["dwell.source.offset"])
               for r in dead}
    assert len(sources) == KUAIRAND_INVALID  # every invalid event dead-lettered, none lost
    assert len(_partitions_in_sync(bootstrap, f"{topic}.dlq", 3)[0]["replicas"]) == 3

    # the killed node is back and the cluster whole for the next test
    wait_for_brokers(bootstrap, [1, 2, 3], timeout=30)
    print(f"killed node {loss.killed} (leader of partitions {loss.led}) with "
          f"{loss.in_topic_at_kill} of {KUAIRAND_EVENTS} events in the topic; replay "
          f"{loss.seconds:.1f} s; trained more than once: {repeats}")
