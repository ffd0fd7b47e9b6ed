"""The shipped operations files under ``deploy/`` and what their tests need from them.

Shared by ``tests/unit/test_deploy.py`` (static checks) and integration tests that run the
dashboard's and the alerts' expressions against a real Prometheus scraping a real learner.

>>> sorted(metric_names('histogram_quantile(0.9, rate(dwell_batch_duration_seconds_bucket[5m]))'))
['dwell_batch_duration_seconds']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus/prometheus.yml"
ALERTS = DEPLOY / "prometheus/alerts.yml"
DASHBOARD = DEPLOY / "grafana/dashboards/dwell.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker/Dockerfile"
SYSTEMD_UNIT = DEPLOY / "systemd/dwell-learner.service"
SYSTEMD_ENV = DEPLOY / "systemd/dwell.env"

# Every metric the learner and dwell serve export (histograms by their base name). The
# dashboard and the alert rules may use these and no other dwell_* name.
EXPORTED_METRICS = frozenset({
    "dwell_learner_info",
    "dwell_events_consumed_total",
    "dwell_events_invalid_total",
    "dwell_events_labelled_total",
    "dwell_train_steps_total",
    "dwell_ig_branch_total",
    "dwell_vague_sampled_total",
    "dwell_vague_positive_share",
    "dwell_batches_total",
    "dwell_offset_commits_total",
    "dwell_loss",
    "dwell_log_loss",
    "dwell_auc",
    "dwell_baseline_auc",
    "dwell_auc_drift",
    "dwell_drift_detections_total",
    "dwell_drift_last_detection_timestamp_seconds",
    "dwell_positive_rate",
    "dwell_vague_share",
    "dwell_batch_duration_seconds",
    "dwell_step_duration_seconds",
    "dwell_event_to_update_seconds",
    "dwell_event_freshness_seconds",
    "dwell_consumer_lag",
    "dwell_idmap_size",
    "dwell_idmap_evictions_total",
    "dwell_checkpoint_last_timestamp_seconds",
    "dwell_checkpoint_duration_seconds",
    "dwell_checkpoint_failures_total",
    "dwell_checkpoint_healthy",
    "dwell_dead_letter_failures_total",
    "dwell_dead_letters_written_total",
    "dwell_dead_letters_truncated_total",
    "dwell_sync_duration_seconds",
    "dwell_rank_lag_records",
    "dwell_rank_events_per_second",
    # dwell serve (learner.serving.metrics)
    "dwell_serving_requests_total",
    "dwell_serving_request_duration_seconds",
    "dwell_serving_errors_total",
    "dwell_serving_rankings_total",
    "dwell_serving_candidates",
    "dwell_serving_model_version",
    "dwell_serving_model_age_seconds",
    "dwell_serving_pool_videos",
    "dwell_serving_pool_events_total",
})

# The metrics that only have samples in a distributed job (``dwell learn`` as one rank of
# several): rank 0 exports the per-rank gauges, and only ranks synchronise. A single learner
# exports the gauges with no sample and the histogram with no observation, so a dashboard
# query made of these alone has no data (or only NaN quantiles) there.
DISTRIBUTED_ONLY_METRICS = frozenset({
    "dwell_sync_duration_seconds",
    "dwell_rank_lag_records",
    "dwell_rank_events_per_second",
})

DATASOURCE_UID = "${datasource}"

# Grafana variables in expressions, and what stands in for them outside Grafana.
_VARIABLES = {
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")
_METRIC = re.compile(r"\bdwell_\w+")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
    """(panel, target) for every query target of every panel."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def substitute_variables(expr: str) -> str:
    """``expr`` with the Grafana variables it uses replaced by plain PromQL values."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in _VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return _VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """The PromQL of every dashboard target, ``$instance`` replaced by ``.*``."""
    return [
        substitute_variables(target["expr"])
        for _, target in dashboard_targets(load_dashboard(path))
        if target.get("expr")
    ]


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Every alerting rule of every group of a Prometheus rule file."""
    data = yaml.safe_load(Path(path).read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def alert_expressions(path: Path = ALERTS) -> list[str]:
    """The PromQL of every alerting rule."""
    return [str(rule["expr"]).strip() for rule in alert_rules(path)]


def metric_names(text: str) -> set[str]:
    """The ``dwell_*`` metric names in ``text``, histogram series suffixes stripped."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(text)}
