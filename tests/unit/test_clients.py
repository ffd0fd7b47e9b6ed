"""The Kafka client layer without a broker: names, option translation, factories, the
confluent adapters' own logic on fake librdkafka objects, and the dead-letter queue and the
replay on a fake producer."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections import Counter

import pytest

from learner.service.config import Config, add_config_args, config_from_args
from stream.clients import (
    CLIENTS,
    ConsumerSettings,
    KafkaConnection,
    Message,
    check_client,
    confluent,
    make_consumer,
    make_producer,
)
from stream.clients.confluent import (
    CONSUMER_RENAMED,
    FETCH_DEFAULTS,
    RENAMED,
    librdkafka_config,
)
from stream.errors import BrokerError, ClientError, ClientTimeoutError, ConfigError

try:
    import confluent_kafka as ck
except ImportError:  # the tests of the translation and of the names still run
    ck = None
needs_confluent = pytest.mark.skipif(ck is None, reason="pip install 'dwell[fast]'")

NOBODY = "127.0.0.1:9"  # nothing listens there: connection refused at once
QUIET = {"logger": logging.getLogger("test.librdkafka")}


# -- names -------------------------------------------------------------------------------------
def test_client_names_and_the_config_field(monkeypatch):
    assert CLIENTS == ("kafka-python", "confluent")
    assert Config().client == "kafka-python"
    assert Config(client="confluent").client == "confluent"
    for bad in ("kafka", "Confluent", "", "librdkafka"):
        with pytest.raises(ConfigError, match="unknown Kafka client"):
            check_client(bad)
        with pytest.raises(ConfigError, match="kafka-python or confluent"):
            Config(client=bad)
    with pytest.raises(ConfigError, match="--client must be kafka-python or confluent \\(got 'rdk"):
        Config.load(env={"DWELL_CLIENT": "rdkafka"})
    assert Config.load(env={"DWELL_CLIENT": "confluent"}).client == "confluent"


def test_factories_refuse_an_unknown_client_before_touching_kafka():
    with pytest.raises(ConfigError, match="unknown Kafka client 'kafka'"):
        make_consumer(KafkaConnection(NOBODY, "kafka"), ConsumerSettings("t", "g"))
    with pytest.raises(ConfigError, match="unknown Kafka client 'nope'"):
        make_producer("nope", {"bootstrap_servers": NOBODY})


@pytest.mark.parametrize("command", ["learn", "demo", "replay"])
def test_client_flag_on_the_kafka_commands(command, monkeypatch):
    from learner.cli import build_parser

    monkeypatch.delenv("DWELL_CLIENT", raising=False)
    monkeypatch.delenv("DWELL_CONFIG", raising=False)
    args = build_parser().parse_args([command, "--client", "confluent"])
    assert config_from_args(args).client == "confluent"
    assert config_from_args(build_parser().parse_args([command])).client == "kafka-python"
    with pytest.raises(ConfigError, match="--client must be kafka-python or confluent"):
        config_from_args(build_parser().parse_args([command, "--client", "java"]))


def test_client_flag_help_says_how_to_install_the_fast_client():
    parser = argparse.ArgumentParser()
    add_config_args(parser, ["client"])
    assert "pip install 'dwell[fast]'" in " ".join(parser.format_help().split())


def test_missing_confluent_kafka_is_a_config_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'dwell\[fast\]'"):
        make_producer("confluent", {"bootstrap_servers": NOBODY})
    with pytest.raises(ConfigError, match=r"pip install 'dwell\[fast\]'"):
        make_consumer(KafkaConnection(NOBODY, "confluent"), ConsumerSettings("t", "g"))


# -- option translation --------------------------------------------------------------------
def test_explicit_table_and_the_underscore_rule():
    options = {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem", "ssl_password": "kp",
        "client_id": "me", "request_timeout_ms": 40000, "session_timeout_ms": 6000,
        "max_request_size": 4 << 20, "fetch_max_wait_ms": 100, "linger_ms": 5,
        "enable_idempotence": True, "bootstrap_servers": ["a:1", "b:2"],
    }
    assert librdkafka_config(options) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem",
        "ssl.key.password": "kp", "client.id": "me", "request.timeout.ms": 40000,
        "session.timeout.ms": 6000, "message.max.bytes": 4 << 20, "fetch.wait.max.ms": 100,
        "linger.ms": 5, "enable.idempotence": True, "bootstrap.servers": "a:1,b:2",
    }


def test_consumer_request_timeout_is_the_network_request_timeout():
    assert librdkafka_config({"request_timeout_ms": 31000}, "consumer") == {
        "socket.timeout.ms": 31000}
    assert librdkafka_config({"request_timeout_ms": 31000}, "producer") == {
        "request.timeout.ms": 31000}


def test_values_librdkafka_spells_differently():
    assert librdkafka_config({"ssl_check_hostname": False}) == {
        "ssl.endpoint.identification.algorithm": "none"}
    assert librdkafka_config({"ssl_check_hostname": True}) == {
        "ssl.endpoint.identification.algorithm": "https"}
    assert librdkafka_config({"compression_type": None}) == {"compression.type": "none"}
    assert librdkafka_config({"compression_type": "lz4"}) == {"compression.type": "lz4"}
    with pytest.raises(ConfigError, match="ssl_context"):
        librdkafka_config({"ssl_context": object()})


def test_librdkafka_names_pass_and_kafka_python_only_settings_are_dropped(caplog):
    caplog.set_level(logging.INFO, "stream.clients.confluent")
    got = librdkafka_config({"api_version": (3, 7), "max_poll_records": 500,
                             "queue.buffering.max.ms": 7, "statistics.interval.ms": 0})
    assert got == {"queue.buffering.max.ms": 7, "statistics.interval.ms": 0}
    assert "api_version has no librdkafka counterpart" in caplog.text


@needs_confluent
def test_every_translated_name_is_a_librdkafka_property():
    """librdkafka checks property names and values when a client is made (no connection)."""
    samples = {
        "sasl_plain_username": "u", "sasl_plain_password": "p",
        "sasl_kerberos_service_name": "kafka", "ssl_password": "x", "ssl_ciphers": "HIGH",
        "ssl_check_hostname": False, "max_request_size": 2 << 20, "fetch_max_wait_ms": 100,
        "receive_buffer_bytes": 1 << 16, "send_buffer_bytes": 1 << 16,
        # a few that the rule translates
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
        "client_id": "c", "retry_backoff_ms": 100, "reconnect_backoff_ms": 50,
        "reconnect_backoff_max_ms": 1000, "metadata_max_age_ms": 60000,
        "connections_max_idle_ms": 60000,
    }
    producer_only = {"acks": "all", "retries": 10, "linger_ms": 5, "batch_size": 65536,
                     "compression_type": None, "enable_idempotence": True,
                     "delivery_timeout_ms": 60000, "request_timeout_ms": 30000,
                     "max_in_flight_requests_per_connection": 5}
    consumer_only = {"group_id": "g", "session_timeout_ms": 6000,
                     "heartbeat_interval_ms": 2000, "max_poll_interval_ms": 60000,
                     "auto_offset_reset": "earliest", "enable_auto_commit": False,
                     "fetch_min_bytes": 1, "fetch_max_bytes": 4 << 20,
                     "max_partition_fetch_bytes": 1 << 20, "isolation_level": "read_committed",
                     "check_crcs": True, "request_timeout_ms": 30000}
    assert {k for k in RENAMED if RENAMED[k]} <= set(samples) | {
        "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile"}  # files must exist
    assert set(CONSUMER_RENAMED) <= set(consumer_only)
    base = {"bootstrap.servers": NOBODY, **QUIET}
    producer = ck.Producer({**base, **librdkafka_config({**samples, **producer_only})})
    producer.close(0)
    consumer = ck.Consumer({**base, **librdkafka_config({**samples, **consumer_only},
                                                         "consumer")})
    consumer.close()


@needs_confluent
def test_config_options_reach_librdkafka_through_the_factory():
    options = Config(kafka_options="client_id=x,request_timeout_ms=31000,bootstrap_timeout_ms=300,"
                     "linger.ms=2").client_options()
    with pytest.raises(ClientTimeoutError, match="cannot reach Kafka"):
        make_producer("confluent", {**options, "bootstrap_servers": NOBODY})
    with pytest.raises(ConfigError, match="No such configuration property"):
        make_producer("confluent", {"no_such_setting": 1, "bootstrap_servers": NOBODY})
    with pytest.raises(ConfigError, match="acks"):  # librdkafka refuses acks=1 + idempotence
        make_producer("confluent", {"acks": 1, "enable_idempotence": True,
                                    "bootstrap_servers": NOBODY})


@needs_confluent
def test_confluent_consumer_fetches_with_dwell_defaults_that_options_override(monkeypatch):
    built = []

    def capture(kind, conf, what, ck_):
        built.append(conf)
        raise ConfigError("captured")

    monkeypatch.setattr(confluent, "_construct", capture)
    for options in ({}, {"fetch.queue.backoff.ms": 500}):
        with pytest.raises(ConfigError, match="captured"):
            make_consumer(KafkaConnection(NOBODY, "confluent", options),
                          ConsumerSettings("t", "g"))
    assert {key: built[0][key] for key in FETCH_DEFAULTS} == FETCH_DEFAULTS
    assert built[1]["fetch.queue.backoff.ms"] == 500
    monkeypatch.undo()
    ck.Consumer({"group.id": "g", **FETCH_DEFAULTS, **QUIET}).close()  # librdkafka's own names


@pytest.mark.parametrize("client", [CLIENTS[0], pytest.param(CLIENTS[1], marks=needs_confluent)])
def test_an_unreachable_broker_is_a_client_timeout(client):
    with pytest.raises(ClientTimeoutError, match="cannot reach Kafka at"):
        make_producer(client, {"bootstrap_servers": NOBODY, "bootstrap_timeout_ms": 300})
    with pytest.raises(ClientTimeoutError, match="cannot reach Kafka at"):
        make_consumer(KafkaConnection(NOBODY, client, {"bootstrap_timeout_ms": 300}),
                      ConsumerSettings("t", "g"))


def test_kafka_python_refuses_unknown_settings_as_config_errors():
    with pytest.raises(ConfigError, match="Unrecognized configs"):
        make_producer("kafka-python", {"bootstrap_servers": NOBODY, "no_such_setting": 1})


# -- the confluent consumer's own logic, on a fake librdkafka consumer -----------------------
class FakeConsumer:
    def __init__(self, batches=(), positions=None, committed=None, marks=None):
        self.batches = list(batches)
        self.assigned: list = []
        self.seeks: list = []
        self.commits: list = []
        self._positions = positions or {}
        self._committed = committed or {}
        self._marks = marks or {}

    def consume(self, num, timeout):
        return self.batches.pop(0)[:num] if self.batches else []

    def assign(self, partitions):
        self.assigned = list(partitions)

    def assignment(self):
        return self.assigned

    def seek(self, tp):
        self.seeks.append((tp.partition, tp.offset))

    def commit(self, offsets, asynchronous):
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))
        return None if asynchronous else offsets

    def position(self, tps):
        return [ck.TopicPartition(tp.topic, tp.partition, self._positions.get(tp.partition,
                                                                              -1001))
                for tp in tps]

    def committed(self, tps, timeout):
        return [ck.TopicPartition(tp.topic, tp.partition, self._committed.get(tp.partition,
                                                                              -1001))
                for tp in tps]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        if cached and tp.partition not in self._marks:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._UNKNOWN_PARTITION))
        return self._marks.get(tp.partition, (0, 0) if not cached else (-1001, -1001))


def _consumer(fake, **kw) -> confluent.ConfluentConsumer:
    """A ConfluentConsumer around ``fake``, without librdkafka or a broker."""
    c = confluent.ConfluentConsumer.__new__(confluent.ConfluentConsumer)
    c._ck, c.topic, c.max_records, c.max_wait_s = ck, "t", kw.get("max_records", 3), 0.2
    c.on_revoke, c.on_assign = kw.get("on_revoke"), kw.get("on_assign")
    c._next, c._committed, c._start, c._seeks, c._closed = {}, {}, {}, None, False
    c._config, c._timeout, c._consumer = {"auto.offset.reset": "earliest"}, 1.0, fake
    return c


def _record(partition, offset, value=b"bad"):
    """A record as the consumers hand them over."""
    return Message("t", partition, offset, b"k", value, 1_700_000_000_000, [])


def _message(partition, offset, value=b"v", key=b"k", headers=None, error=None):
    return ck.Message(topic="t", partition=partition, offset=offset, key=key, value=value,
                      headers=headers, timestamp=(ck.TIMESTAMP_CREATE_TIME, 1_700_000_000_000),
                      error=error)


@needs_confluent
def test_confluent_messages_become_light_records_and_errors_are_skipped(caplog):
    eof = ck.KafkaError(ck.KafkaError._PARTITION_EOF)
    other = ck.KafkaError(ck.KafkaError.UNKNOWN_TOPIC_OR_PART)
    fake = FakeConsumer([[_message(0, 5, headers=[("h", b"1")]), _message(1, 0, None, None,
                                                                          error=eof)],
                         [_message(1, 7, error=other), _message(2, 9, value=None)]])
    records = _consumer(fake).poll_batch()
    assert [(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, r.headers)
            for r in records] == [
        ("t", 0, 5, b"k", b"v", 1_700_000_000_000, [("h", b"1")]),
        ("t", 2, 9, b"k", None, 1_700_000_000_000, ()),  # a tombstone keeps value None
    ]
    assert "UNKNOWN_TOPIC_OR_PART" in caplog.text and "PARTITION_EOF" not in caplog.text


@needs_confluent
def test_confluent_fatal_consumer_error_raises():
    fatal = ck.KafkaError(ck.KafkaError._FATAL, "fenced", fatal=True)
    with pytest.raises(ClientError, match="fenced"):
        _consumer(FakeConsumer([[_message(0, 1, error=fatal)]])).poll_batch()


@needs_confluent
def test_confluent_rebalance_seek_in_on_assign_goes_to_assign_and_revoke_forgets():
    calls = []
    fake = FakeConsumer()
    consumer = _consumer(fake, on_revoke=lambda parts: calls.append(("revoke", parts)))

    def on_assign(parts):
        calls.append(("assign", parts))
        consumer.seek(2, 40)  # inside the callback: librdkafka has not started fetching

    consumer.on_assign = on_assign
    tps = [ck.TopicPartition("t", p) for p in (0, 2)]
    consumer._assigned(fake, tps)
    assert [(tp.partition, tp.offset) for tp in fake.assigned] == [(0, -1001), (2, 40)]
    assert fake.seeks == [] and consumer.processed() == {2: 40}
    consumer.seek(0, 3)  # outside a callback: a real seek
    assert fake.seeks == [(0, 3)]
    consumer.mark_processed([_record(2, 44)])
    consumer._revoked(fake, tps)
    assert calls == [("assign", {0, 2}), ("revoke", {0, 2})]
    assert consumer.processed() == {}


@needs_confluent
def test_confluent_commit_blocking_or_not_only_what_moved():
    fake = FakeConsumer()
    consumer = _consumer(fake)
    consumer.mark_processed([_record(0, 4), _record(1, 9)])
    assert consumer.commit() is True
    assert consumer.commit() is False  # nothing moved
    assert consumer.commit({1: 12}, blocking=False) is True
    assert fake.commits == [([(0, 5), (1, 10)], False), ([(1, 12)], True)]
    # a failed asynchronous commit is forgotten, so the next commit sends it again
    consumer._commit_done(ck.KafkaError(ck.KafkaError._TRANSPORT), [ck.TopicPartition("t", 1, 12)])
    assert consumer.commit({1: 12}) is True


@needs_confluent
def test_confluent_positions_before_any_message_was_returned():
    fake = FakeConsumer(positions={0: 17}, committed={1: 30}, marks={2: (5, 50), 3: (0, 0)})
    consumer = _consumer(fake)
    fake.assigned = [ck.TopicPartition("t", p) for p in range(5)]
    consumer._next[3] = 8  # sought there
    fake._marks[4] = (2, 9)
    assert consumer.positions() == {0: 17, 1: 30, 2: 5, 3: 8, 4: 2}
    consumer._config["auto.offset.reset"] = "latest"
    consumer._start.clear()
    assert consumer.positions()[2] == 50


@needs_confluent
def test_confluent_lag_from_the_cached_watermark_never_raises():
    fake = FakeConsumer(marks={0: (0, 100), 1: (0, 7)})
    consumer = _consumer(fake)
    fake.assigned = [ck.TopicPartition("t", p) for p in range(3)]
    consumer.mark_processed([_record(0, 59), _record(1, 6), _record(2, 1)])
    assert consumer.lag() == {0: 40, 1: 0}  # partition 2: no watermark cached (raises)


# A handle that lost every broker for good (librdkafka#5301, seen after a broker restart): its
# synchronous commit never returns, its metadata requests time out, and confluent-kafka lets
# no other thread into it while the commit waits.
class LostHandle(FakeConsumer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = threading.Event()  # ends the commit that never ends
        self.calls: list[str] = []
        self.closed = threading.Event()

    def commit(self, offsets, asynchronous):
        self.calls.append("commit")
        if not asynchronous:
            self.release.wait()
        return super().commit(offsets, asynchronous)

    def list_topics(self, topic=None, timeout=-1):
        self.calls.append("list_topics")
        raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TRANSPORT))

    def close(self):
        self.closed.set()


class NewHandle(FakeConsumer):
    def __init__(self, reachable=True, **kw):
        super().__init__(**kw)
        self.reachable, self.subscribed, self.closed = reachable, None, False

    def subscribe(self, topics, on_assign, on_revoke):
        self.subscribed = topics

    def list_topics(self, topic=None, timeout=-1):
        if not self.reachable:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TRANSPORT))

    def close(self):
        self.closed = True


def _owning(consumer, partitions):
    """``consumer`` after the group assigned it ``partitions`` (through its callback)."""
    consumer._assigned(consumer._consumer, [ck.TopicPartition("t", p) for p in partitions])
    return consumer


@needs_confluent
def test_confluent_blocking_commit_without_answer_is_given_up_and_a_new_handle_takes_over():
    lost, new = LostHandle(), NewHandle()
    calls = []
    consumer = _consumer(lost, on_assign=lambda parts: calls.append(("assign", parts)))
    consumer._handle = lambda: new
    consumer._commit_limit = 0.3

    def on_revoke(parts):  # like the daemon: where it stands, committed without waiting
        calls.append(("revoke", parts, consumer.processed()))
        consumer.commit(blocking=False)

    consumer.on_revoke = on_revoke
    _owning(consumer, [0, 2])
    consumer.mark_processed([_record(0, 4), _record(2, 9)])
    with pytest.raises(ClientTimeoutError, match="no answer in 0 s"):
        consumer.commit()
    assert consumer._consumer is new and new.subscribed == ["t"]
    assert consumer.assignment == set()  # the new handle's: nothing yet
    assert consumer.poll_batch() == []  # the lost partitions are revoked, inside the poll
    assert calls == [("assign", {0, 2}), ("revoke", {0, 2}, {0: 5, 2: 10})]
    assert new.commits == [([(0, 5), (2, 10)], True)]  # sent again, on the new handle
    assert consumer.processed() == {}
    assert lost.calls == ["commit"]  # never called again while its commit waits
    lost.release.set()
    assert lost.closed.wait(5)  # closed once its commit returned


@needs_confluent
def test_confluent_handle_that_cannot_reach_kafka_is_replaced_once_a_new_one_can(monkeypatch):
    lost = LostHandle()
    away, new = NewHandle(reachable=False), NewHandle()
    handles = [away, new]
    revoked = []
    consumer = _owning(_consumer(lost, on_revoke=revoked.append), [1])
    consumer._handle = lambda: handles.pop(0)
    monkeypatch.setattr(consumer, "HANDLE_CHECK_IDLE_S", 0.0)
    monkeypatch.setattr(consumer, "HANDLE_REPLACE_AFTER_S", 0.1)
    consumer._last_message = 0.0  # nothing for long
    consumer.poll_batch()  # no answer: noted
    assert lost.calls == ["list_topics"] and consumer._consumer is lost
    consumer.poll_batch()  # still none, and none for a new handle either (Kafka is away)
    assert away.closed and consumer._consumer is lost and revoked == []
    consumer.poll_batch()  # a new handle gets an answer: it takes over
    assert consumer._consumer is new and new.subscribed == ["t"] and revoked == [{1}]
    assert lost.closed.wait(5)  # closed on a thread of its own


@needs_confluent
def test_confluent_handle_that_answers_is_kept(monkeypatch):
    healthy = NewHandle()
    consumer = _consumer(healthy)
    consumer._handle = lambda: pytest.fail("no new handle for a healthy one")
    monkeypatch.setattr(consumer, "HANDLE_CHECK_IDLE_S", 0.0)
    monkeypatch.setattr(consumer, "HANDLE_REPLACE_AFTER_S", 0.0)
    consumer._last_message = 0.0
    for _ in range(3):
        consumer.poll_batch()
    assert consumer._consumer is healthy


@needs_confluent
def test_confluent_explicit_partitions_go_to_the_new_handle_where_they_stood():
    lost, new = LostHandle(), NewHandle(committed={1: 7})
    calls = []
    consumer = _consumer(lost, on_assign=lambda parts: calls.append(("assign", parts)),
                         on_revoke=lambda parts: calls.append(("revoke", parts)))
    consumer._subscribed, consumer._handle, consumer._commit_limit = False, lambda: new, 0.2
    _owning(consumer, [0, 1])
    consumer.mark_processed([_record(0, 4)])
    with pytest.raises(ClientTimeoutError):
        consumer.commit()
    consumer.poll_batch()
    assert [(tp.partition, tp.offset) for tp in new.assigned] == [(0, 5), (1, 7)]
    assert new.subscribed is None and calls == [("assign", {0, 1})]  # no callback again
    lost.release.set()


# -- the confluent producer's own logic ---------------------------------------------------------
class FakeProducer:
    def __init__(self, full: int = 0):
        self.full = full  # produce() raises BufferError this many times
        self.polls: list[float] = []
        self.produced: list = []

    def produce(self, topic, value, key, on_delivery=None, headers=None):
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value, key, headers))
        if on_delivery is not None:
            on_delivery(None, None)

    def poll(self, timeout):
        self.polls.append(timeout)
        return 0


def _producer(fake, max_block_s=60.0) -> confluent.ConfluentProducer:
    p = confluent.ConfluentProducer.__new__(confluent.ConfluentProducer)
    p._ck, p._producer, p._max_block_s, p._closed, p._config = ck, fake, max_block_s, False, {}
    p._unpolled = 0
    return p


@needs_confluent
def test_confluent_full_queue_waits_by_polling_and_never_crashes():
    fake = FakeProducer(full=3)
    reports = []
    producer = _producer(fake)
    producer.produce("t", b"v", b"k", on_delivery=reports.append)
    assert fake.produced == [("t", b"v", b"k", None)] and reports == [None]
    assert fake.polls == [0.1, 0.1, 0.1]  # served deliveries while waiting
    for _ in range(confluent.POLL_EVERY - 1):
        producer.produce("t", b"v")
    assert fake.polls == [0.1, 0.1, 0.1, 0]  # and every POLL_EVERY produces


@needs_confluent
def test_confluent_queue_full_for_too_long_is_a_client_timeout():
    with pytest.raises(ClientTimeoutError, match="queue full"):
        _producer(FakeProducer(full=10**9), max_block_s=0.3).produce("t", b"v")


@needs_confluent
def test_confluent_delivery_errors_come_as_client_errors():
    got = []
    report = confluent._reporter(got.append)
    report(None, None)
    report(ck.KafkaError(ck.KafkaError.MSG_SIZE_TOO_LARGE), None)
    assert got[0] is None
    assert isinstance(got[1], ClientError) and got[1].name == "MSG_SIZE_TOO_LARGE"


# -- the dead-letter queue and the replay, on a fake producer --------------------------------
class ScriptedProducer:
    """A Producer whose deliveries succeed, or fail while ``failing`` is set."""

    made: list[ScriptedProducer] = []

    def __init__(self, client, config, failing=False):
        self.client, self.config, self.failing = client, dict(config), failing
        self.queued: list = []
        self.sent: list = []
        self.closed = False
        ScriptedProducer.made.append(self)

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        self.queued.append((topic, value, key, headers, on_delivery))

    def flush(self, timeout=None):
        for topic, value, key, headers, report in self.queued:
            if self.failing:
                report(ClientError("delivery failed: too large", "MSG_SIZE_TOO_LARGE"))
            else:
                self.sent.append((topic, value, key, dict(headers or [])))
                report(None)
        self.queued = []
        return 0

    def close(self, timeout=None):
        self.closed = True


@needs_confluent
def test_dead_letters_that_fail_are_sent_again_on_a_fresh_producer(monkeypatch):
    from stream import dlq
    from stream.event import Reason

    ScriptedProducer.made = []
    processes = []
    monkeypatch.setattr(dlq, "make_producer",
                        lambda client, config, process: processes.append(process) or
                        ScriptedProducer(client, config, failing=not ScriptedProducer.made))
    queue = dlq.DeadLetterQueue("a:1,b:2", "t.dlq", {"client_id": "x"}, client="confluent",
                                process=True)
    first = ScriptedProducer.made[0]
    assert first.client == "confluent"
    assert first.config["bootstrap_servers"] == ["a:1", "b:2"] and first.config["acks"] == "all"
    queue.send(_record(1, 3), Reason.NOT_JSON, "nope")
    queue.send(_record(1, 4, None), Reason.NOT_JSON, "tombstone")
    with pytest.raises(dlq.DeadLetterError, match="2 dead letters not written"):
        queue.flush()
    assert first.closed and len(ScriptedProducer.made) == 2 and queue.pending == 2
    queue.flush()  # the fresh producer writes them
    second = ScriptedProducer.made[1]
    assert [(v, h["dwell.source.offset"], h["dwell.reason"]) for _t, v, _k, h in second.sent] == [
        (b"bad", b"3", b"not_json"), (None, b"4", b"not_json")]
    assert queue.pending == 0
    assert processes == [True, True]  # the fresh producer in a child process too


@needs_confluent
def test_replay_counts_deliveries_and_failures_with_either_client(monkeypatch):
    from producers import replay as module

    class Refusing(ScriptedProducer):
        def produce(self, topic, value, key=None, headers=None, on_delivery=None):
            if b'"user_id": 2' in value or b'"user_id":2' in value:
                raise ClientError("too large", "MSG_SIZE_TOO_LARGE")
            super().produce(topic, value, key, headers, on_delivery)

    made = []
    monkeypatch.setattr(module, "make_producer",
                        lambda client, config: made.append(Refusing(client, config)) or made[-1])
    events = [{"user_id": u, "video_id": 1, "play_ms": 1, "duration_ms": 2, "ts_ms": 0}
              for u in (1, 2, 3)]
    stats = module.replay(events, bootstrap="b:1", topic="t", progress=False, client="confluent")
    assert (stats.rows_read, stats.events_sent, stats.failed) == (3, 2, 1)
    assert stats.errors == Counter({"MSG_SIZE_TOO_LARGE": 1})
    assert made[0].client == "confluent" and made[0].config["acks"] == "all"
    assert made[0].closed


def test_replay_turns_an_unreachable_or_stalled_broker_into_broker_error(monkeypatch):
    from producers import replay as module

    def unreachable(client, config):
        raise ClientTimeoutError("cannot reach Kafka at b:1: _TRANSPORT")

    monkeypatch.setattr(module, "make_producer", unreachable)
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        module.replay([], bootstrap="b:1", topic="t", progress=False)

    class Stalled(ScriptedProducer):
        def produce(self, *args, **kwargs):
            raise ClientTimeoutError("queue full for 60 s")

    monkeypatch.setattr(module, "make_producer", Stalled)
    event = {"user_id": 1, "video_id": 1, "play_ms": 1, "duration_ms": 2, "ts_ms": 0}
    with pytest.raises(BrokerError, match="stopped answering"):
        module.replay([event], bootstrap="b:1", topic="t", progress=False)


def test_replay_refuses_an_unknown_client():
    with pytest.raises(ConfigError, match="unknown Kafka client"):
        from producers.replay import replay

        replay([], bootstrap=NOBODY, topic="t", progress=False, client="kafka")
