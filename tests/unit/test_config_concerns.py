"""Settings by concern: TOML tables, the frozen objects built from Config, and the Kafka
connection and consumer settings the clients take."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from learner.core.labels import LabelRule
from learner.core.settings import LearnerSettings
from learner.service.config import CONCERN_OF, CONCERNS, SECTIONS, Config
from stream.clients import ConsumerSettings, KafkaConnection
from stream.errors import ConfigError


def _load(tmp_path, text: str, **kw) -> Config:
    toml = tmp_path / "dwell.toml"
    toml.write_text(text)
    return Config.load(env=kw.pop("env", {}), toml_path=toml, **kw)


def test_toml_tables_per_concern(tmp_path):
    cfg = _load(tmp_path, """
        [kafka]
        bootstrap = "b1:9092,b2:9092"
        client = "confluent"
        [consumer]
        topic = "t"
        batch_size = 512
        [model]
        model = "deepfm"
        lr = 0.05
        [labels]
        skip_ms = 2000
        [checkpoint]
        checkpoint_keep = 5
        [metrics]
        metrics_port = -1
        [distributed]
        sync_every = 4
        [runtime]
        gc_threshold = 0
    """)
    assert (cfg.bootstrap, cfg.client, cfg.topic, cfg.batch_size) == (
        "b1:9092,b2:9092", "confluent", "t", 512)
    assert (cfg.model, cfg.lr, cfg.skip_ms, cfg.checkpoint_keep) == ("deepfm", 0.05, 2000, 5)
    assert (cfg.metrics_port, cfg.sync_every, cfg.gc_threshold) == (-1, 4, 0)


def test_flat_keys_tables_and_the_dwell_table_read_alike(tmp_path):
    flat = _load(tmp_path, 'model = "neumf"\nbatch_size = 64\nuntil_end = true\n')
    tables = _load(tmp_path, '[model]\nmodel = "neumf"\n[consumer]\nbatch_size = 64\n'
                             'until_end = true\n')
    dwell = _load(tmp_path, '[dwell]\nmodel = "neumf"\nbatch_size = 64\n[dwell.consumer]\n'
                            'until_end = true\n')
    mixed = _load(tmp_path, 'model = "neumf"\n[consumer]\nbatch_size = 64\nuntil_end = true\n')
    assert flat == tables == dwell == mixed
    assert (flat.model, flat.batch_size, flat.until_end) == ("neumf", 64, True)


def test_tables_sit_below_environment_and_flags(tmp_path):
    cfg = _load(tmp_path, '[consumer]\ntopic = "toml"\ngroup = "toml"\nbatch_size = 8\n',
                env={"DWELL_GROUP": "env", "DWELL_BATCH_SIZE": "9"}, flags={"batch_size": 10})
    assert (cfg.topic, cfg.group, cfg.batch_size) == ("toml", "env", 10)


@pytest.mark.parametrize(("text", "message"), [
    ('[kafak]\nbootstrap = "b:1"\n', r"unknown table \[kafak\] \(tables: \[kafka\], "),
    ('[kafka]\nbootstrapp = "b:1"\n', r"\[kafka\]: unknown setting 'bootstrapp'"),
    ("[kafka]\nbatch_size = 5\n", r"\[kafka\]: batch_size belongs in the \[consumer\] table"),
    ('nope = 1\n', "unknown setting 'nope'"),
    ("batch_size = 5\n[consumer]\nbatch_size = 6\n", r"\[consumer\]: batch_size is set twice"),
    ("[consumer.more]\nbatch_size = 5\n", r"\[consumer\]: unknown setting 'more'"),
    ("[dwell.dwell]\nbatch_size = 5\n", r"\[dwell\]: unknown table \[dwell\]"),
])
def test_a_wrong_table_or_key_is_a_clear_error_naming_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=rf"config file .*dwell\.toml.*{message}"):
        _load(tmp_path, text)


def test_table_values_are_checked_like_any_other(tmp_path):
    with pytest.raises(ConfigError, match="--batch-size"):
        _load(tmp_path, "[consumer]\nbatch_size = true\n")
    with pytest.raises(ConfigError, match="--lr must be"):
        _load(tmp_path, "[model]\nlr = -1.0\n")


def test_every_setting_has_one_concern_and_every_concern_settings():
    assert set(CONCERN_OF.values()) == set(CONCERNS)
    for concern, kind in SECTIONS.items():
        names = [f.name for f in dataclasses.fields(kind)]
        assert names == [n for n, c in CONCERN_OF.items() if c == concern]


def test_sections_are_frozen_objects_of_their_settings():
    cfg = Config(checkpoint_keep=7, metrics_port=0, kafka_options="sasl_plain_password=hunter2")
    checkpoint = cfg.section("checkpoint")
    assert checkpoint.checkpoint_keep == 7 and not hasattr(checkpoint, "topic")
    assert cfg.section("metrics").metrics_port == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        checkpoint.checkpoint_keep = 1
    assert "hunter2" not in repr(cfg.section("kafka"))
    with pytest.raises(KeyError):
        cfg.section("nope")


def test_learner_settings_take_every_setting_of_the_same_name():
    names = {f.name for f in dataclasses.fields(LearnerSettings)} - {"labels", "rank"}
    values = {"model": "deepfm", "dim": 7, "lr": 0.3, "loss": "idl", "train_batch": 9,
              "max_steps": 3, "seed": 5, "device": "cuda", "auc_window": 11,
              "auc_long_window": 13, "num_neg": 2, "sampler": "popularity", "meta": "ig",
              "sample_lr": 0.2, "lookahead": "sgd", "kernel": "torch",
              "meta_source": "reservoir", "meta_size": 17, "meta_batch": 19, "threads": 3,
              "max_users": 2000, "max_videos": 3000}
    assert names <= set(CONCERN_OF)  # the core's settings are all settings of the service
    cfg = Config(**values, pos_ratio=0.5, long_view_ms=7, skip_ms=2, neg_ratio=0.1, rank=3)
    settings = cfg.learner_settings()
    assert {n: getattr(settings, n) for n in values} == values
    assert settings.labels == LabelRule(0.5, 7, 2, 0.1) == cfg.labels
    assert settings.rank == 0  # the job's rank is the rank daemon's to set
    assert Config().learner_settings() == LearnerSettings()


def test_the_connection_keeps_its_secrets_out_of_repr():
    cfg = Config(bootstrap="b:1", client="confluent",
                 kafka_options="sasl_plain_username=bob,sasl_plain_password=hunter2,acks=all")
    connection = cfg.connection
    assert connection == KafkaConnection("b:1", "confluent", {
        "sasl_plain_username": "bob", "sasl_plain_password": "hunter2", "acks": "all"})
    assert "hunter2" not in repr(connection) and "hunter2" not in str(connection)
    assert "'sasl_plain_username': 'bob'" in repr(connection)
    assert connection.secrets() == ["hunter2"] == cfg.secrets()
    with pytest.raises(dataclasses.FrozenInstanceError):
        connection.bootstrap = "x"
    with pytest.raises(ConfigError, match="unknown Kafka client 'rdkafka'"):
        KafkaConnection(client="rdkafka")


def test_the_learners_consumer_settings():
    cfg = Config(topic="t", group="g", batch_size=100, batch_timeout_s=0.2,
                 session_timeout_ms=9000, client="confluent", client_process="auto")
    assert cfg.consumer == ConsumerSettings("t", "g", max_records=100, max_wait_s=0.2,
                                            process=False, session_timeout_ms=9000)
    assert Config(client="kafka-python").consumer.process is True
    explicit = dataclasses.replace(cfg.consumer, partitions=range(3, -1, -1))
    assert explicit.partitions == (0, 1, 2, 3)
    assert pickle.loads(pickle.dumps(explicit)) == explicit  # to a fetch process's child


def test_consumer_client_settings_sit_under_the_connections_options():
    settings = ConsumerSettings("t", "g", session_timeout_ms=9000)
    assert settings.client_config(KafkaConnection()) == {
        "session_timeout_ms": 9000, "heartbeat_interval_ms": 3000}
    options = {"heartbeat_interval_ms": 500, "sasl_plain_password": "pw"}
    assert settings.client_config(KafkaConnection(options=options)) == {
        "session_timeout_ms": 9000, "heartbeat_interval_ms": 500, "sasl_plain_password": "pw"}
    assert ConsumerSettings("t", "g").client_config(KafkaConnection()) == {}
    assert ConsumerSettings("t", "g", session_timeout_ms=150).client_config(
        KafkaConnection())["heartbeat_interval_ms"] == 100


@pytest.mark.parametrize("command", ["learn", "demo", "replay", "serve"])
def test_help_groups_the_settings_by_concern(command):
    from learner.cli import build_parser
    from learner.service.config import flag_name

    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    groups = {g.title: {o for a in g._group_actions for o in a.option_strings}
              for g in sub._action_groups}
    from learner.cli import KAFKA_FLAGS, LEARN_FLAGS
    from learner.serving.command import SERVE_FLAGS

    # replay: the Kafka settings; learn: all but dwell serve's; serve: its own and Kafka's
    names = {"replay": KAFKA_FLAGS, "learn": LEARN_FLAGS, "serve": SERVE_FLAGS}.get(
        command, CONCERN_OF)
    for name in names:
        assert flag_name(name) in groups[CONCERNS[CONCERN_OF[name]]], name
    if command == "replay":
        assert CONCERNS["model"] not in groups
    if command == "learn":
        assert CONCERNS["serve"] not in groups
    help_text = sub.format_help()
    assert "(--config table [kafka])" in help_text
