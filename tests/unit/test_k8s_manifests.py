"""The example Kubernetes manifests under deploy/k8s/: Strimzi Kafka and the learner job.

Static checks only (no cluster): every document is a named Kubernetes object, the learners'
command lines parse with torchrun's own parser and with `dwell learn`'s, their settings are
dwell settings, and they point at the topics and the bootstrap Service of the Strimzi file.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner.cli import build_parser
from learner.service.config import Config
from tests.deploy_files import COMPOSE, DEPLOY

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
_ENV_REFERENCE = re.compile(r"\$\((\w+)\)")  # $(VAR) in args, expanded by the kubelet


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in _objects()
             if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _parse(parser: argparse.ArgumentParser, args: list[str], what: str) -> argparse.Namespace:
    """``parser.parse_args(args)``, an argparse error failing the test with its message."""
    try:
        return parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{what} does not parse {args}: exit {exc.code} (see stderr)")


def test_the_manifests_are_there() -> None:
    assert {p.name for p in MANIFESTS} >= {"kafka-strimzi.yaml", "learners.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_document_is_a_named_object(path: Path) -> None:
    docs = _documents(path)
    assert docs, path.name
    for doc in docs:
        assert isinstance(doc, dict), path.name
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        name = doc.get("metadata", {}).get("name")
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), \
            f"{doc['kind']}: metadata.name {name!r}"
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), keys


# ------------------------------------------------------------------------------- Strimzi

def test_strimzi_kraft_cluster_of_three_combined_nodes() -> None:
    kafka = _one("Kafka")
    pools = [o for o in _objects() if o["kind"] == "KafkaNodePool"]
    for resource in (kafka, *pools):
        # Strimzi's current API (v1beta2 was removed in 1.0.0)
        assert resource["apiVersion"] == "kafka.strimzi.io/v1", resource["kind"]
    assert "zookeeper" not in kafka["spec"]
    assert pools, "no KafkaNodePool: KRaft nodes come from node pools"
    for pool in pools:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert sum(p["spec"]["replicas"] for p in pools) == 3
    assert all(set(p["spec"]["roles"]) == {"controller", "broker"} for p in pools)
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["transaction.state.log.replication.factor"] == 3
    assert config["transaction.state.log.min.isr"] == 2
    assert "topicOperator" in kafka["spec"]["entityOperator"]


def test_strimzi_topics_are_replicated() -> None:
    kafka = _one("Kafka")
    topics = [o for o in _objects() if o["kind"] == "KafkaTopic"]
    assert topics
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2


# ------------------------------------------------------------------------------ learners

def _statefulset() -> dict[str, Any]:
    return _one("StatefulSet", "dwell-learner")


def _container() -> dict[str, Any]:
    (container,) = _statefulset()["spec"]["template"]["spec"]["containers"]
    return container


def _configmap_env() -> dict[str, str]:
    container = _container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def _command_line(ordinal: int) -> list[str]:
    """The container's command and args as pod ``ordinal`` runs them ($(VAR) expanded)."""
    container = _container()
    pod_values = {"NODE_RANK": str(ordinal)}
    for var in container.get("env", []):
        field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field is not None:  # the downward API: only the pod index is expected
            assert field == "metadata.labels['apps.kubernetes.io/pod-index']", var
            assert var["name"] in pod_values, var
    env = {**_configmap_env(), **pod_values}

    def expand(arg: str) -> str:
        return _ENV_REFERENCE.sub(lambda m: env[m.group(1)], arg)

    args = [*container["command"], *container["args"]]
    assert all(isinstance(a, str) for a in args), "args must be strings in a pod spec"
    return [expand(a) for a in args]


def _torchrun(ordinal: int) -> argparse.Namespace:
    from torch.distributed.run import get_args_parser

    line = _command_line(ordinal)
    assert line[0] == "torchrun", line
    return _parse(get_args_parser(), line[1:], "torchrun")


def _learn_args(ordinal: int = 0) -> argparse.Namespace:
    run = _torchrun(ordinal)
    assert run.module and run.training_script == "learner.cli", run
    assert run.training_script_args[0] == "learn", run.training_script_args
    return _parse(build_parser(), run.training_script_args, "dwell")


def _learn_config(ordinal: int = 0) -> Config:
    """The settings the learner of pod ``ordinal`` runs with: flags over the pod's env."""
    args = _learn_args(ordinal)
    names = {f.name for f in dataclasses.fields(Config)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    return Config.load(flags=flags, env=_configmap_env())


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("-")}


def test_learner_command_line_uses_only_flags_dwell_learn_accepts() -> None:
    """Each flag spelled out in full: argparse would also take an abbreviation."""
    from torch.distributed.run import get_args_parser

    (commands,) = [a for a in build_parser()._actions
                   if isinstance(a, argparse._SubParsersAction)]
    learn = commands.choices["learn"]
    replicas = _statefulset()["spec"]["replicas"]
    assert replicas >= 2
    for ordinal in range(replicas):
        assert _learn_args(ordinal).command == "learn"  # parses
        run = _torchrun(ordinal)
        given = _flags(run.training_script_args)
        assert given and given <= _option_strings(learn), sorted(given - _option_strings(learn))
        script = _command_line(ordinal).index(run.training_script)
        torchrun = _flags(_command_line(ordinal)[1:script])
        assert torchrun <= _option_strings(get_args_parser()), torchrun


def test_torchrun_rendezvous_matches_the_statefulset() -> None:
    sts = _statefulset()
    replicas, service = sts["spec"]["replicas"], sts["spec"]["serviceName"]
    for ordinal in range(replicas):
        run = _torchrun(ordinal)
        assert run.rdzv_backend == "static"
        assert int(run.nnodes) == replicas  # one node of one rank per pod
        assert int(run.nproc_per_node) == 1
        assert run.node_rank == ordinal  # rank 0 (checkpoints) is always pod 0
        assert run.master_addr == f"{sts['metadata']['name']}-0.{service}"
        assert run.max_restarts >= 1
    headless = _one("Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["containerPort"] for p in _container()["ports"]}
    assert run.master_port in ports
    assert run.master_port in {p["port"] for p in headless["spec"]["ports"]}


def test_learner_settings_are_dwell_settings() -> None:
    fields = {f"DWELL_{f.name.upper()}" for f in dataclasses.fields(Config)}
    env = _one("ConfigMap", "dwell-learner")["data"]
    assert all(isinstance(v, str) for v in env.values()), "ConfigMap values must be strings"
    dwell = {k for k in env if k.startswith("DWELL_")}
    assert dwell <= fields, sorted(dwell - fields)
    # Left to torchrun: each rank's place in the job.
    assert not dwell & {"DWELL_RANK", "DWELL_WORLD_SIZE", "DWELL_MASTER_ADDR",
                        "DWELL_MASTER_PORT"}
    _learn_config()  # every value reads as its setting's type


def test_learner_settings_match_the_strimzi_resources() -> None:
    cfg = _learn_config()
    kafka = _one("Kafka")
    (listener,) = [li for li in kafka["spec"]["kafka"]["listeners"]
                   if li["type"] == "internal" and not li["tls"]]
    assert cfg.bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    topics = {t.get("spec", {}).get("topicName", t["metadata"]["name"]): t
              for t in _objects() if t["kind"] == "KafkaTopic"}
    assert cfg.topic in topics and cfg.dead_letter_topic in topics, (cfg.topic, sorted(topics))
    assert set(topics) == {cfg.topic, cfg.dead_letter_topic}
    # were a learner to create the event topic first, it would make the same partitions
    assert cfg.partitions == topics[cfg.topic]["spec"]["partitions"]
    assert _statefulset()["spec"]["replicas"] <= cfg.partitions  # no rank without partitions
    assert topics[cfg.dead_letter_topic]["spec"]["partitions"] == 1  # as dwell creates it


def test_learner_pods_expose_metrics_and_keep_checkpoints() -> None:
    cfg = _learn_config()
    sts = _statefulset()
    container = _container()
    assert cfg.metrics_addr == "0.0.0.0"  # reachable from Prometheus
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cfg.metrics_port)
    assert cfg.metrics_port in {p["containerPort"] for p in container["ports"]}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    # the checkpoint folder lies on a persistent volume claim of the pod
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert any(Path(cfg.checkpoint_dir).is_relative_to(m["mountPath"]) for m in mounts), \
        (cfg.checkpoint_dir, mounts)
    # SIGTERM: time to finish the round and write the last checkpoint
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= \
        cfg.final_commit_timeout_s


def test_learner_image_is_the_dwell_image() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert _container()["image"] == compose["services"]["learner"]["image"]


def test_serve_deployment_command_and_settings() -> None:
    """The serve Deployment's command parses with ``dwell serve``'s parser, its ConfigMap holds
    only dwell settings, and its readiness is the server's /healthz."""
    from learner.cli import build_parser

    deployment = _one("Deployment", "dwell-serve")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["dwell"]
    args = _parse(build_parser("serve"), container["args"], "dwell serve")
    assert args.command == "serve" and args.train_log is None  # the model topic's model
    env = _one("ConfigMap", "dwell-serve")["data"]
    Config.load(env=env)  # every key a setting, every value valid
    assert set(env) <= {f"DWELL_{name.upper()}" for name in Config.__dataclass_fields__}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == int(env["DWELL_SERVE_PORT"])
