"""The model synced through Kafka, on the real broker: a learner publishes, replicas rebuild.

Every version a replica swaps in is compared with the learner's own copy of that version,
taken when the learner published it (:class:`ServedModel.from_learner` at the snapshot): an
answer that mixed two versions, or a replica that went backwards, fails the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from learner.core.trainer import OnlineLearner
from learner.service.checkpoint import Checkpointer
from learner.service.config import Config
from learner.service.daemon import Daemon
from learner.serving.model import ServedModel
from learner.serving.publisher import Publisher
from learner.serving.replica import Replica
from learner.serving.topic import create_model_topic
from learner.serving.wire import VERSION_KEY
from producers.readers import order_by_time, read_log
from producers.replay import replay
from stream.admin import delete_topic, end_offsets, topic_config
from stream.clients import KafkaConnection
from tests.integration.helpers import KUAIRAND, read_topic
from tests.integration.test_ranks import _finish, _job

#: Probe pairs scored on every version: users and videos of the shipped log.
PROBES = 400


@pytest.fixture
def model_topic(kafka_bootstrap, topic):
    name = f"{topic}.model"
    yield name
    delete_topic(kafka_bootstrap, name)


@pytest.fixture
def learner_versions(monkeypatch):
    """The learner's copy of every version it publishes, by version."""
    copies: dict[int, ServedModel] = {}
    publish = Publisher.publish

    def publish_and_keep(self, offsets=None):
        version = publish(self, offsets)
        if version is not None:
            copies[version] = ServedModel.from_learner(self.learner, version,
                                                       self.newest_event_ms)
        return version

    monkeypatch.setattr(Publisher, "publish", publish_and_keep)
    return copies


def _replay(bootstrap: str, topic: str, part: slice = slice(None)) -> int:
    log = read_log(KUAIRAND)
    log.events = order_by_time(log.events)[part]
    stats = replay(log, bootstrap=bootstrap, topic=topic, progress=False)
    assert stats.failed == 0
    return stats.events_sent


def _config(bootstrap: str, topic: str, **overrides) -> Config:
    return dataclasses.replace(Config(
        bootstrap=bootstrap, topic=topic, group=f"{topic}-learner", until_end=True,
        batch_timeout_s=0.2, progress_interval_s=5.0, metrics_port=-1,
        publish_interval_s=0.2), **overrides)


def _learn(cfg: Config) -> tuple[Daemon, threading.Thread, dict]:
    daemon = Daemon(cfg, CollectorRegistry())
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(daemon.run()), name="learner")
    thread.start()
    return daemon, thread, out


class Watch:
    """A replica and every version it swapped in, in order."""

    def __init__(self, bootstrap: str, model_topic: str) -> None:
        self.seen: list[ServedModel] = []
        self.replica = Replica(KafkaConnection(bootstrap), model_topic,
                               on_version=lambda model, _at: self.seen.append(model)).start()

    def stop(self) -> None:
        self.replica.stop()


def _probes(learner) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    users = learner.users.ids_at(np.arange(len(learner.users)))
    videos = learner.videos.ids_at(np.arange(len(learner.videos)))
    return ([users[i] for i in rng.integers(0, len(users), PROBES)],
            [videos[i] for i in rng.integers(0, len(videos), PROBES)])


def _assert_versions_match(seen: list[ServedModel], copies: dict[int, ServedModel],
                           probes: tuple[list, list]) -> None:
    versions = [model.version for model in seen]
    assert versions == sorted(set(versions)), f"a replica went backwards: {versions}"
    for model in seen:
        mine = copies[model.version]
        assert (model.n_users, model.n_videos) == (mine.n_users, mine.n_videos), model
        np.testing.assert_allclose(model.score(*probes), mine.score(*probes), atol=1e-6,
                                   err_msg=f"version {model.version}")


def test_replicas_serve_the_learners_versions_and_come_back_after_a_restart(
        kafka_bootstrap, topic, model_topic, learner_versions):
    _replay(kafka_bootstrap, topic)
    first = Watch(kafka_bootstrap, model_topic)  # tails the topic before it exists
    daemon, thread, _ = _learn(_config(kafka_bootstrap, topic))
    deadline = time.monotonic() + 120
    while len(first.seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop()  # mid-stream: the learner still trains and publishes
    assert thread.is_alive() and len(first.seen) >= 3
    had = first.replica.version
    second = Watch(kafka_bootstrap, model_topic)
    assert second.replica.wait_for(had, 60) is not None
    assert second.seen[0].version >= had  # back to where the first was, never behind
    thread.join(300)
    assert not thread.is_alive()
    final = daemon.publisher.stats.last_version
    assert second.replica.wait_for(final, 60).version == final
    second.stop()
    assert daemon.publisher.stats.failed == 0 and final == max(learner_versions)

    # score parity: the server's score of a pair equals the learner's for the same version
    learner = daemon.learner
    served = second.replica.current()
    assert (served.n_users, served.n_videos) == (len(learner.users), len(learner.videos))
    users, videos = _probes(learner)
    np.testing.assert_allclose(served.score(users, videos), learner.predict_many(users, videos),
                               atol=1e-6)
    feats = np.tile([[13, 5, 2]], (PROBES, 1))
    np.testing.assert_allclose(served.score(users, videos, feats),
                               learner.predict_many(users, videos, feats), atol=1e-6)
    for watch in (first, second):
        _assert_versions_match(watch.seen, learner_versions, (users, videos))
    assert sum(second.replica.builder.errors.values()) == 0
    assert topic_config(kafka_bootstrap, model_topic)["cleanup.policy"] == "compact"


def test_a_learner_restarted_from_its_checkpoint_never_sends_a_replica_back(
        kafka_bootstrap, topic, model_topic, learner_versions, tmp_path: Path):
    total = _replay(kafka_bootstrap, topic, slice(0, 20_000))
    watch = Watch(kafka_bootstrap, model_topic)
    cfg = _config(kafka_bootstrap, topic, checkpoint_dir=str(tmp_path / "ckpt"),
                  checkpoint_interval_s=1.0)
    daemon, thread, _ = _learn(cfg)
    thread.join(300)
    before = daemon.publisher.stats.last_version
    assert watch.replica.wait_for(before, 60) is not None
    total += _replay(kafka_bootstrap, topic, slice(20_000, None))
    restarted, thread, out = _learn(cfg)
    thread.join(300)
    assert not thread.is_alive() and out["consumed"] > 0
    after = restarted.publisher.stats.last_version
    assert after > before + 1
    assert watch.replica.wait_for(after, 60).version == after
    watch.stop()
    versions = [m.version for m in watch.seen]
    assert any(v <= before for v in versions) and any(v > before for v in versions)
    _assert_versions_match(watch.seen, learner_versions, _probes(restarted.learner))
    assert sum(watch.replica.builder.errors.values()) == 0


def test_a_compacted_model_topic_rebuilds_the_same_model(
        kafka_bootstrap, topic, model_topic, learner_versions):
    # segments roll every 100 ms and the cleaner takes any of them: compaction soon runs
    create_model_topic(KafkaConnection(kafka_bootstrap), model_topic, {
        "segment.ms": 100, "min.cleanable.dirty.ratio": 0.01, "delete.retention.ms": 100})
    _replay(kafka_bootstrap, topic)
    daemon, thread, _ = _learn(_config(kafka_bootstrap, topic, publish_interval_s=0.1,
                                       batch_size=128))
    thread.join(300)
    final = daemon.publisher.stats.last_version
    assert daemon.publisher.stats.versions >= 5
    written = end_offsets(kafka_bootstrap, model_topic)[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the cleaner wakes every 15 s (Kafka's default)
        kept = read_topic(kafka_bootstrap, model_topic)
        if len(kept) < written * 0.7:
            break
        create_model_topic(KafkaConnection(kafka_bootstrap), model_topic)  # no-op
        time.sleep(2)
    assert len(kept) < written * 0.7, f"not compacted: {len(kept)} of {written} records"
    completions = [r for r in kept if r.key == VERSION_KEY]
    assert len(completions) < final  # the version records were compacted too
    watch = Watch(kafka_bootstrap, model_topic)
    assert watch.replica.wait_for(final, 60).version == final
    watch.stop()
    probes = _probes(daemon.learner)
    _assert_versions_match(watch.seen[-1:], learner_versions, probes)
    np.testing.assert_allclose(watch.seen[-1].score(*probes),
                               daemon.learner.predict_many(*probes), atol=1e-6)


def test_a_job_of_two_ranks_publishes_its_one_model_once(kafka_bootstrap, topic, model_topic,
                                                         tmp_path: Path):
    _replay(kafka_bootstrap, topic)
    watch = Watch(kafka_bootstrap, model_topic)
    _finish(_job(kafka_bootstrap, topic, tmp_path, "kafka-python", 2, "--until-end",
                 "--publish-interval-s", "0.5", "--sync-every", "4"), tmp_path)
    final = Checkpointer(tmp_path / "ckpt").load_latest()
    learner = OnlineLearner(Config().learner_settings())
    learner.load_state_dict(final["learner"])
    records = read_topic(kafka_bootstrap, model_topic)  # the job wrote its last version
    last = max(int(json.loads(r.value)["version"]) for r in records if r.key == VERSION_KEY)
    assert watch.replica.wait_for(last, 60).version == last
    watch.stop()
    versions = [int.from_bytes(r.value[1:9], "little") for r in records
                if r.key != VERSION_KEY and r.value is not None]
    completed = [m.version for m in watch.seen]
    # rank 0 alone: versions written in order, never twice, each completed once
    assert versions == sorted(versions) and completed == sorted(set(completed))
    assert sum(r.key == VERSION_KEY for r in records) == max(versions) >= 3
    assert sum(watch.replica.builder.errors.values()) == 0
    served = watch.seen[-1]
    probes = _probes(learner)
    np.testing.assert_allclose(served.score(*probes), learner.predict_many(*probes), atol=1e-6)
