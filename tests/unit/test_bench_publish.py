"""dwell bench --suites publish: its section and its event-to-servable arithmetic."""

from __future__ import annotations

import numpy as np

from learner import bench
from learner.bench.publish import Drain, format_markdown, servable_delays


def test_publish_is_a_suite_with_its_options():
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--suites", "publish", "--publish-intervals", "2,1"])
    assert "publish" in bench.SUITES and args.suites == ("publish",)
    assert args.publish_intervals == (2.0, 1.0)
    assert args.publish_clients == ("kafka-python", "confluent")


def test_section_compares_each_client_with_its_own_learner_without_publishing():
    drains = [Drain(0.0, "kafka-python", 1000, 1.0, 0), Drain(1.0, "kafka-python", 900, 1.0, 5),
              Drain(0.0, "confluent", 2000, 1.0, 0), Drain(1.0, "confluent", 1900, 1.0, 6)]
    fresh = {"events": 10.0, "p50": 0.9, "p99": 6.0, "max": 7.0, "never": 0.0, "versions": 3.0}
    text = format_markdown(drains, fresh, 450.0, 1.0, "a machine", "dwell bench", 10,
                           "kafka-python")
    assert "| kafka-python | publishing every 1 s | 900 | 5 | 0.90x |" in text
    assert "| confluent | publishing every 1 s | 1,900 | 6 | 0.95x |" in text
    assert "p99 6.00 s" in text and "NOT met" in text


def test_an_event_is_servable_once_a_version_covers_its_offset():
    versions = [{"at": 5.0, "offsets": {"1": 3}}, {"at": 6.0, "offsets": {"0": 1, "1": 3}}]
    delays = servable_delays(1, np.array([0, 2, 3]), np.array([4000, 4500, 4500]), versions)
    assert delays[:2].tolist() == [1.0, 0.5] and np.isinf(delays[2])
    assert servable_delays(0, np.array([0]), np.array([5500]), versions).tolist() == [0.5]
