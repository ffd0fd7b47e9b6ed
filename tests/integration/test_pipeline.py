"""End to end on the real broker: replay -> topic -> learner -> DLQ, offsets and /metrics."""

from __future__ import annotations

import random
import subprocess
import sys

import orjson
from kafka import KafkaProducer

from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import committed_offsets, end_offsets
from tests.integration.helpers import dlq_reasons, learn_until_end, read_topic

KUAIRAND = "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"


def metric(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_whole_kuairand_log_adds_up(kafka_bootstrap, topic, kafka_client):
    result = read_log(KUAIRAND)
    result.events = order_by_time(result.events)
    stats = replay(result, bootstrap=kafka_bootstrap, topic=topic, progress=False,
                   client=kafka_client)
    assert stats.rows_read == stats.events_sent == 41_828 and stats.failed == 0
    # both clients partition by key alike (murmur2): a user's events stay in one partition
    assert end_offsets(kafka_bootstrap, topic) == {0: 10088, 1: 10467, 2: 10597, 3: 10676}

    daemon, totals, samples = learn_until_end(kafka_bootstrap, topic, client=kafka_client)

    # sent = accepted + dead-lettered, exactly; accepted = positive + negative + vague
    assert totals["consumed"] == stats.events_sent
    assert totals["accepted"] + totals["dead_lettered"] == stats.events_sent
    assert sum(totals["labelled"].values()) == totals["accepted"]
    assert totals["invalid"] == {"out_of_range": 7_738}  # the rows with duration_ms = 0
    assert min(totals["labelled"].values()) > 0

    # the DLQ holds one record per invalid event, with its reason and source position
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq")
    assert len(dead) == totals["dead_lettered"]
    assert dlq_reasons(dead) == {"out_of_range": 7_738}
    positions = {(dict(r.headers)["dwell.source.partition"], dict(r.headers)["dwell.source.offset"])
                 for r in dead}
    assert len(positions) == len(dead)
    assert all(orjson.loads(r.value)["duration_ms"] == 0 for r in dead)

    # committed offsets equal the end offsets
    assert committed_offsets(kafka_bootstrap, f"{topic}-learner", topic) == end_offsets(
        kafka_bootstrap, topic
    )

    # /metrics says the same
    assert metric(samples, "dwell_events_consumed_total") == totals["consumed"]
    for label, count in totals["labelled"].items():
        assert metric(samples, "dwell_events_labelled_total", label=label) == count
    assert metric(samples, "dwell_events_invalid_total", reason="out_of_range") == 7_738
    assert metric(samples, "dwell_train_steps_total") == totals["train_steps"] > 0
    for window in ("short", "run"):
        for target in ("dwell", "explicit"):
            assert 0.5 < metric(samples, "dwell_auc", window=window, target=target) <= 1.0
    assert metric(samples, "dwell_batch_duration_seconds_count") > 0
    assert all(metric(samples, "dwell_consumer_lag", partition=str(p)) == 0 for p in range(4))


def _garbage(rng: random.Random, valid: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return valid[: rng.randrange(1, len(valid) - 1)]  # truncated JSON
    event = orjson.loads(valid)
    if kind == 2:
        event[rng.choice(["user_id", "video_id"])] = rng.choice([[1], 1.5, None, True, {}])
    elif kind == 3:
        event[rng.choice(["play_ms", "duration_ms", "ts_ms"])] = rng.choice(["7", 2.5, None, []])
    elif kind == 4:
        del event[rng.choice(["user_id", "video_id", "play_ms", "duration_ms", "ts_ms"])]
    else:
        event["context"] = {"pad": "x" * 70_000}  # over the 64 KiB limit
    return orjson.dumps(event)


def test_garbage_mixed_into_a_valid_stream(kafka_bootstrap, topic, kafka_client):
    rng = random.Random(7)
    events = [e for e in read_log("data/kuairec_sample/big_matrix_1000.csv").events]
    valid = [orjson.dumps(e) for e in events]
    garbage = [_garbage(rng, rng.choice(valid)) for _ in range(500)]
    stream = [(v, False) for v in valid] + [(g, True) for g in garbage]
    rng.shuffle(stream)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all",
                             max_request_size=1 << 20)
    for value, _bad in stream:
        producer.send(topic, value=value, key=b"k%d" % rng.randrange(8))
    producer.flush()
    producer.close()

    _daemon, totals, _samples = learn_until_end(kafka_bootstrap, topic, client=kafka_client)

    assert totals["consumed"] == len(stream)
    assert totals["accepted"] == len(valid)  # every valid record trained
    assert totals["dead_lettered"] == len(garbage)
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq")
    assert sorted(r.value for r in dead) == sorted(garbage)  # every garbage record, raw bytes
    assert sum(dlq_reasons(dead).values()) == len(garbage)
    assert set(dlq_reasons(dead)) <= {"not_json", "not_object", "missing_field", "wrong_type",
                                      "out_of_range", "too_large", "id_too_long"}


def test_demo_command_runs_to_completion_and_adds_up(kafka_client):
    proc = subprocess.run(
        [sys.executable, "-m", "learner.cli", "demo", "--metrics-port", "0",
         "--progress-interval-s", "5", "--client", kafka_client],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    numbers = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in {"sent", "consumed", "accepted", "dead-lettered"}:
            numbers[parts[0]] = int(parts[1].replace(",", ""))
    assert numbers["sent"] == numbers["consumed"] == 41_828
    assert numbers["accepted"] + numbers["dead-lettered"] == numbers["sent"]
    assert "totals add up: yes" in out
    # it ends with a running server's answer: the top 5 of the most active user, by the model
    head, *items = out[out.index("top 5 for user"):].strip().splitlines()
    assert " from the model topic " in head
    assert "ranked by model, among the 500 most popular videos" in head
    scores = [float(line.rsplit("score", 1)[1]) for line in items]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)


def test_inverse_learning_in_the_daemon(kafka_bootstrap, topic, kafka_client):
    result = read_log("data/kuairec_sample/big_matrix_1000.csv")
    stats = replay(result, bootstrap=kafka_bootstrap, topic=topic, progress=False,
                   client=kafka_client)
    assert stats.events_sent == 1000

    daemon, totals, samples = learn_until_end(
        kafka_bootstrap, topic, model="neumf", loss="idl", meta="ig", num_neg=2, batch_size=256,
        kafka_options="client_id=dwell-options-test,request_timeout_ms=31000",
        client=kafka_client,
    )
    consumer, producer = daemon.consumer.config, daemon.dlq.producer_config
    if kafka_client == "kafka-python":
        assert consumer["client_id"] == "dwell-options-test"
        assert producer["request_timeout_ms"] == 31000
    else:  # the same options in librdkafka's names
        assert consumer["client.id"] == producer["client.id"] == "dwell-options-test"
        assert consumer["socket.timeout.ms"] == producer["request.timeout.ms"] == 31000

    assert totals["accepted"] == 1000
    branches = {b: metric(samples, "dwell_ig_branch_total", branch=b)
                for b in ("original", "forward", "inverse", "none")}
    assert sum(branches.values()) == totals["train_steps"] > 0
    assert branches["forward"] + branches["inverse"] + branches["original"] > 0
    assert metric(samples, "dwell_vague_sampled_total") > 1000
    assert 0.0 <= metric(samples, "dwell_vague_positive_share") <= 1.0
