"""No secret in any log or on /metrics, at any level; an unreachable broker or a refused
authentication is one line and a non-zero status, in bounded time.

Every run here is the most talkative there is: ``-v``, the Kafka clients' DEBUG asked for
(``DWELL_DEBUG_KAFKA=1``: kafka-python then logs its whole configuration) and the client
child processes at DEBUG too (``DWELL_LOG_LEVEL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stream.broker import free_port

SECRET = "Zx9-s3cr3t,P4ss"  # a comma: only the file can carry it
KEY_PASSWORD = "k3y-pa55phrase"
SECURITY = {
    "sasl": ("security_protocol=SASL_PLAINTEXT", "sasl_mechanism=PLAIN",
             "sasl_plain_username=bob"),
    "ssl": ("security_protocol=SSL", "ssl_check_hostname=false"),
}
TALKATIVE = {"DWELL_DEBUG_KAFKA": "1", "DWELL_LOG_LEVEL": "DEBUG"}


def _options_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "kafka.properties"
    path.write_text("# test secrets\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _dwell(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "learner.cli", "-v", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **TALKATIVE, **(env or {})})


def _assert_no_secret(text: str) -> None:
    for secret in (SECRET, KEY_PASSWORD, "s3cr3t", "pa55phrase"):
        assert secret not in text, f"{secret!r} in the output"


@pytest.mark.parametrize("security", SECURITY)
@pytest.mark.parametrize("command", ["learn", "replay"])
def test_no_secret_in_the_log_of_a_refused_connection(kafka_bootstrap, tmp_path, command,
                                                      security):
    """The broker speaks PLAINTEXT: SASL or TLS cannot connect. The secrets come by file
    (the password) and by environment (the key's): neither on the command line."""
    path = _options_file(tmp_path, f"sasl_plain_password={SECRET}", *SECURITY[security])
    args = [command, "--bootstrap", kafka_bootstrap, "--topic", "secrets",
            "--kafka-options-file", str(path), "--connect-timeout-s", "3"]
    if command == "learn":
        args += ["--checkpoint-dir", "", "--metrics-port", "-1", "--until-end"]
    started = time.monotonic()
    proc = _dwell(*args, env={"DWELL_KAFKA_OPTIONS": f"ssl_password={KEY_PASSWORD}"})
    output = proc.stdout + proc.stderr
    _assert_no_secret(output)
    assert "with configuration" in output and "'sasl_plain_password': '***'" in output
    assert proc.returncode == 1, output[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dwell: error: no answer from Kafka at {kafka_bootstrap} "), last
    assert "Traceback" not in output
    assert time.monotonic() - started < 60


def test_no_secret_in_the_logs_or_metrics_of_a_running_learner(kafka_bootstrap, topic,
                                                               tmp_path):
    """Secret settings that a PLAINTEXT broker ignores: the learner runs, its client child
    processes log their configuration at DEBUG, /metrics is served."""
    path = _options_file(tmp_path, "security_protocol=PLAINTEXT", "sasl_plain_username=bob",
                         f"sasl_plain_password={SECRET}", f"ssl_password={KEY_PASSWORD}")
    port = free_port()
    log = tmp_path / "learner.log"  # not a pipe: at DEBUG the learner would fill it and block
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "learner.cli", "-v", "learn", "--bootstrap", kafka_bootstrap,
             "--topic", topic, "--group", f"{topic}-g", "--checkpoint-dir", "",
             "--metrics-port", str(port), "--kafka-options-file", str(path),
             "--idle-timeout-s", "60", "--client-process", "on"],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **TALKATIVE})
    try:
        metrics = _scrape(f"http://127.0.0.1:{port}/metrics", proc, timeout=90)
        time.sleep(3)  # a few polls, commits and progress lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    output = log.read_text()
    _assert_no_secret(metrics)
    _assert_no_secret(output)
    assert "dwell_" in metrics
    assert "child DEBUG kafka" in output and "'sasl_plain_password': '***'" in output
    assert proc.returncode == 0, output[-3000:]


def _scrape(url: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the learner ended early"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no /metrics at {url} in {timeout} s")


@pytest.mark.parametrize("command", ["learn", "replay"])
def test_an_unreachable_broker_is_one_line_and_a_non_zero_status(command):
    """Nothing listens on port 1: one line saying what was tried, for how long, what to check;
    within the connect timeout (plus start-up), never a traceback, never status 0."""
    args = [command, "--bootstrap", "127.0.0.1:1", "--connect-timeout-s", "4"]
    if command == "learn":
        args += ["--checkpoint-dir", "", "--metrics-port", "-1"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "learner.cli", *args], capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dwell: error: no answer from Kafka at 127.0.0.1:1 (PLAINTEXT) "
                               "after 4.0 s"), lines[0]
    assert "check --bootstrap" in lines[0] and "--connect-timeout-s" in lines[0]
    assert elapsed < 40, elapsed
