"""Configuration: one frozen object, from flags, ``DWELL_*`` variables and a TOML file.

Precedence, highest first: command-line flags, environment variables (``DWELL_BATCH_SIZE``
for ``batch_size``), the TOML file (``--config`` or ``DWELL_CONFIG``; flat keys, or under a
``[dwell]`` table), then the defaults below. Every field is a flag ``--batch-size``.

>>> Config.load(env={"DWELL_BATCH_SIZE": "64"}, flags={"topic": "t"}).batch_size
64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.labels import LabelRule
from learner.trainer import LearnerSettings
from stream.clients import check_client
from stream.errors import ConfigError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


#: The values of ``client_process``.
CLIENT_PROCESS = ("auto", "on", "off")


@dataclass(frozen=True)
class Config:
    """Every setting of the learner daemon, the replay and the demo."""

    bootstrap: str = _opt("127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port]")
    topic: str = _opt("dwell.events", "event topic")
    dlq_topic: str = _opt("", "dead-letter topic (default: <topic>.dlq)")
    group: str = _opt("dwell-learner", "consumer group id")
    partitions: int = _opt(4, "partitions of a topic that dwell creates")
    kafka_options: str = field(default="", repr=False, metadata={"help": (
        "extra Kafka client settings with kafka-python's names (translated for confluent), "
        "KEY=VALUE[,KEY=VALUE] (SASL/TLS: "
        "security_protocol, sasl_mechanism, sasl_plain_username, sasl_plain_password, "
        "ssl_cafile, ...); never logged")})
    client: str = _opt("kafka-python", "Kafka client: kafka-python or confluent "
                       "(pip install 'dwell[fast]')")
    client_process: str = _opt("auto", "run the Kafka clients (the consumer, which then "
                               "fetches ahead while a micro-batch is learned, and the "
                               "dead-letter producer) in processes of their own: on, off, or "
                               "auto (on with kafka-python, whose fetch and produce are Python "
                               "that holds the learner's interpreter lock; off with confluent, "
                               "which works on threads of its own)")
    session_timeout_ms: int = _opt(10_000, "consumer group session timeout: how long a dead "
                                   "learner holds its partitions")
    batch_size: int = _opt(1024, "micro-batch: at most this many records")
    batch_timeout_s: float = _opt(0.5, "micro-batch: at most this long waiting for records")
    max_value_bytes: int = _opt(64 * 1024, "larger record values are invalid")
    commit_interval_s: float = _opt(1.0, "commit offsets at most this often (and on stop)")
    checkpoint_dir: str = _opt("", "checkpoint folder ('': no checkpoints, commit after "
                                   "training)")
    checkpoint_interval_s: float = _opt(30.0, "checkpoint at least this often")
    checkpoint_every: int = _opt(100_000, "checkpoint after this many events")
    checkpoint_keep: int = _opt(3, "checkpoints kept")
    final_commit_timeout_s: float = _opt(30.0, "on stop, retry a failed dead-letter or "
                                         "checkpoint write this long before giving up")
    audit_log: str = _opt("", "append one JSON line per batch, checkpoint and resume (tests)")
    until_end: bool = _opt(False, "stop once the end offsets seen at start are consumed")
    idle_timeout_s: float = _opt(0.0, "stop after this long without records (0: never)")
    metrics_addr: str = _opt("127.0.0.1", "address of the Prometheus /metrics server")
    metrics_port: int = _opt(9464, "port of /metrics (0: any free port, -1: no server)")
    progress_interval_s: float = _opt(2.0, "log a progress line this often")
    gc_threshold: int = _opt(50_000, "while the daemon runs, Python's cyclic garbage "
                             "collector starts a collection after this many new objects "
                             "(its default, 700, spent ~20%% of the time; 0: leave it)")
    switch_interval_s: float = _opt(0.0005, "while the daemon runs, Python's thread switch "
                                    "interval: how long a thread waits for the interpreter "
                                    "lock held by another (its default, 0.005, would hold the "
                                    "background training back; 0: leave it)")
    model: str = _opt("gmf", "backbone")
    dim: int = _opt(32, "latent factors")
    lr: float = _opt(0.01, "learning rate (Adam / SparseAdam)")
    loss: str = _opt("bce", "training loss")
    train_batch: int = _opt(64, "events per optimiser step within a micro-batch")
    background_training: bool = _opt(True, "train a micro-batch on a second thread while the "
                                     "next one is fetched and decoded, where its steps run "
                                     "in one compiled call (GMF on the CPU); offsets are "
                                     "committed after the training of their events")
    max_steps: int = _opt(0, "at most this many optimiser steps per micro-batch: a full "
                          "micro-batch (backlog) trains in larger steps (0: no limit)")
    meta: str = _opt("none", "meta step: none, or ig (Inverse Gradient; needs loss idl)")
    sample_lr: float = _opt(1e-3, "IG look-ahead step size")
    lookahead: str = _opt("adam", "IG look-ahead: adam (fresh Adam's first step) or sgd")
    kernel: str = _opt("auto", "training steps: auto (for GMF on the CPU, the IG step and "
                       "the bce and idl steps compiled with numba, no autograd; autograd "
                       "otherwise) or torch (autograd always)")
    meta_source: str = _opt("batch", "IG meta batch: batch (its genuine events) or reservoir")
    meta_size: int = _opt(4096, "genuine events kept in the IG reservoir")
    meta_batch: int = _opt(256, "events drawn from the reservoir per IG step")
    max_users: int = _opt(0, "user id-map capacity, least recently seen evicted; 0: unbounded")
    max_videos: int = _opt(0, "video id-map capacity, least recently seen evicted; 0: "
                           "unbounded")
    num_neg: int = _opt(0, "unseen items sampled per event as extra vague events")
    sampler: str = _opt("uniform", "how unseen items are drawn: uniform or popularity")
    seed: int = _opt(0, "random seed")
    device: str = _opt("cpu", "torch device: cpu, cuda, cuda:N, or auto (a GPU when there is one)")
    threads: int = _opt(1, "torch intra-op threads (0: torch's default)")
    auc_window: int = _opt(5000, "events in the short prequential AUC window")
    auc_long_window: int = _opt(50_000, "events in the long prequential AUC window")
    drift_detector: str = _opt("page_hinkley", "drift detector on chunk AUC and log loss: "
                               "page_hinkley or adwin")
    drift_chunk: int = _opt(500, "genuine events per chunk AUC (and, for page_hinkley, "
                                               "chunk log loss) fed to the drift detector")
    metrics_log: str = _opt("", "append progress and drift records (JSON lines) here; '' "
                            "with checkpoints: CHECKPOINT_DIR/metrics.jsonl")
    rank: int = _opt(-1, "rank of this learner in a distributed job (-1: torchrun's RANK, "
                     "else 0)")
    world_size: int = _opt(0, "ranks in the job (0: torchrun's WORLD_SIZE, else 1)")
    master_addr: str = _opt("", "address of rank 0 for the job's rendezvous (default: "
                            "torchrun's MASTER_ADDR, else 127.0.0.1)")
    master_port: int = _opt(0, "port of the rendezvous (default: MASTER_PORT, else 29500)")
    sync_every: int = _opt(1, "optimiser steps between synchronisations of the ranks of a "
                           "distributed job (1: every step)")
    dist_timeout_s: float = _opt(120.0, "how long a rank waits for the others in a collective")
    pos_ratio: float = _opt(0.9, "positive when play/duration >= this")
    long_view_ms: int = _opt(30_000, "positive when play_ms >= this")
    skip_ms: int = _opt(3_000, "negative when play_ms < this (and not positive)")
    neg_ratio: float = _opt(0.2, "negative when play/duration < this (and not positive)")

    def __post_init__(self) -> None:
        check_client(self.client)
        if self.client_process not in CLIENT_PROCESS:
            raise ConfigError(f"client_process {self.client_process!r}: expected "
                              f"{', '.join(CLIENT_PROCESS)}")
        if self.switch_interval_s < 0:
            raise ConfigError(f"switch_interval_s {self.switch_interval_s}: must be 0 (leave "
                              "Python's) or positive")
        if self.gc_threshold < 0:
            raise ConfigError(f"gc_threshold {self.gc_threshold}: must be 0 (leave Python's) "
                              "or positive")

    def uses_client_process(self) -> bool:
        """Whether the learner's Kafka clients run in processes of their own
        (``client_process``)."""
        return self.client_process == "on" or (
            self.client_process == "auto" and self.client == "kafka-python")

    def client_options(self) -> dict[str, Any]:
        """``kafka_options`` as keyword arguments for kafka-python's clients."""
        options: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in self.kafka_options.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"kafka option {key.strip()!r}: expected KEY=VALUE")
            options[key.strip()] = _option_value(value.strip())
        return options

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    def learner_settings(self) -> LearnerSettings:
        for name in ("max_users", "max_videos"):
            cap = getattr(self, name)
            if cap < 0 or 0 < cap < self.batch_size:
                raise ConfigError(f"{name} {cap}: must be 0 (unbounded) or at least batch_size "
                                  f"({self.batch_size}), as a batch's ids all need rows at once")
        rule = LabelRule(self.pos_ratio, self.long_view_ms, self.skip_ms, self.neg_ratio)
        return LearnerSettings(
            model=self.model, dim=self.dim, lr=self.lr, loss=self.loss,
            train_batch=self.train_batch, max_steps=self.max_steps, seed=self.seed,
            device=self.device,
            auc_window=self.auc_window, auc_long_window=self.auc_long_window, labels=rule,
            num_neg=self.num_neg, sampler=self.sampler,
            meta=self.meta, sample_lr=self.sample_lr, lookahead=self.lookahead,
            kernel=self.kernel,
            meta_source=self.meta_source, meta_size=self.meta_size, meta_batch=self.meta_batch,
            threads=self.threads, max_users=self.max_users, max_videos=self.max_videos,
        )

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        toml_path: str | Path | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Config:
        """Merge field defaults < ``defaults`` (a command's own) < TOML < environment < flags.

        Flags set to None are ignored; a flag set to ``""`` overrides like any other value.
        """
        env = os.environ if env is None else env
        toml_path = toml_path or env.get("DWELL_CONFIG")
        values: dict[str, Any] = dict(defaults or {})
        if toml_path:
            values.update(_read_toml(Path(toml_path)))
        for f in dataclasses.fields(cls):
            key = f"DWELL_{f.name.upper()}"
            if key in env:
                values[f.name] = env[key]
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})


def _option_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return dict(data.get("dwell", data))


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = type(f.default)
    if isinstance(value, kind) and not (kind is float and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(value)
            return text in {"1", "true", "yes", "on"}
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}: cannot read {value!r} as {kind.__name__}") from None


def add_config_args(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add a ``--flag`` for each named Config field (all by default), defaulting to None."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for name in names or fields:
        f = fields[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=type(f.default), default=None, metavar=name.upper(),
                                help=f"{f.metadata['help']} (default: {f.default!r})")
    parser.add_argument("--config", dest="config_file", default=None,
                        help="TOML file of settings (or DWELL_CONFIG)")


def config_from_args(
    args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> Config:
    """The Config for parsed arguments: flags over environment over TOML over ``defaults``."""
    names = {f.name for f in dataclasses.fields(Config)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    return Config.load(flags=flags, toml_path=getattr(args, "config_file", None),
                       defaults=defaults)
