"""A real Prometheus server (Debian's ``prometheus``) for the monitoring tests.

It runs the shipped ``deploy/prometheus/prometheus.yml`` with the shipped alert rules, changed
only where a test must: one of its jobs (the learner's, ``dwell``, or the server's,
``dwell-serve``) and its target's address, and scrape and rule evaluation every second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stream.broker import free_ports
from tests.deploy_files import ALERTS, PROMETHEUS_CONFIG


class PrometheusServer:
    """Start with :meth:`start`, query with :meth:`query`, stop with :meth:`stop`."""

    def __init__(self, workdir: Path, target: str, interval: str = "1s",
                 job: str = "dwell") -> None:
        self.workdir, self.target, self.interval, self.job = workdir, target, interval, job
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make prometheus` "
                               "(Debian package prometheus)")
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval=self.interval, evaluation_interval=self.interval)
        config["rule_files"] = [str(ALERTS)]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == self.job]
        job["static_configs"] = [{"targets": [self.target]}]
        config["scrape_configs"] = [job]  # the one scraped here
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._log = open(self.workdir / "prometheus.log", "w")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def api(self, endpoint: str, **params: Any) -> Any:
        """GET ``/api/v1/<endpoint>``; the ``data`` of a successful answer, else raise."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{endpoint}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with an error body
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{endpoint} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar, as a one-element list) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"value": data["result"]}]
        return data["result"]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            self._log.close()
