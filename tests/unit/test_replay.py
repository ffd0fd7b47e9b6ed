"""``producers.replay.replay`` on a scripted producer: what failed with a retriable error is
sent again, in order, on a fresh producer; per-key order holds; every event is counted once."""

from __future__ import annotations

import threading
from collections import Counter

import orjson
import pytest

from producers import replay as module
from producers.readers import ReadResult
from producers.replay import WOULD_REORDER, replay, resendable
from stream.errors import BrokerError, ClientError, ClientTimeoutError


def timed_out() -> ClientError:
    # as stream.clients.confluent reports it: librdkafka says not retriable
    return ClientError("delivery failed: Local: Message timed out", "_MSG_TIMED_OUT", False)


def too_large() -> ClientError:
    return ClientError("delivery failed: Broker: Message size too large", "MSG_SIZE_TOO_LARGE",
                       False)


class Cluster:
    """The topic (what was acknowledged, in order) and the producers made, one per round.

    ``outcome(round, event)`` is None for an acknowledgement or the error of the delivery;
    deliveries are reported at flush, on another thread (as kafka-python's IO thread does).
    """

    def __init__(self, outcome=lambda round_, event: None, unreachable_rounds=(),
                 stuck=lambda round_, event: False):
        self.outcome = outcome
        self.stuck = stuck  # records a producer never reports, not even on close
        self.unreachable_rounds = set(unreachable_rounds)
        self.topic: list[dict] = []
        self.producers: list[FakeProducer] = []
        self.attempts = 0

    def factory(self, client, config):
        round_ = self.attempts
        self.attempts += 1
        if round_ in self.unreachable_rounds:
            raise ClientTimeoutError("cannot reach Kafka at b:1: _TRANSPORT", "_TRANSPORT")
        producer = FakeProducer(self, round_)
        self.producers.append(producer)
        return producer


class FakeProducer:
    def __init__(self, cluster: Cluster, round_: int) -> None:
        self.cluster, self.round = cluster, round_
        self.queued: list = []
        self.held: list = []
        self.produced: list[dict] = []
        self.closed = False

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        assert not self.closed
        event = orjson.loads(value)
        assert key == str(event["user_id"]).encode()
        self.produced.append(event)
        if self.cluster.stuck(self.round, event):
            self.held.append((event, on_delivery))
        else:
            self.queued.append((event, on_delivery))

    def flush(self, timeout=None):
        assert timeout is not None  # never waits for ever: a producer may be stuck

        def deliver():
            for event, report in self.queued:
                error = self.cluster.outcome(self.round, event)
                if error is None:
                    self.cluster.topic.append(event)
                report(error)

        thread = threading.Thread(target=deliver)
        thread.start()
        thread.join()
        self.queued = []
        return len(self.held)

    def close(self, timeout=None):
        self.flush(0)
        self.closed = True


def events(n: int, users: int = 3) -> list[dict]:
    return [{"user_id": i % users, "video_id": i, "play_ms": 1, "duration_ms": 2, "ts_ms": i}
            for i in range(n)]


def run(log, cluster: Cluster, **kwargs):
    kwargs.setdefault("resend_backoff_s", 0)
    return replay(log, bootstrap="b:1", topic="t", progress=False,
                  producer_factory=cluster.factory, **kwargs)


def adds_up(stats) -> bool:
    return stats.rows_read == stats.events_sent + stats.failed + sum(stats.rejected.values())


def per_key(evs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for e in evs:
        out.setdefault(e["user_id"], []).append(e["video_id"])
    return out


def test_what_may_be_sent_again():
    assert resendable(timed_out())
    assert resendable(ClientError("x", "KafkaTimeoutError", True))  # kafka-python's expiry
    assert resendable(ClientError("x", "NotLeaderForPartitionError", True))
    assert not resendable(too_large())
    assert not resendable(ClientError("x", "MessageSizeTooLargeError", False))
    assert not resendable(TypeError("Type is not JSON serializable: set"))


def test_a_timed_out_stretch_is_sent_again_in_order_and_acknowledged():
    log = events(30)
    # the cluster is away for events 10..29 of the first round: every later event of those
    # keys fails too, as with a broker away for longer than the delivery timeout
    cluster = Cluster(lambda round_, e: timed_out() if round_ == 0 and e["video_id"] >= 10
                      else None)
    stats = run(log, cluster)
    assert (stats.rows_read, stats.events_sent, stats.failed, stats.resent) == (30, 30, 0, 20)
    assert stats.errors == Counter()
    assert len(cluster.producers) == 2 and all(p.closed for p in cluster.producers)
    assert [e["video_id"] for e in cluster.producers[1].produced] == list(range(10, 30))
    assert per_key(cluster.topic) == per_key(log)  # each user's events in their order
    assert adds_up(stats)


def test_a_non_retriable_failure_is_not_sent_again():
    log = events(6)
    log[4]["context"] = {"bad": {1, 2}}  # orjson cannot serialise a set
    cluster = Cluster(lambda round_, e: too_large() if e["video_id"] == 1 else None)
    stats = run(log, cluster)
    assert (stats.events_sent, stats.failed, stats.resent) == (4, 2, 0)
    assert stats.errors == Counter({"MSG_SIZE_TOO_LARGE": 1, "TypeError": 1})
    assert len(cluster.producers) == 1  # nothing to send again: no second producer
    assert adds_up(stats)


def test_an_event_whose_key_moved_on_is_not_sent_again():
    log = events(6)  # users 0 1 2 0 1 2
    # user 0's first event times out but its second (video 3) is acknowledged: sending the
    # first again would put it after the second; user 1's first times out and its second too
    cluster = Cluster(lambda round_, e: timed_out()
                      if round_ == 0 and e["video_id"] in (0, 1, 4) else None)
    stats = run(log, cluster)
    assert (stats.events_sent, stats.failed, stats.resent) == (5, 1, 2)
    assert stats.errors == Counter({WOULD_REORDER: 1})
    assert [e["video_id"] for e in cluster.producers[1].produced] == [1, 4]
    assert per_key(cluster.topic) == {0: [3], 1: [1, 4], 2: [2, 5]}
    assert adds_up(stats)


def test_a_resend_that_would_reorder_in_a_later_round_stays_failed():
    log = events(4, users=1)  # one user: 0 1 2 3
    # round 0: 1, 2 and 3 time out; round 1: 1 times out again, 2 and 3 go through; round 2
    # would put 1 after 3
    def outcome(round_, e):
        if round_ == 0 and e["video_id"] >= 1 or round_ == 1 and e["video_id"] == 1:
            return timed_out()
        return None

    cluster = Cluster(outcome)
    stats = run(log, cluster)
    assert (stats.events_sent, stats.failed, stats.resent) == (3, 1, 3)
    assert stats.errors == Counter({WOULD_REORDER: 1})
    assert len(cluster.producers) == 2
    assert per_key(cluster.topic) == {0: [0, 2, 3]}
    assert adds_up(stats)


def test_rounds_exhausted_leave_the_events_failed():
    log = events(10)
    cluster = Cluster(lambda round_, e: timed_out() if e["video_id"] >= 7 else None)
    stats = run(log, cluster, resend_rounds=2)
    assert (stats.events_sent, stats.failed, stats.resent) == (7, 3, 3)
    assert stats.errors == Counter({"_MSG_TIMED_OUT": 3})
    assert len(cluster.producers) == 3
    assert [len(p.produced) for p in cluster.producers] == [10, 3, 3]
    assert adds_up(stats)


def test_no_resend_when_turned_off():
    log = events(10)
    cluster = Cluster(lambda round_, e: timed_out() if e["video_id"] >= 7 else None)
    stats = run(log, cluster, resend_rounds=0)
    assert (stats.events_sent, stats.failed, stats.resent) == (7, 3, 0)
    assert stats.errors == Counter({"_MSG_TIMED_OUT": 3})
    assert len(cluster.producers) == 1


def test_a_cluster_still_away_for_a_fresh_producer_costs_one_round():
    log = events(8)
    cluster = Cluster(lambda round_, e: timed_out() if round_ == 0 and e["video_id"] >= 5
                      else None, unreachable_rounds=[1])
    stats = run(log, cluster)
    assert (stats.events_sent, stats.failed, stats.resent) == (8, 0, 3)
    assert cluster.attempts == 3 and len(cluster.producers) == 2
    assert adds_up(stats)


def test_counts_add_up_with_rejected_rows_and_mixed_outcomes():
    log = events(40, users=5)
    result = ReadResult(events=log, rows_read=43, rejected=Counter({"bad_duration": 3}))

    def outcome(round_, e):
        v = e["video_id"]
        if v % 13 == 0:
            return too_large()  # never sent again
        if round_ < 2 and v >= 20:
            return timed_out()  # two rounds away
        return None

    cluster = Cluster(outcome)
    stats = run(result, cluster)
    too_big = sum(1 for e in log if e["video_id"] % 13 == 0)  # 0, 13, 26, 39
    assert stats.rows_read == 43 and sum(stats.rejected.values()) == 3
    assert stats.failed == too_big and stats.errors == Counter({"MSG_SIZE_TOO_LARGE": too_big})
    assert stats.events_sent == 40 - too_big
    assert stats.resent == sum(1 for e in log if e["video_id"] >= 20 and e["video_id"] % 13)
    assert adds_up(stats)
    assert per_key(cluster.topic) == per_key([e for e in log if e["video_id"] % 13])


def test_make_producer_is_the_default_factory(monkeypatch):
    cluster = Cluster(lambda round_, e: timed_out() if round_ == 0 else None)
    monkeypatch.setattr(module, "make_producer", cluster.factory)
    stats = replay(events(3), bootstrap="b:1", topic="t", progress=False, resend_backoff_s=0)
    assert (stats.events_sent, stats.failed, stats.resent) == (3, 0, 3)
    assert len(cluster.producers) == 2


def test_a_stalled_broker_still_ends_the_replay_with_broker_error():
    class Stalled(FakeProducer):
        def produce(self, *args, **kwargs):
            raise ClientTimeoutError("queue full for 60 s")

    cluster = Cluster()
    with pytest.raises(BrokerError, match="stopped answering"):
        replay(events(2), bootstrap="b:1", topic="t", progress=False,
               producer_factory=lambda client, config: Stalled(cluster, 0))


def test_a_stuck_producer_is_given_up_and_its_records_sent_again(monkeypatch):
    # kafka-python 3.0.12's idempotent producer, once it expired a batch while the broker was
    # away, kept the next batches for ever: no report, not even on close
    monkeypatch.setattr(module, "_STUCK_MARGIN_S", 0.01)
    log = events(12)
    late = []

    class LateCluster(Cluster):
        def factory(self, client, config):
            for producer in self.producers:  # the stuck producer wakes up: too late
                late.extend(producer.held)
                for _event, report in producer.held:
                    report(None)
                producer.held = []
            return super().factory(client, config)

    cluster = LateCluster(stuck=lambda round_, e: round_ == 0 and e["video_id"] >= 8)
    stats = run(log, cluster, producer_config={"delivery_timeout_ms": 10})
    assert len(late) == 4  # their late reports were ignored: each event counted once
    assert (stats.events_sent, stats.failed, stats.resent) == (12, 0, 4)
    assert [e["video_id"] for e in cluster.producers[1].produced] == [8, 9, 10, 11]
    assert adds_up(stats)


def test_a_producer_stuck_through_every_round_leaves_its_records_failed(monkeypatch):
    monkeypatch.setattr(module, "_STUCK_MARGIN_S", 0.01)
    cluster = Cluster(stuck=lambda round_, e: e["video_id"] >= 5)
    stats = run(events(7), cluster, producer_config={"delivery_timeout_ms": 10},
                resend_rounds=1)
    assert (stats.events_sent, stats.failed, stats.resent) == (5, 2, 2)
    assert stats.errors == Counter({"NoDeliveryReport": 2})
    assert adds_up(stats)
