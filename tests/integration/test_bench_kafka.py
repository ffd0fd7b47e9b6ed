"""The Kafka benchmark suite runs against the session's real broker (tiny sizes)."""

from __future__ import annotations

import argparse
import re
import time

import pytest

from learner.bench import kafka
from producers.replay import replay
from stream.admin import create_topic
from stream.errors import ConfigError
from tests.integration.helpers import read_topic


def test_kafka_suite_measures_every_row(kafka_bootstrap, kafka_client):
    args = argparse.Namespace(quick=True, clients=(kafka_client,), kafka_repeat=1,
                              kafka_rounds=3, kafka_bootstrap=kafka_bootstrap, device="cpu",
                              kafka_set=(("train_batch", "128"),))
    measures, n, n_valid = kafka.kafka_measures(args)
    kinds = [m.what for m in measures]
    assert kinds.count("consume ceiling") == 1 and kinds.count("latency") == 1
    assert kafka.TARGET in kinds and "replay" in kinds
    assert f"{kafka.TARGET}, valid events only" in kinds
    for m in measures:
        assert m.events > 0 and m.seconds > 0, m
    ceiling = next(m for m in measures if m.what == "consume ceiling")
    clean = next(m for m in measures if m.what == "consume ceiling, valid events only")
    invalid = sum(1 for e in kafka.bench_events(1) if e["duration_ms"] <= 0)
    assert ceiling.events == n and clean.events == n_valid == n - invalid > 0
    section = kafka.format_markdown(measures, n, "test machine", "cmd", n_valid)
    assert "p99" in section and "| consume ceiling |" in section
    assert f"a second topic of its {n_valid:,} valid records" in section


def test_the_target_setup_and_its_ceiling_are_taken_in_turns(kafka_bootstrap, kafka_client):
    events = kafka.bench_events(1)[:3000]
    topic = f"bench-paired-{kafka_client}-{time.time_ns()}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    replay(events, bootstrap=kafka_bootstrap, topic=topic, progress=False, client=kafka_client)
    ceiling, learner = kafka.paired(kafka_client, kafka_bootstrap, topic, len(events), 3,
                                    "cpu", {"train_batch": "128"})
    assert (ceiling.what, learner.what) == ("consume ceiling", kafka.TARGET)
    assert ceiling.events == learner.events == len(events)
    shares = learner.extra.removeprefix("rounds: ").split(", ")
    assert len(shares) == 3 and all(re.fullmatch(r"\d+%", s) for s in shares), shares


def test_kafka_set_settings_are_checked_before_the_learner_starts(kafka_bootstrap):
    with pytest.raises(ConfigError, match="unknown settings: no_such"):
        kafka.end_to_end("kafka-python", kafka_bootstrap, "t", "s", {}, extra={"no_such": "1"})
    with pytest.raises(ConfigError, match=r"train_batch\): cannot read 'many'"):
        kafka.end_to_end("kafka-python", kafka_bootstrap, "t", "s", {},
                         extra={"train_batch": "many"})
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        kafka._setting("train_batch")


def test_budget_suite_times_every_part(kafka_bootstrap, kafka_client, topic):
    from learner.bench import budget
    from producers.replay import replay

    events = kafka.bench_events(1)[:3_000]
    sent = replay(events, bootstrap=kafka_bootstrap, topic=topic, progress=False,
                  client=kafka_client).events_sent
    parts, invalid = budget.budget(kafka_client, kafka_bootstrap, topic, sent)
    assert sent == 3_000
    assert invalid == sum(1 for e in events if e["duration_ms"] <= 0) > 0
    assert set(parts) == {"fetch", "decode", "dead letters", "train", "fetch beside train"}
    assert all(seconds > 0 for seconds in parts.values()), parts
    letters = read_topic(kafka_bootstrap, f"{topic}.budget-dlq-{kafka_client}")
    warm_up = [r for r in letters if dict(r.headers)["dwell.detail"] == b"warm-up"]
    assert len(warm_up) == 1 and len(letters) == invalid + 1  # the untimed first letter
    section = budget.format_markdown({kafka_client: parts}, sent, invalid, "test machine", "cmd")
    assert f"| {kafka_client} |" in section and "x fetch + train" in section
