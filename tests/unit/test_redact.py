"""The log filter masks secrets by name and by value, in every form a message carries them."""

from __future__ import annotations

import io
import logging

import pytest

from learner.service.config import Config
from stream import redact

SECRET = "s3cr3t-Pa55,word"


@pytest.fixture(autouse=True)
def _forget_secrets(monkeypatch):
    monkeypatch.setattr(redact, "_known", set())


@pytest.mark.parametrize("text", [
    "Starting KafkaAdminClient with configuration: {'sasl_plain_password': 'hunter22', 'x': 1}",
    'config {"sasl.password": "hunter22", "acks": "all"}',
    "sasl_plain_password=hunter22,acks=all",
    "sasl.password=hunter22 ssl.ca.location=/ca.pem",
    "ssl_password: hunter22",
    "{'ssl_password': b'hunter22'}",
    "sasl.oauthbearer.client.secret=hunter22",
    "sasl_oauth_token_provider=hunter22",
    "ssl.key.pem='hunter22'",
    "SASL_PLAIN_PASSWORD = hunter22",
    "{'sasl_plain_password': 'hun\\'ter22'}",
])
def test_secret_settings_are_masked_by_name(text):
    masked = redact.redact(text)
    assert "hunter22" not in masked and "ter22" not in masked
    assert redact.MASK in masked


def test_other_settings_stay_readable():
    text = "{'sasl_plain_username': 'bob', 'ssl_cafile': '/ca.pem', 'acks': 'all'}"
    assert redact.redact(text) == text


def test_known_secrets_are_masked_wherever_they_appear():
    redact.remember([SECRET, "pw"])  # "pw" is too short to mask by value
    assert redact.redact(f"auth failed with {SECRET}!") == "auth failed with ***!"
    assert redact.redact("pw stays") == "pw stays"


def test_config_knows_its_secrets_from_options_and_file(tmp_path):
    path = tmp_path / "kafka.properties"
    path.write_text(f"# SASL\nsasl_plain_password={SECRET}\nsasl_plain_username=bob\n\n")
    cfg = Config(kafka_options="security_protocol=SASL_SSL,ssl_password=keypass1",
                 kafka_options_file=str(path))
    assert cfg.client_options() == {"sasl_plain_password": SECRET, "sasl_plain_username": "bob",
                                    "security_protocol": "SASL_SSL", "ssl_password": "keypass1"}
    assert sorted(cfg.secrets()) == sorted([SECRET, "keypass1"])
    assert SECRET not in repr(cfg)


def test_options_on_the_command_line_override_the_file(tmp_path):
    path = tmp_path / "kafka.properties"
    path.write_text("acks=1\nclient_id=a\n")
    cfg = Config(kafka_options="acks=all", kafka_options_file=str(path))
    assert cfg.client_options() == {"acks": "all", "client_id": "a"}


def test_a_malformed_option_is_named_by_place_not_shown(tmp_path):
    from stream.errors import ConfigError

    with pytest.raises(ConfigError) as caught:  # a comma inside a password splits it
        Config(kafka_options="sasl_plain_password=abc,defgh")
    assert "defgh" not in str(caught.value) and "item 2" in str(caught.value)
    path = tmp_path / "bad"
    path.write_text("sasl_plain_password=x\nhunter22\n")
    with pytest.raises(ConfigError, match="line 2") as caught:
        Config(kafka_options_file=str(path))
    assert "hunter22" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        Config(kafka_options_file=str(tmp_path / "missing"))


def _logger_to(stream: io.StringIO, name: str) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.addFilter(redact.RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_the_filter_masks_messages_arguments_and_tracebacks():
    out = io.StringIO()
    logger = _logger_to(out, "test.redact.filter")
    config = {"bootstrap_servers": "b:9092", "sasl_plain_password": SECRET}
    logger.debug("Starting KafkaConsumer with configuration: %s", config)
    logger.info("a dict alone: %(sasl_plain_password)s", config)
    logger.warning("later, by value: %s", SECRET)  # learned from the mapping above
    try:
        raise RuntimeError(f"login with {SECRET} refused")
    except RuntimeError:
        logger.exception("failed")
    logger.info("stack", stack_info=True)
    text = out.getvalue()
    assert SECRET not in text and "Pa55" not in text
    assert "Starting KafkaConsumer" in text and "RuntimeError" in text and "b:9092" in text


def test_install_filters_every_root_handler_once_and_holds_kafka_at_info(monkeypatch):
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [handler])
    kafka = logging.getLogger("kafka")
    monkeypatch.setattr(kafka, "level", kafka.level)
    redact.install(logging.INFO)
    redact.install(logging.INFO)
    assert sum(isinstance(f, redact.RedactingFilter) for f in handler.filters) == 1
    assert kafka.level == logging.INFO


def test_kafka_debug_is_asked_by_the_environment():
    assert redact.kafka_debug_asked({"DWELL_DEBUG_KAFKA": "1"})
    assert not redact.kafka_debug_asked({})
