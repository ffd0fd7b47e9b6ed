"""Configuration precedence: flags over DWELL_* over TOML over defaults."""

import argparse

import pytest

from learner.service.config import Config, add_config_args, config_from_args
from stream.errors import ConfigError


def test_precedence(tmp_path):
    toml = tmp_path / "dwell.toml"
    toml.write_text('topic = "from-toml"\nbatch_size = 10\nlr = 0.5\n')
    cfg = Config.load(
        flags={"topic": "from-flag", "lr": None},
        env={"DWELL_TOPIC": "from-env", "DWELL_BATCH_SIZE": "20"},
        toml_path=toml,
    )
    assert (cfg.topic, cfg.batch_size, cfg.lr, cfg.group) == ("from-flag", 20, 0.5, "dwell-learner")


def test_dwell_table_in_toml(tmp_path):
    toml = tmp_path / "dwell.toml"
    toml.write_text("[dwell]\nuntil_end = true\n")
    assert Config.load(env={}, toml_path=toml).until_end is True


def test_bad_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        Config.load(env={"DWELL_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="until_end"):
        Config.load(env={"DWELL_UNTIL_END": "perhaps"})
    with pytest.raises(ConfigError, match=r"--gc-threshold must be between 0 and .* \(got -1\)"):
        Config.load(env={"DWELL_GC_THRESHOLD": "-1"})
    with pytest.raises(ConfigError, match=r"--switch-interval-s must be .* 1 \(got -0.1\)"):
        Config.load(env={"DWELL_SWITCH_INTERVAL_S": "-0.1"})
    with pytest.raises(ConfigError, match="unknown settings: nope"):
        Config.load(env={}, flags={"nope": 1})
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(env={}, toml_path=tmp_path / "missing.toml")


def test_flags_from_argparse(monkeypatch):
    monkeypatch.delenv("DWELL_CONFIG", raising=False)
    monkeypatch.setenv("DWELL_GROUP", "g-env")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--batch-size", "7", "--until-end", "--dlq-topic", "dead"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.until_end, cfg.group) == (7, True, "g-env")
    assert cfg.dead_letter_topic == "dead"
    assert Config(topic="t").dead_letter_topic == "t.dlq"


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().topic = "x"


def test_kafka_options_pass_through_and_stay_secret():
    cfg = Config.load(env={}, flags={"kafka_options": (
        "security_protocol=SASL_SSL, sasl_mechanism=PLAIN,sasl_plain_username=u,"
        "sasl_plain_password=hunter2,ssl_check_hostname=false,request_timeout_ms=40000")})
    assert cfg.client_options() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u", "sasl_plain_password": "hunter2",
        "ssl_check_hostname": False, "request_timeout_ms": 40000,
    }
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        Config(kafka_options="oops").client_options()


def test_kafka_clients_accept_sasl_and_tls_settings():
    from kafka import KafkaConsumer

    options = Config(kafka_options=(
        "security_protocol=SASL_SSL,sasl_mechanism=SCRAM-SHA-256,sasl_plain_username=u,"
        "sasl_plain_password=p")).client_options()
    # kafka-python validates its configuration at construction; nothing listens on port 9
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(3, 7),
                             **options)
    try:
        assert consumer.config["security_protocol"] == "SASL_SSL"
        assert consumer.config["sasl_mechanism"] == "SCRAM-SHA-256"
    finally:
        consumer.close()


def test_command_defaults_sit_below_every_other_source(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text('checkpoint_dir = "/from/toml"\n')
    defaults = {"checkpoint_dir": "/from/command"}
    assert Config.load(env={}, defaults=defaults).checkpoint_dir == "/from/command"
    assert Config.load(env={}, defaults=defaults, toml_path=toml).checkpoint_dir == "/from/toml"
    env = {"DWELL_CHECKPOINT_DIR": "/from/env"}
    assert Config.load(env=env, defaults=defaults).checkpoint_dir == "/from/env"
    off = Config.load(env=env, defaults=defaults, flags={"checkpoint_dir": ""})
    assert off.checkpoint_dir == ""
    assert Config().checkpoint_dir == ""  # the library itself never writes checkpoints


def test_learn_checkpoints_by_default_one_folder_per_group(tmp_path, monkeypatch):
    from learner.cli import build_parser, learn_config

    for key in ("DWELL_CHECKPOINT_DIR", "DWELL_GROUP", "DWELL_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    parse = build_parser().parse_args
    cfg = learn_config(parse(["learn", "--group", "g1"]), home=tmp_path)
    assert cfg.checkpoint_dir == str(tmp_path / "checkpoints" / "g1")
    cfg = learn_config(parse(["learn", "--checkpoint-dir", "/x"]), home=tmp_path)
    assert cfg.checkpoint_dir == "/x"
    cfg = learn_config(parse(["learn", "--checkpoint-dir", ""]), home=tmp_path)
    assert cfg.checkpoint_dir == ""


def test_admin_client_takes_the_security_settings_and_ignores_the_rest():
    from stream.admin import admin_options

    options = Config(kafka_options=(
        "security_protocol=SASL_PLAINTEXT,sasl_mechanism=PLAIN,sasl_plain_username=u,"
        "sasl_plain_password=p,acks=all,enable_idempotence=true")).client_options()
    assert admin_options(options) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u", "sasl_plain_password": "p",
    }


@pytest.mark.parametrize(("setting", "client", "expected"), [
    ("auto", "kafka-python", True), ("auto", "confluent", False),
    ("on", "confluent", True), ("off", "kafka-python", False),
])
def test_client_process_auto_means_kafka_python(setting, client, expected):
    cfg = Config(client_process=setting, client=client)
    assert cfg.uses_client_process() is expected


def test_client_process_takes_three_values():
    with pytest.raises(ConfigError, match=r"--client-process must be auto, on or off \(got"):
        Config(client_process="yes")
