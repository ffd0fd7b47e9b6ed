"""The shipped operations files under deploy/: Prometheus, Grafana, Docker, systemd.

Static checks only: no network, no Docker, no running Prometheus. ``promtool`` (Debian's
``prometheus`` package, ``make prometheus``) is required: the rule and config checks and
the alert unit tests run through it.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import (
    ALERTS,
    COMPOSE,
    DASHBOARD,
    DATASOURCE_UID,
    DEPLOY,
    DISTRIBUTED_ONLY_METRICS,
    DOCKERFILE,
    EXPORTED_METRICS,
    PROMETHEUS_CONFIG,
    REPO,
    SYSTEMD_ENV,
    SYSTEMD_UNIT,
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    dashboard_panels,
    dashboard_targets,
    load_dashboard,
    metric_names,
    substitute_variables,
)

ROWS = ["Learning quality", "Drift", "Throughput and lag", "Reliability",
        "Ranks (distributed jobs)", "Serving"]
ALERT_NAMES = {
    "DwellAucLow", "DwellDriftDetected", "DwellAucDrop", "DwellConsumerLagGrowing",
    "DwellNoProgress", "DwellLearnerDown", "DwellCheckpointStale", "DwellDeadLetterRateHigh",
    "DwellDeadLetterWritesFailing", "DwellRankFallingBehind", "DwellModelBelowBaseline",
    "DwellServingModelStale",
}
SERVICES = {"kafka", "learner", "replay", "serve", "prometheus", "grafana"}
# Variables that are not Config fields but that dwell reads.
EXTRA_ENV = {"DWELL_CONFIG", "DWELL_HOME"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run `make prometheus` (Debian's prometheus "
                    "package) to install it", pytrace=False)
    return path


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{shlex.join(result.args)}:\n{result.stdout}{result.stderr}"


# ------------------------------------------------------------------------------ Prometheus

def test_prometheus_config_is_valid(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert_ok(result)
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "check", "rules", ALERTS))


def test_prometheus_config_scrapes_the_learner_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dwell"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["learner:9464"]
    (serve,) = [j for j in config["scrape_configs"] if j["job_name"] == "dwell-serve"]
    assert [t for sc in serve["static_configs"] for t in sc["targets"]] == ["serve:8080"]
    compose = yaml.safe_load(COMPOSE.read_text())
    assert "learner" in compose["services"]
    assert "9464:9464" in compose["services"]["learner"]["ports"]


def test_alerts_are_the_expected_set() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert set(names) == ALERT_NAMES


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_and_annotations(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    for key in ("summary", "description"):
        assert str(rule["annotations"].get(key, "")).strip(), f"{rule['alert']}: no {key}"


def test_drift_alert_fires_at_once() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "DwellDriftDetected"]
    assert rule.get("for", "0m") in ("0m", "0s", "0")


def test_alerts_filter_by_job_only_on_up() -> None:
    for rule in alert_rules():
        if 'job="dwell"' in rule["expr"]:
            assert rule["expr"].strip().startswith("up{"), rule["alert"]


def test_dashboard_and_alert_metrics_are_exported() -> None:
    used = set()
    for expr in dashboard_expressions() + alert_expressions():
        used |= metric_names(expr)
    assert used <= EXPORTED_METRICS, sorted(used - EXPORTED_METRICS)
    # Anywhere in the files, descriptions and summaries included.
    for path in (DASHBOARD, ALERTS):
        unknown = metric_names(path.read_text()) - EXPORTED_METRICS
        assert not unknown, f"{path.name}: {sorted(unknown)}"


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL: promtool parses it as a recording rule."""
    exprs = dashboard_expressions()
    assert exprs
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run_promtool(promtool, "check", "rules", path))


# Synthetic series and the alerts they must raise (promtool test rules). Times are minutes
# from the Unix epoch, which is also what time() returns there.
_L = 'instance="learner:9464",job="dwell"'
_S = 'instance="serve:8080",job="dwell-serve"'
ALERT_CASES = [
    {   # the model's newest event ages past 15 minutes; then a server with no model (NaN)
        "input_series": [
            {"series": f"dwell_serving_model_age_seconds{{{_S}}}",
             "values": "60+60x30"},
            {"series": 'dwell_serving_model_age_seconds{instance="serve2:8080",'
                       'job="dwell-serve"}', "values": " ".join(["NaN"] * 31)},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "DwellServingModelStale", "exp_alerts": []},
            {"eval_time": "16m", "alertname": "DwellServingModelStale",
             "exp_alerts": [{"exp_labels": {"severity": "warning",
                                            "instance": "serve2:8080", "job": "dwell-serve"}}]},
            {"eval_time": "25m", "alertname": "DwellServingModelStale",
             "exp_alerts": [{"exp_labels": {"severity": "warning",
                                            "instance": "serve:8080", "job": "dwell-serve"}},
                            {"exp_labels": {"severity": "warning",
                                            "instance": "serve2:8080", "job": "dwell-serve"}}]},
        ],
    },
    {
        "input_series": [{"series": f'dwell_drift_detections_total{{{_L},signal="auc"}}',
                          "values": "0 0 1 1 1 1"}],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "DwellDriftDetected", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "DwellDriftDetected",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "signal": "auc",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {
        "input_series": [
            {"series": f'dwell_auc{{{_L},window="long",target="dwell"}}', "values": "0.55x20"},
            {"series": f'dwell_auc{{{_L},window="long",target="explicit"}}', "values": "0.5x20"},
            {"series": f'dwell_auc{{{_L},window="short",target="dwell"}}', "values": "0.5x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "DwellAucLow", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "DwellAucLow",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "window": "long",
                                            "target": "dwell", "instance": "learner:9464",
                                            "job": "dwell"}}]},
        ],
    },
    {   # the model falls below the counting baseline after 10 minutes
        "input_series": [
            {"series": f'dwell_auc{{{_L},window="long",target="dwell"}}', "values": "0.74x60"},
            {"series": f'dwell_baseline_auc{{{_L},window="long",target="dwell"}}',
             "values": "0.70x10 0.76x50"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "DwellModelBelowBaseline", "exp_alerts": []},
            {"eval_time": "45m", "alertname": "DwellModelBelowBaseline",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "window": "long",
                                            "target": "dwell", "instance": "learner:9464",
                                            "job": "dwell"}}]},
        ],
    },
    {
        "input_series": [{"series": f'dwell_auc_drift{{{_L},target="dwell"}}',
                          "values": "0 0 -0.1x10"}],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "DwellAucDrop",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "target": "dwell",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {
        "input_series": [
            {"series": f'dwell_consumer_lag{{{_L},partition="0"}}', "values": "20000+500x40"},
            {"series": f'dwell_consumer_lag{{{_L},partition="1"}}', "values": "10x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "DwellConsumerLagGrowing",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    },
    {
        "input_series": [
            {"series": f"dwell_events_consumed_total{{{_L}}}", "values": "100x30"},
            {"series": f'dwell_consumer_lag{{{_L},partition="0"}}', "values": "50x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "DwellNoProgress",
             "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        ],
    },
    {
        "input_series": [{"series": 'up{job="dwell",instance="learner:9464"}',
                          "values": "1 1 0 0 0 0 0"}],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "DwellLearnerDown", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "DwellLearnerDown",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "dwell",
                                            "instance": "learner:9464"}}]},
        ],
    },
    {   # events flow, but the last checkpoint was written at 60 s and none since
        "input_series": [
            {"series": f"dwell_checkpoint_healthy{{{_L}}}", "values": "1x30"},
            {"series": f"dwell_checkpoint_last_timestamp_seconds{{{_L}}}", "values": "60x30"},
            {"series": f"dwell_events_consumed_total{{{_L}}}", "values": "0+100x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "DwellCheckpointStale", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "DwellCheckpointStale",
             "exp_alerts": [{"exp_labels": {"severity": "critical",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {   # idle: no event since the last checkpoint, so none is written (nothing new)
        "input_series": [
            {"series": f"dwell_checkpoint_healthy{{{_L}}}", "values": "1x40"},
            {"series": f"dwell_checkpoint_last_timestamp_seconds{{{_L}}}", "values": "60x40"},
            {"series": f"dwell_events_consumed_total{{{_L}}}", "values": "500x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "DwellCheckpointStale", "exp_alerts": []},
        ],
    },
    {   # checkpoints disabled or none yet (timestamp 0) and healthy: no alert
        "input_series": [
            {"series": f"dwell_checkpoint_healthy{{{_L}}}", "values": "1x30"},
            {"series": f"dwell_checkpoint_last_timestamp_seconds{{{_L}}}", "values": "0x30"},
            {"series": f"dwell_events_consumed_total{{{_L}}}", "values": "0+100x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "25m", "alertname": "DwellCheckpointStale", "exp_alerts": []},
        ],
    },
    {
        "input_series": [{"series": f"dwell_checkpoint_healthy{{{_L}}}", "values": "1 1 0x10"}],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "DwellCheckpointStale",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "learner:9464",
                                            "job": "dwell"}}]},
        ],
    },
    {   # 10% of the consumed records are invalid
        "input_series": [
            {"series": f"dwell_events_consumed_total{{{_L}}}", "values": "0+600x30"},
            {"series": f'dwell_events_invalid_total{{{_L},reason="out_of_range"}}',
             "values": "0+60x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "DwellDeadLetterRateHigh", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "DwellDeadLetterRateHigh",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        ],
    },
    {
        "input_series": [{"series": f"dwell_dead_letter_failures_total{{{_L}}}",
                          "values": "0 0 0+1x20"}],
        "alert_rule_test": [
            {"eval_time": "12m", "alertname": "DwellDeadLetterWritesFailing",
             "exp_alerts": [{"exp_labels": {"severity": "critical",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {   # a 2-rank job (rank 0 exports both ranks' lag): rank 1 falls behind, rank 0 keeps up
        "input_series": [
            {"series": f'dwell_rank_lag_records{{{_L},rank="0"}}', "values": "100x30"},
            {"series": f'dwell_rank_lag_records{{{_L},rank="1"}}', "values": "20000+500x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "DwellRankFallingBehind", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "DwellRankFallingBehind",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "rank": "1",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {   # 4 ranks, one straggler among ranks that keep up
        "input_series": [
            *({"series": f'dwell_rank_lag_records{{{_L},rank="{r}"}}', "values": f"{lag}x30"}
              for r, lag in enumerate([200, 300, 250])),
            {"series": f'dwell_rank_lag_records{{{_L},rank="3"}}', "values": "50000x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "DwellRankFallingBehind",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "rank": "3",
                                            "instance": "learner:9464", "job": "dwell"}}]},
        ],
    },
    {   # the whole job is behind, evenly: DwellConsumerLagGrowing's business, not this one's
        "input_series": [
            {"series": f'dwell_rank_lag_records{{{_L},rank="{r}"}}', "values": "30000+500x30"}
            for r in range(3)
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "DwellRankFallingBehind", "exp_alerts": []},
        ],
    },
]


def test_alerts_fire_on_synthetic_series(promtool: str, tmp_path: Path) -> None:
    """promtool test rules: each alert fires (and not too early) on a made-up history.

    The annotations are dropped from the copy under test: promtool compares them verbatim,
    and their templates are already checked by ``promtool check rules``.
    """
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", **case} for case in ALERT_CASES]}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = {t["alertname"] for case in ALERT_CASES for t in case["alert_rule_test"]}
    assert tested == ALERT_NAMES
    assert_ok(run_promtool(promtool, "test", "rules", tmp_path / "alerts_test.yml"))


def _rank_panel_exprs() -> dict[str, list[str]]:
    """Panel title: its queries (Grafana variables replaced), for the "Ranks" row."""
    dashboard = load_dashboard()
    panels = {}
    for panel, target in dashboard_targets(dashboard):
        if metric_names(target["expr"]) & DISTRIBUTED_ONLY_METRICS:
            panels.setdefault(panel["title"], []).append(substitute_variables(target["expr"]))
    return panels


def test_rank_panels_on_a_synthetic_job(promtool: str, tmp_path: Path) -> None:
    """The "Ranks (distributed jobs)" queries give the right values on made-up series.

    A single learner has no rank samples, so tests/integration/test_monitoring.py can only
    check that these queries evaluate; their values are checked here (promtool test rules).
    Rank 0 exports every rank's lag and events/s (3 ranks here); each rank, its own
    instance, observes its synchronisations (here 2 ranks, 1 per second each, all between 5
    and 10 ms).
    """
    from prometheus_client import CollectorRegistry

    from learner.service.monitoring import Metrics

    panels = _rank_panel_exprs()
    assert set(panels) == {"Lag by rank", "Events per second by rank", "Sync duration"}
    (lag, median), (eps,), (p50, p99) = (panels["Lag by rank"],
                                         panels["Events per second by rank"],
                                         panels["Sync duration"])
    family = next(f for f in Metrics(CollectorRegistry()).registry.collect()
                  if f.name == "dwell_sync_duration_seconds")
    bounds = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
    assert "0.005" in bounds and "0.01" in bounds and bounds[-1] == "+Inf"
    r0, r1 = 'instance="learner-0:9464",job="dwell"', 'instance="learner-1:9464",job="dwell"'
    series = [
        {"series": f'dwell_rank_lag_records{{{r0},rank="0"}}', "values": "100x10"},
        {"series": f'dwell_rank_lag_records{{{r0},rank="1"}}', "values": "5000x10"},
        {"series": f'dwell_rank_lag_records{{{r0},rank="2"}}', "values": "300x10"},
        {"series": f'dwell_rank_events_per_second{{{r0},rank="0"}}', "values": "2000x10"},
        {"series": f'dwell_rank_events_per_second{{{r0},rank="1"}}', "values": "1500x10"},
        *({"series": f'dwell_sync_duration_seconds_bucket{{{inst},le="{le}"}}',
           "values": "0x10" if float(le) < 0.01 else "0+60x10"}
          for inst in (r0, r1) for le in bounds),
    ]

    def labels(name: str, rank: str) -> str:
        return f'{name}{{{r0},rank="{rank}"}}'

    def near(expr: str, value: float) -> dict:  # the quantiles are interpolated: a tolerance
        return {"expr": f"count(abs(({expr}) - {value}) < 1e-9)", "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": 1}]}

    tests = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [
            {"expr": lag, "eval_time": "10m", "exp_samples": [
                {"labels": labels("dwell_rank_lag_records", r), "value": v}
                for r, v in (("0", 100), ("1", 5000), ("2", 300))]},
            {"expr": median, "eval_time": "10m", "exp_samples": [
                {"labels": '{instance="learner-0:9464"}', "value": 300}]},
            {"expr": eps, "eval_time": "10m", "exp_samples": [
                {"labels": labels("dwell_rank_events_per_second", r), "value": v}
                for r, v in (("0", 2000), ("1", 1500))]},
            near(p50, 0.0075),  # halfway through the (0.005, 0.01] bucket
            near(p99, 0.00995),
        ],
    }]}
    path = tmp_path / "rank_panels_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert_ok(run_promtool(promtool, "test", "rules", path))


# --------------------------------------------------------------------------------- Grafana

def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "dwell"
    assert dashboard["title"] == "dwell learner"
    assert dashboard["schemaVersion"] == 39


def test_dashboard_datasource_is_a_variable() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["includeAll"] and instance["multi"]
    assert "label_values(dwell_events_consumed_total, instance)" in json.dumps(instance)
    for panel in dashboard_panels(dashboard):
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, \
                panel["title"]
    for panel, target in dashboard_targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, \
            panel["title"]


def _walk(node: object, path: str = "") -> list[tuple[str, str, object]]:
    """(path, key, value) of every key of every object in a JSON document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key, value))
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_dashboard_hard_codes_no_datasource() -> None:
    dashboard = load_dashboard()
    for path, key, value in _walk(dashboard):
        if key == "uid" and path:  # the dashboard's own uid is at the top
            assert value == DATASOURCE_UID, f"{path}.uid = {value!r}"
        if key == "datasource" and not isinstance(value, dict):
            assert value in (None, DATASOURCE_UID), f"{path}.datasource = {value!r}"
        if key == "datasource" and isinstance(value, dict):
            assert value.get("uid") == DATASOURCE_UID, f"{path}.datasource = {value!r}"


def test_dashboard_rows_in_order() -> None:
    dashboard = load_dashboard()
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ROWS
    ys = [p["gridPos"]["y"] for p in dashboard["panels"] if p["type"] == "row"]
    assert ys == sorted(ys)


def test_dashboard_panels() -> None:
    dashboard = load_dashboard()
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len({p["id"] for p in dashboard_panels(dashboard)}) == len(list(
        dashboard_panels(dashboard)))
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "table"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]
            assert "legendFormat" in target, panel["title"]
    units = {p["fieldConfig"]["defaults"].get("unit") for p in panels}
    assert {"percentunit", "s", "ops"} <= units


def test_dashboard_queries_filter_by_instance() -> None:
    """Each dwell_* selector carries the instance filter, merged into a single selector."""
    dashboard = load_dashboard()
    for panel, target in dashboard_targets(dashboard):
        expr = target["expr"]
        for match in re.finditer(r"\b(dwell_\w+|up)\b(\{[^}]*\})?", expr):
            if match.group(1) == "up" and not match.group(2):
                continue
            assert match.group(2) and 'instance=~"$instance"' in match.group(2), \
                f"{panel['title']}: {expr}"
        assert not re.search(r"\}\s*\{", expr), f"{panel['title']}: two selectors: {expr}"


def test_dashboard_expressions_helper() -> None:
    exprs = dashboard_expressions()
    assert len(exprs) == sum(1 for _ in dashboard_targets(load_dashboard()))
    assert all("$" not in e for e in exprs)
    assert 'dwell_auc{instance=~".*",window="short",target="dwell"}' in exprs
    assert len(alert_expressions()) == len(ALERT_NAMES)


def test_dashboard_covers_the_metrics() -> None:
    used = set()
    for expr in dashboard_expressions():
        used |= metric_names(expr)
    expected = {
        "dwell_auc", "dwell_log_loss", "dwell_loss", "dwell_positive_rate", "dwell_vague_share",
        "dwell_events_labelled_total", "dwell_ig_branch_total", "dwell_vague_positive_share",
        "dwell_auc_drift", "dwell_drift_detections_total",
        "dwell_drift_last_detection_timestamp_seconds", "dwell_events_consumed_total",
        "dwell_consumer_lag", "dwell_batch_duration_seconds", "dwell_step_duration_seconds",
        "dwell_event_to_update_seconds", "dwell_event_freshness_seconds", "dwell_idmap_size",
        "dwell_idmap_evictions_total", "dwell_events_invalid_total",
        "dwell_checkpoint_last_timestamp_seconds", "dwell_checkpoint_healthy",
        "dwell_checkpoint_failures_total", "dwell_dead_letter_failures_total",
        "dwell_offset_commits_total", "dwell_learner_info",
        "dwell_rank_lag_records", "dwell_rank_events_per_second", "dwell_sync_duration_seconds",
        "dwell_serving_requests_total", "dwell_serving_request_duration_seconds",
        "dwell_serving_errors_total", "dwell_serving_model_version",
        "dwell_serving_model_age_seconds", "dwell_serving_rankings_total",
    }
    assert expected <= used, sorted(expected - used)


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert (ds["name"], ds["uid"], ds["type"]) == ("Prometheus", "prometheus", "prometheus")
    assert ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    dashboards = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dwell.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ---------------------------------------------------------------------------------- Docker

def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services() -> None:
    compose = _compose()
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"
    for name in ("learner", "replay"):
        depends = compose["services"][name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
    assert compose["services"]["kafka"]["healthcheck"]["test"]


def test_compose_paths_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared {source}"
        build = service.get("build")
        if build is not None:
            context = DEPLOY / (build if isinstance(build, str) else build["context"])
            assert context.is_dir(), name
            dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                    if isinstance(build, dict) else "Dockerfile")
            assert dockerfile.resolve() == DOCKERFILE.resolve(), name
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (DEPLOY / path).exists(), f"{name}: {path}"


def test_compose_commands_parse() -> None:
    """The learner's and the replay's commands are valid `dwell` command lines."""
    from learner.cli import build_parser

    compose = _compose()
    parser = build_parser()
    learn = parser.parse_args(compose["services"]["learner"]["command"])
    assert (learn.command, learn.bootstrap, learn.metrics_addr) == ("learn", "kafka:9092",
                                                                    "0.0.0.0")
    assert learn.checkpoint_dir.startswith("/var/lib/dwell/")
    serve = parser.parse_args(compose["services"]["serve"]["command"])
    assert (serve.command, serve.bootstrap, serve.serve_addr) == ("serve", "kafka:9092", "0.0.0.0")
    assert serve.train_log is None  # the model topic's model
    replay = parser.parse_args(compose["services"]["replay"]["command"])
    assert (replay.command, replay.speed) == ("replay", 3600)
    # The image's WORKDIR is /opt/dwell, holding the repository's data/ folder.
    assert replay.file.startswith("/opt/dwell/")
    assert (REPO / replay.file.removeprefix("/opt/dwell/")).is_file()


def _config_fields() -> set[str]:
    import dataclasses

    from learner.service.config import Config

    return {f"DWELL_{f.name.upper()}" for f in dataclasses.fields(Config)} | EXTRA_ENV


def test_environment_variables_are_settings() -> None:
    fields = _config_fields()
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        keys = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key.startswith("DWELL_"):
                assert key in fields, f"{name}: {key}"
    env_keys = re.findall(r"^#?\s*(DWELL_\w+)=", SYSTEMD_ENV.read_text(), re.M)
    assert {"DWELL_BOOTSTRAP", "DWELL_TOPIC", "DWELL_GROUP", "DWELL_CHECKPOINT_DIR",
            "DWELL_METRICS_ADDR", "DWELL_METRICS_PORT", "DWELL_KAFKA_OPTIONS"} <= set(env_keys)
    assert set(env_keys) <= fields, sorted(set(env_keys) - fields)


def test_dockerfile_copies_what_exists() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    copies = re.findall(r"^COPY\s+(.+)$", text, re.M)
    assert copies
    for line in copies:
        args = [a for a in shlex.split(line) if not a.startswith("--")]
        for source in args[:-1]:
            assert list(REPO.glob(source)), f"COPY {source}: not in the repository"
    assert re.search(r'^ENTRYPOINT \["dwell"\]$', text, re.M)
    assert re.search(r'^CMD \["learn"\]$', text, re.M)
    assert 'dwell = "learner.cli:main"' in (REPO / "pyproject.toml").read_text()


# --------------------------------------------------------------------------------- systemd

def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(SYSTEMD_UNIT.read_text())
    return parser


def test_systemd_unit() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["ExecStart"].split()[:2] == ["/opt/dwell/.venv/bin/dwell", "learn"]
    assert service["EnvironmentFile"] == "/etc/dwell/dwell.env"
    assert service["Type"] == "simple"
    assert service["User"] == "dwell"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["StateDirectory"] == "dwell"
    assert service["NoNewPrivileges"] == "yes"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify, where it works offline; the venv need not exist here."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / SYSTEMD_UNIT.name
    copy.write_text(SYSTEMD_UNIT.read_text().replace(
        "ExecStart=/opt/dwell/.venv/bin/dwell", f"ExecStart={shutil.which('true') or '/bin/true'}"))
    try:
        result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True,
                                timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd-analyze verify does not run here: {exc}")
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if SYSTEMD_UNIT.name in line]
    assert not problems, "\n".join(problems)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify does not work here: {output.strip()[:300]}")
