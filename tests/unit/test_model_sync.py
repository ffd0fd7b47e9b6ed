"""The model topic's wire format, the publisher and the staging of versions, on a fake topic
(a list of records, compacted by hand); the real broker's tests are in
tests/integration/test_model_sync.py."""

from __future__ import annotations

import numpy as np
import pytest

from learner.core.batch import Events
from learner.core.errors import ConfigError
from learner.core.trainer import LearnerSettings, OnlineLearner
from learner.serving.builder import ModelBuilder
from learner.serving.model import Layout, ServedModel
from learner.serving.publisher import Publisher, TopicState
from learner.serving.replica import topic_state
from learner.serving.wire import (
    VERSION_KEY,
    WireError,
    decode_dense,
    decode_key,
    decode_rows,
    decode_version,
    encode_dense,
    encode_key,
    encode_rows,
    encode_version,
)
from stream.errors import ClientError


class FakeTopic:
    """A producer whose records land in a list, acknowledged at flush (or failed)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.fail_after: int | None = None  # records acknowledged before failures begin
        self._waiting: list = []

    def produce(self, topic, value, key=None, headers=None, on_delivery=None) -> None:
        self._waiting.append(on_delivery)
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            self._waiting[-1] = (on_delivery, ClientError("broker away"))
            return
        self.records.append((key, value))

    def flush(self, timeout=None) -> int:
        for item in self._waiting:
            callback, error = item if isinstance(item, tuple) else (item, None)
            if callback is not None:
                callback(error)
        self._waiting = []
        return 0

    def close(self, timeout=None) -> None:
        self.flush()

    def compacted(self, upto: int | None = None) -> list[tuple[bytes, bytes | None]]:
        """The records as Kafka's cleaner leaves them once it cleaned the first ``upto``
        (all by default): there, the latest record of each key within them, in offset order
        (tombstones kept, as before delete.retention.ms passes); after, every record."""
        upto = len(self.records) if upto is None else upto
        last = {key: at for at, (key, _) in enumerate(self.records[:upto])}
        return [r for at, r in enumerate(self.records) if at >= upto or last[r[0]] == at]


def _events(rng: np.random.Generator, users: int, videos: int, n: int = 400,
            start_ms: int = 0) -> Events:
    return Events(rng.integers(0, users, n).tolist(),
                  [f"v{i}" for i in rng.integers(0, videos, n)],
                  rng.integers(0, 300_000, n), rng.integers(1_000, 300_000, n),
                  start_ms + np.arange(n) * 1000, np.full(n, np.nan, np.float32))


def _learner(model: str = "wide", **settings) -> OnlineLearner:
    return OnlineLearner(LearnerSettings(model=model, dim=4, kernel="torch", **settings))


def _publisher(learner: OnlineLearner, topic: FakeTopic, **kw) -> Publisher:
    return Publisher(learner, topic, "t.model", interval_s=0.0, **kw)


def _version(learner: OnlineLearner, publisher: Publisher, events: Events) -> int | None:
    """Train on ``events``, publish a version and wait for it; its number."""
    learner.learn_many(events)
    version = publisher.publish()
    assert publisher.wait(5)
    return version


def _rebuild(records) -> ModelBuilder:
    builder = ModelBuilder()
    for key, value in records:
        builder.add(key, value)
    return builder


def _assert_same(learner: OnlineLearner, builder: ModelBuilder, users: int, videos: int) -> None:
    served = builder.current()
    assert served is not None
    held_users = [u for u in range(users) if u in learner.users]
    held_videos = [f"v{i}" for i in range(videos) if f"v{i}" in learner.videos]
    assert served.n_users == len(learner.users) and served.n_videos == len(learner.videos)
    assert served.known_users(held_users).all() and served.known_videos(held_videos).all()
    u = np.repeat(held_users, len(held_videos)).tolist()
    v = held_videos * len(held_users)
    np.testing.assert_allclose(served.score(u, v), learner.predict_many(u, v), atol=1e-6)


# -- the wire format ---------------------------------------------------------------------
def test_keys_keep_integer_and_string_ids_apart() -> None:
    assert encode_key("u", 7) != encode_key("u", "7")
    assert decode_key(encode_key("u", np.int64(7))) == ("u", 7)
    assert decode_key(encode_key("v", 'say "hi"')) == ("v", 'say "hi"')
    for bad in (1.5, True, None, (1, 2)):
        with pytest.raises(WireError, match="int or str"):
            encode_key("u", bad)
    for bad in (None, b"x", b"q:1", b"u:[1]", b"u:{", b"u:1.5"):
        with pytest.raises(WireError):
            decode_key(bad)


def test_rows_dense_and_version_records_round_trip() -> None:
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    keys, raw = encode_rows("v", [1, "b", 3], values, 9, np.array([4, 5, 6]))
    rows = decode_rows(raw, 2)
    assert [decode_key(k)[1] for k in keys] == [1, "b", 3]
    assert rows.version.tolist() == [9] * 3 and rows.aux.tolist() == [4, 5, 6]
    np.testing.assert_array_equal(rows.values, values)
    with pytest.raises(WireError, match="bytes where"):
        decode_rows(raw, 3)
    key, value = encode_dense("mlp.0.weight", np.ones((2, 3)), 4)
    assert key == b"d:mlp.0.weight" and decode_dense(value, (2, 3)).tolist() == [[1.0] * 3] * 2
    info = decode_version(encode_version(5, {"model": "wide"}, 123, {0: 7}, 2, 3, True, 9))
    assert (info["version"], info["offsets"], info["users"], info["full"]) == (5, {0: 7}, 2,
                                                                             True)
    for bad in (b"{", b"[]", b'{"version": 1}', None):
        with pytest.raises(WireError):
            decode_version(bad)


# -- publishing and staging --------------------------------------------------------------
@pytest.mark.parametrize("model", ["wide", "gmf", "neumf", "deepfm"])
def test_versions_rebuild_the_learners_model(model: str) -> None:
    rng = np.random.default_rng(0)
    learner, topic = _learner(model), FakeTopic()
    publisher = _publisher(learner, topic)
    for step in range(4):
        learner.learn_many(_events(rng, 30 + 10 * step, 20 + 5 * step))
        assert publisher.publish({0: step}) == step + 1
        assert publisher.wait(5)
    builder = _rebuild(topic.records)
    assert builder.version == 4 and builder.info["offsets"] == {0: 3}
    assert builder.errors == {}
    _assert_same(learner, builder, 60, 35)
    first = [k for k, _ in topic.records].index(VERSION_KEY)
    later = [k for k, _ in topic.records[first + 1:] if k.startswith(b"u:")]
    assert 0 < len(later) < 3 * 60  # later versions hold the changed rows only


def test_rows_wait_for_their_versions_completion() -> None:
    rng = np.random.default_rng(1)
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic)
    _version(learner, publisher, _events(rng, 10, 10))
    builder = _rebuild(topic.records)
    before = builder.current()
    assert before is not None
    scores = before.score(list(range(10)), ["v1"] * 10)
    mark = len(topic.records)
    _version(learner, publisher, _events(rng, 20, 10))
    for key, value in topic.records[mark:-1]:  # all of version 2 but its completion
        assert not builder.add(key, value)
    assert builder.current() is before and builder.version == 1
    np.testing.assert_array_equal(builder.current().score(list(range(10)), ["v1"] * 10), scores)
    assert builder.add(*topic.records[-1])
    assert builder.current().version == 2 and builder.current() is not before
    assert before.score(list(range(10)), ["v1"] * 10).tolist() == scores.tolist()  # immutable


def test_a_compacted_topic_rebuilds_the_same_model() -> None:
    rng = np.random.default_rng(2)
    learner, topic = _learner(max_users=50), FakeTopic()
    publisher = _publisher(learner, topic)
    for step in range(6):  # 40 new users a step: ids are evicted, their rows tombstoned
        learner.learn_many(_events(rng, 40, 25, n=200) if step == 0 else Events(
            list(range(40 * step, 40 * step + 40)), ["v1"] * 40, np.full(40, 9000),
            np.full(40, 9000), np.zeros(40, np.int64), np.full(40, np.nan, np.float32)))
        publisher.publish()
        publisher.wait(5)
    assert learner.evictions["user"] > 0
    assert any(v is None for _, v in topic.records)
    whole, compacted = _rebuild(topic.records), _rebuild(topic.compacted())
    assert len(topic.compacted()) < len(topic.records)
    for builder in (whole, compacted):
        assert builder.version == 6 and builder.errors == {}
        assert builder.current().n_users == 50
        _assert_same(learner, builder, 240, 25)


def test_a_restarted_learner_numbers_on_and_replaces_a_half_written_version() -> None:
    rng = np.random.default_rng(3)
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic)
    _version(learner, publisher, _events(rng, 20, 10))
    checkpoint = learner.state_dict()
    learner.learn_many(_events(rng, 40, 10))  # users 20..39 are new
    publisher.publish()
    publisher.wait(5)
    _version(learner, publisher, _events(rng, 60, 10))
    del topic.records[-1]  # version 3 half written: the learner died before its completion
    state = topic_state(_rebuild(topic.records))
    assert state.version == 3 and state.layout is not None
    restarted = _learner()
    restarted.load_state_dict(checkpoint)
    second = _publisher(restarted, topic, start=state)
    assert second.publish() == 4
    second.wait(5)
    for records in (topic.records, topic.compacted()):
        builder = _rebuild(records)
        assert builder.version == 4 and builder.info["full"]
        _assert_same(restarted, builder, 60, 10)
    replica = _rebuild(topic.records[: topic.records.index(
        next(r for r in topic.records if r[0] == VERSION_KEY)) + 1])
    versions = []
    for key, value in topic.records[len(replica.staged):]:
        if replica.add(key, value):
            versions.append(replica.version)
    assert versions == sorted(versions)


def test_a_learner_of_another_layout_is_refused() -> None:
    learner, topic = _learner("gmf"), FakeTopic()
    _publisher(learner, topic).publish()
    state = topic_state(_rebuild(topic.records))
    with pytest.raises(ConfigError, match="another layout"):
        _publisher(_learner("wide"), topic, start=state)


def test_a_version_not_written_whole_is_never_complete() -> None:
    rng = np.random.default_rng(4)
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic)
    learner.learn_many(_events(rng, 20, 10))
    publisher.publish()
    assert publisher.wait(5)
    learner.learn_many(_events(rng, 30, 10))
    topic.fail_after = len(topic.records) + 5
    publisher.publish()
    assert not publisher.wait(5)
    assert publisher.stats.failed == 1
    assert sum(k == VERSION_KEY for k, _ in topic.records) == 1
    topic.fail_after = None
    learner.learn_many(_events(rng, 30, 10))
    assert publisher.publish() == 3
    assert publisher.wait(5)
    builder = _rebuild(topic.records)
    assert builder.version == 3 and builder.info["full"]  # the whole model after a failure
    _assert_same(learner, builder, 30, 10)


def test_stale_and_broken_records_are_refused_and_counted() -> None:
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic)
    _version(learner, publisher, _events(np.random.default_rng(5), 5, 5))
    builder = _rebuild(topic.records)
    served = builder.current()
    layout = Layout.of(learner.model, "wide", 4).as_dict()
    assert not builder.add(VERSION_KEY, b"not json")
    assert not builder.add(encode_key("u", 1), b"short")
    assert not builder.add(VERSION_KEY, encode_version(1, layout, 0, {}, 5, 5, False, 0))
    assert builder.current() is served  # a version not above the current one: refused
    assert builder.add(encode_key("u", 1), b"short") is False
    assert builder.add(VERSION_KEY, encode_version(2, layout, 0, {}, 5, 5, False, 0))
    assert builder.errors["bad_version_record"] == 1 and builder.errors["stale_version"] == 1
    assert builder.errors["bad_row"] == 1
    assert builder.version == 2 and builder.current().n_users == 5


def test_unchanged_models_publish_nothing_and_start_state_is_read() -> None:
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic, start=TopicState(version=7))
    assert publisher.publish() == 8  # the first version: the whole model, even empty
    publisher.wait(5)
    assert publisher.publish() is None
    publisher.saw(np.array([5, 99, 3]))
    learner.learn_many(_events(np.random.default_rng(6), 5, 5))
    assert publisher.publish() == 9
    publisher.close()
    assert decode_version(topic.records[-1][1])["newest_event_ms"] == 99


def test_a_partly_compacted_topic_serves_only_whole_versions() -> None:
    """The cleaner kept version 3's completion record but removed values before it that
    version 4 wrote again after it: the tables at version 3 lack keys, so version 3 is not
    served; version 4, once complete, is, whole."""
    rng = np.random.default_rng(7)
    learner, topic = _learner(), FakeTopic()
    publisher = _publisher(learner, topic)
    copies = {}
    for step in range(4):
        version = _version(learner, publisher, _events(rng, 20 + 10 * step, 10 + 5 * step))
        copies[version] = ServedModel.from_learner(learner, version, 0)
    completions = [at for at, (key, _) in enumerate(topic.records) if key == VERSION_KEY]
    upto = completions[-1] - 2  # cleaned up to within version 4's records
    kept = topic.compacted(upto)
    assert sum(key == VERSION_KEY for key, _ in kept) == 2  # version 3's and version 4's
    builder, served = ModelBuilder(), []
    for key, value in kept:
        if builder.add(key, value):
            served.append(builder.current())
    assert [m.version for m in served] == [4] and builder.incomplete == 1
    users, videos = list(range(50)), [f"v{i}" for i in range(25)] * 2
    np.testing.assert_allclose(served[0].score(users, videos), copies[4].score(users, videos),
                               atol=1e-6)
    _assert_same(learner, builder, 50, 25)
