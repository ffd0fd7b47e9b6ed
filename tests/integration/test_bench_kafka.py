"""The Kafka benchmark suite runs against the session's real broker (tiny sizes)."""

from __future__ import annotations

import argparse

from learner.bench import kafka


def test_kafka_suite_measures_every_row(kafka_bootstrap, kafka_client):
    args = argparse.Namespace(quick=True, clients=(kafka_client,), kafka_repeat=1,
                              kafka_bootstrap=kafka_bootstrap)
    measures, n = kafka.kafka_measures(args)
    kinds = [m.what for m in measures]
    assert kinds.count("consume ceiling") == 1 and kinds.count("latency") == 1
    assert "GMF IDL+IG" in kinds and "replay" in kinds
    for m in measures:
        assert m.events > 0 and m.seconds > 0, m
    ceiling = next(m for m in measures if m.what == "consume ceiling")
    assert ceiling.events == n
    section = kafka.format_markdown(measures, n, "test machine", "cmd")
    assert "p99" in section and "| consume ceiling |" in section
