"""Configuration: one frozen object, from flags, ``DWELL_*`` variables and a TOML file,
its settings declared by concern.

Precedence, highest first: command-line flags, environment variables (``DWELL_BATCH_SIZE``
for ``batch_size``), the TOML file (``--config`` or ``DWELL_CONFIG``), then the defaults
below. Every field is a flag ``--batch-size``.

Each setting belongs to one concern (:data:`CONCERNS`: ``kafka``, ``consumer``, ``model``,
``labels``, ``checkpoint``, ``metrics``, ``distributed``, ``runtime``, ``serve``,
``publish``): its block of :class:`Config`, its group in ``--help``, its table in the TOML
file. The TOML file takes a table per concern, flat keys, or flat keys under ``[dwell]``::

    [kafka]
    bootstrap = "broker1:9092"
    [consumer]
    batch_size = 512

The parts of the program take frozen objects built from the config: the Kafka clients
:attr:`Config.connection` and :attr:`Config.consumer`, the model core
:meth:`Config.learner_settings`; :meth:`Config.section` gives any concern's settings.
A new setting is one field in its concern's block (and, for the core or the consumer, a
field of the same name in ``LearnerSettings``, or a line of :attr:`Config.consumer`).

>>> Config.load(env={"DWELL_BATCH_SIZE": "64"}, flags={"topic": "t"}).batch_size
64
>>> Config(group="g").section("checkpoint").checkpoint_keep
3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.bounds import (
    BOOTSTRAP,
    GROUP,
    HOST,
    HOST_OR_DEFAULT,
    INT32_MAX,
    MAX_PORT,
    MAX_SECONDS,
    TOPIC,
    TOPIC_OR_DEFAULT,
    Choices,
    Pattern,
    Range,
)
from learner.core.labels import LabelRule
from learner.core.settings import (
    BACKBONE_NAMES,
    DRIFT_CHUNK,
    KERNELS,
    LABEL_RULES,
    LOSS_NAMES,
    MICRO_BATCH,
    SAMPLER_MODES,
    SEED_MAX,
    LearnerSettings,
)
from stream.clients import CLIENTS, ConsumerSettings, KafkaConnection
from stream.errors import ConfigError

#: A duration in seconds, 0 allowed (it turns the thing off, or means "at once").
SECONDS = Range(0, MAX_SECONDS)
#: A duration in seconds that must be positive.
SECONDS_POSITIVE = Range(0, MAX_SECONDS, low_open=True)


#: The concerns a setting belongs to, in the order ``--help`` shows them: each is a table of
#: the TOML file (``[kafka]``) and a group of ``--help`` (its title here).
CONCERNS = {
    "kafka": "Kafka connection",
    "consumer": "topics and consumer",
    "model": "model and training",
    "labels": "dwell-time labels",
    "checkpoint": "checkpoints",
    "metrics": "metrics and monitoring",
    "distributed": "distributed job (torch.distributed ranks)",
    "runtime": "interpreter tuning while the daemon runs",
    "serve": "HTTP serving (dwell serve)",
    "publish": "model publishing (the model topic servers read)",
}


def _setting(concern: str) -> Callable[..., Any]:
    """The field maker of ``concern``'s settings: ``(default, help, rule=None, repr=True)``."""

    def make(default: Any, help: str, rule: Range | Choices | Pattern | None = None,
             repr: bool = True) -> Any:
        """A field with its ``help``, its concern and, for numbers and names, the ``rule``
        its values obey."""
        return field(default=default, repr=repr,
                     metadata={"help": help, "rule": rule, "concern": concern})

    return make


(_kafka, _consumer, _model, _labels, _checkpoint, _metrics, _distributed, _runtime,
 _serve, _publish) = map(_setting, CONCERNS)


def flag_name(name: str) -> str:
    """The command-line flag of setting ``name``: ``--batch-size`` for ``batch_size``."""
    return "--" + name.replace("_", "-")


#: The torch devices a learner runs on.
DEVICE = Choices(("cpu", "cuda", "auto"), r"cuda:\d+", "cuda:N")
#: The values of ``client_process``.
CLIENT_PROCESS = ("auto", "on", "off")


@dataclass(frozen=True)
class Config:
    """Every setting of the learner daemon, the replay and the demo, flat (``cfg.batch_size``,
    ``Config(topic=..., group=...)``), each declared in the block of its concern (see
    :data:`CONCERNS`). The frozen objects a part of the program takes are built from it:
    :attr:`connection` and :attr:`consumer` (``stream.clients``), :meth:`learner_settings`
    (the model core), :attr:`labels`, and :meth:`section` for any concern."""

    # -- [kafka] -------------------------------------------------------------------------------
    bootstrap: str = _kafka("127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port]",
                            BOOTSTRAP)
    client: str = _kafka("kafka-python", "Kafka client: kafka-python or confluent "
                         "(pip install 'dwell[fast]')", Choices(CLIENTS))
    kafka_options: str = _kafka("", (
        "extra Kafka client settings with kafka-python's names (translated for confluent), "
        "KEY=VALUE[,KEY=VALUE] (SASL/TLS: "
        "security_protocol, sasl_mechanism, sasl_plain_username, sasl_plain_password, "
        "ssl_cafile, ...); never logged; DWELL_KAFKA_OPTIONS or --kafka-options-file keep "
        "secrets off the command line"), repr=False)
    kafka_options_file: str = _kafka("", "file of extra Kafka client settings, one KEY=VALUE a "
                                     "line (# comments; a value may hold commas), under "
                                     "--kafka-options: where secrets belong")
    connect_timeout_s: float = _kafka(15.0, "how long to wait for the Kafka cluster to answer "
                                      "before anything starts", Range(0, 3600, low_open=True))
    # -- [consumer] ----------------------------------------------------------------------------
    topic: str = _consumer("dwell.events", "event topic", TOPIC)
    dlq_topic: str = _consumer("", "dead-letter topic (default: <topic>.dlq)", TOPIC_OR_DEFAULT)
    group: str = _consumer("dwell-learner", "consumer group id", GROUP)
    partitions: int = _consumer(4, "partitions of a topic that dwell creates", Range(1, 100_000))
    client_process: str = _consumer(
        "auto", "run the Kafka clients (the consumer, which then fetches ahead while a "
        "micro-batch is learned, and the dead-letter producer) in processes of their own: on, "
        "off, or auto (on with kafka-python, whose fetch and produce are Python that holds the "
        "learner's interpreter lock; off with confluent, which works on threads of its own)",
        Choices(CLIENT_PROCESS))
    session_timeout_ms: int = _consumer(10_000, "consumer group session timeout: how long a dead "
                                        "learner holds its partitions", Range(1, INT32_MAX))
    batch_size: int = _consumer(MICRO_BATCH, "micro-batch: at most this many records",
                                Range(1, 10_000_000))
    batch_timeout_s: float = _consumer(0.5, "micro-batch: at most this long waiting for records",
                                       SECONDS_POSITIVE)
    max_value_bytes: int = _consumer(64 * 1024, "larger record values are invalid",
                                     Range(1, INT32_MAX))
    commit_interval_s: float = _consumer(1.0, "commit offsets at most this often (and on stop)",
                                         SECONDS)
    until_end: bool = _consumer(False, "stop once the end offsets seen at start are consumed "
                                "(those of partitions other members hold: committed by the group)")
    idle_timeout_s: float = _consumer(0.0, "stop after this long without records (0: never)",
                                      SECONDS)
    # -- [model] -------------------------------------------------------------------------------
    model: str = _model("wide", "backbone: wide (biases, context, crosses and running "
                        "counts: the best measured on a real feed), gmf, neumf or deepfm",
                        Choices(BACKBONE_NAMES))
    dim: int = _model(32, "latent factors (gmf, neumf, deepfm; the wide model has none)",
                      Range(1, 65_536))
    lr: float = _model(0.003, "learning rate (Adam / SparseAdam)",
                       Range(0, 1e3, low_open=True))
    dense_lr: float = _model(0.0, "learning rate of the dense layers and context weights "
                             "(0: the backbone's: 0.1 for the wide model's Adagrad, else --lr)",
                             Range(0, 1e3))
    loss: str = _model("bce", "training loss", Choices(LOSS_NAMES))
    train_batch: int = _model(512, "events per optimiser step within a micro-batch",
                              Range(1, 10_000_000))
    background_training: bool = _model(True, "train a micro-batch on a second thread while the "
                                       "next one is fetched and decoded, where its steps run "
                                       "in one compiled call (wide, GMF on the CPU); offsets are "
                                       "committed after the training of their events")
    max_steps: int = _model(0, "at most this many optimiser steps per micro-batch: a full "
                            "micro-batch (backlog) trains in larger steps (0: no limit)",
                            Range(0, 10_000_000))
    meta: str = _model("none", "meta step: none, or ig (Inverse Gradient; needs loss idl)",
                       Choices(("none", "ig")))
    sample_lr: float = _model(1e-3, "IG look-ahead step size", Range(0, 1e3, low_open=True))
    lookahead: str = _model("adam", "IG look-ahead: adam (fresh Adam's first step) or sgd",
                            Choices(("adam", "sgd")))
    kernel: str = _model("auto", "training steps: auto (for the wide model and GMF on the "
                         "CPU, the IG step and the bce and idl steps compiled with numba, no "
                         "autograd; autograd otherwise) or torch (autograd always)",
                         Choices(KERNELS))
    meta_source: str = _model("batch", "IG meta batch: batch (its genuine events) or reservoir",
                              Choices(("batch", "reservoir")))
    meta_size: int = _model(4096, "genuine events kept in the IG reservoir",
                            Range(1, 100_000_000))
    meta_batch: int = _model(256, "events drawn from the reservoir per IG step",
                             Range(1, 10_000_000))
    max_users: int = _model(0, "user id-map capacity, least recently seen evicted; 0: unbounded",
                            Range(0, INT32_MAX))
    max_videos: int = _model(0, "video id-map capacity, least recently seen evicted; 0: "
                             "unbounded", Range(0, INT32_MAX))
    num_neg: int = _model(0, "unseen items sampled per event as extra vague events", Range(0, 1000))
    sampler: str = _model("uniform", "how unseen items are drawn: uniform or popularity",
                          Choices(SAMPLER_MODES))
    seed: int = _model(0, "random seed", Range(0, SEED_MAX))
    device: str = _model("cpu", "torch device: cpu, cuda, cuda:N, or auto (a GPU when there "
                         "is one)", DEVICE)
    threads: int = _model(1, "torch intra-op threads (0: torch's default)", Range(0, 1024))
    # -- [labels] ------------------------------------------------------------------------------
    pos_ratio: float = _labels(0.9, "positive when play/duration >= this",
                               Range(0, 1e6, low_open=True))
    long_view_ms: int = _labels(30_000, "positive when play_ms >= this",
                                Range(0, INT32_MAX, low_open=True))
    skip_ms: int = _labels(3_000, "negative when play_ms < this (and not positive)",
                           Range(0, INT32_MAX))
    neg_ratio: float = _labels(0.2, "negative when play/duration < this (and not positive)",
                               Range(0, 1e6))
    label_rule: str = _labels("fixed", "fixed (the thresholds above) or quantile (the play "
                              "time's quantile among earlier watches of videos of the same "
                              "length: >= 0.7 positive, <= 0.3 negative; the thresholds "
                              "while a length has few watches)", Choices(LABEL_RULES))
    # -- [checkpoint] --------------------------------------------------------------------------
    checkpoint_dir: str = _checkpoint("", "checkpoint folder ('': no checkpoints, commit after "
                                          "training)")
    checkpoint_interval_s: float = _checkpoint(30.0, "checkpoint at least this often",
                                               SECONDS_POSITIVE)
    checkpoint_every: int = _checkpoint(100_000, "checkpoint after this many events", Range(1))
    checkpoint_keep: int = _checkpoint(3, "checkpoints kept", Range(1, 10_000))
    final_commit_timeout_s: float = _checkpoint(30.0, "on stop, retry a failed dead-letter or "
                                                "checkpoint write this long before giving up",
                                                SECONDS)
    audit_log: str = _checkpoint("", "append one JSON line per batch, checkpoint and resume "
                                 "(tests)")
    # -- [metrics] -----------------------------------------------------------------------------
    metrics_addr: str = _metrics("127.0.0.1", "address of the Prometheus /metrics server", HOST)
    metrics_port: int = _metrics(9464, "port of /metrics (0: any free port, -1: no server)",
                                 Range(-1, MAX_PORT))
    progress_interval_s: float = _metrics(2.0, "log a progress line this often", SECONDS_POSITIVE)
    metrics_log: str = _metrics("", "append progress and drift records (JSON lines) here; '' "
                                "with checkpoints: CHECKPOINT_DIR/metrics.jsonl")
    auc_window: int = _metrics(5000, "events in the short prequential AUC window",
                               Range(1, 100_000_000))
    auc_long_window: int = _metrics(50_000, "events in the long prequential AUC window",
                                    Range(1, 100_000_000))
    drift_detector: str = _metrics("page_hinkley", "drift detector on chunk AUC and log loss: "
                                   "page_hinkley or adwin", Choices(("adwin", "page_hinkley")))
    drift_chunk: int = _metrics(DRIFT_CHUNK, "genuine events per chunk AUC (and, for page_hinkley, "
                                                   "chunk log loss) fed to the drift detector",
                                                   Range(1, 100_000_000))
    # -- [distributed] -------------------------------------------------------------------------
    rank: int = _distributed(-1, "rank of this learner in a distributed job (-1: torchrun's RANK, "
                             "else 0)", Range(-1, 1_000_000))
    world_size: int = _distributed(0, "ranks in the job (0: torchrun's WORLD_SIZE, else 1)",
                                   Range(0, 1_000_000))
    master_addr: str = _distributed("", "address of rank 0 for the job's rendezvous (default: "
                                    "torchrun's MASTER_ADDR, else 127.0.0.1)", HOST_OR_DEFAULT)
    master_port: int = _distributed(0, "port of the rendezvous (default: MASTER_PORT, else 29500)",
                                    Range(0, MAX_PORT))
    sync_every: int = _distributed(1, "optimiser steps between synchronisations of the ranks of a "
                                   "distributed job (1: every step)", Range(1, INT32_MAX))
    dist_timeout_s: float = _distributed(120.0, "how long a rank waits for the others in a "
                                         "collective", SECONDS_POSITIVE)
    # -- [runtime] -----------------------------------------------------------------------------
    gc_threshold: int = _runtime(50_000, "while the daemon runs, Python's cyclic garbage "
                                 "collector starts a collection after this many new objects "
                                 "(its default, 700, spent ~20%% of the time; 0: leave it)",
                                 Range(0, INT32_MAX))
    switch_interval_s: float = _runtime(0.0005, "while the daemon runs, Python's thread switch "
                                        "interval: how long a thread waits for the interpreter "
                                        "lock held by another (its default, 0.005, would hold the "
                                        "background training back; 0: leave it)", Range(0, 1.0))
    # -- [serve] -------------------------------------------------------------------------------
    serve_addr: str = _serve("127.0.0.1", "address dwell serve listens on", HOST)
    serve_port: int = _serve(8080, "port of dwell serve's HTTP API and its /metrics (0: any "
                             "free port)", Range(0, MAX_PORT))
    serve_max_k: int = _serve(1000, "largest k a /rank request may ask for", Range(1, 1_000_000))
    serve_max_candidates: int = _serve(10_000, "most candidate videos in one /rank request, and "
                                       "most pairs in one /score request", Range(1, 10_000_000))
    serve_max_body_bytes: int = _serve(1 << 20, "larger request bodies are refused (413)",
                                       Range(64, INT32_MAX))
    pool_size: int = _serve(500, "videos in the popular pool that /rank ranks when a request "
                            "names no candidates", Range(1, 1_000_000))
    pool_half_life_s: float = _serve(3600.0, "half-life of a view's weight in the popular pool, "
                                     "in event time", SECONDS_POSITIVE)
    pool_tracked: int = _serve(100_000, "videos whose decayed view counts the pool keeps (the "
                               "least recently viewed forgotten beyond)", Range(1, INT32_MAX))
    pool_lookback: int = _serve(100_000, "records per partition of the events topic read back "
                                "at start to fill the pool (then it tails the topic)",
                                Range(0, INT32_MAX))
    # -- [publish] -----------------------------------------------------------------------------
    publish_interval_s: float = _publish(
        1.0, "publish the rows changed since the last version, the dense weights and a "
        "version number to the model topic this often, for dwell serve (0: never)", SECONDS)
    model_topic: str = _publish("", "model topic, compacted, one partition (default: "
                                "<topic>.model)", TOPIC_OR_DEFAULT)

    def __post_init__(self) -> None:
        """Check every setting against its declared rule, then those that go together:
        ConfigError naming the flag and what is allowed."""
        for f in dataclasses.fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem:
                raise ConfigError(f"{flag_name(f.name)} {problem}")
        if self.pool_tracked < max(self.pool_size, self.batch_size):
            raise ConfigError(f"--pool-tracked must be at least --pool-size ({self.pool_size}) "
                              f"and --batch-size ({self.batch_size}) (got {self.pool_tracked})")
        for name in ("max_users", "max_videos"):
            cap = getattr(self, name)
            if 0 < cap < self.batch_size:
                raise ConfigError(f"{flag_name(name)} must be 0 (unbounded) or at least "
                                  f"batch_size ({self.batch_size}), as a batch's ids all need "
                                  f"rows at once (got {cap})")
        if self.meta == "ig" and self.loss != "idl":
            raise ConfigError(f"--meta ig trains vague events with IDL: it needs --loss idl "
                              f"(got --loss {self.loss})")
        self.client_options()  # KEY=VALUE items, a readable file

    @classmethod
    def rule(cls, name: str) -> Range | Choices | Pattern:
        """The declared rule of setting ``name`` (for flags that take the same values)."""
        return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["rule"]

    def uses_client_process(self) -> bool:
        """Whether the learner's Kafka clients run in processes of their own
        (``client_process``)."""
        return self.client_process == "on" or (
            self.client_process == "auto" and self.client == "kafka-python")

    def client_options(self) -> dict[str, Any]:
        """``kafka_options_file`` under ``kafka_options``, as keyword arguments for
        kafka-python's clients. A malformed item is named by its place, never shown: it may
        be part of a secret."""
        options = _read_options_file(self.kafka_options_file) if self.kafka_options_file else {}
        items = (part.strip() for part in self.kafka_options.split(","))
        for number, item in enumerate(filter(None, items), 1):
            key, value = _option_item(item, f"--kafka-options item {number}")
            options[key] = value
        return options

    def secrets(self) -> list[str]:
        """The values of the secret Kafka settings (passwords, keys, tokens): for redaction."""
        return self.connection.secrets()

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def model_topic_name(self) -> str:
        """The model topic: ``model_topic``, or ``<topic>.model``."""
        return self.model_topic or f"{self.topic}.model"

    @property
    def connection(self) -> KafkaConnection:
        """How the clients reach the cluster: bootstrap, client and ``client_options()``
        (its ``repr`` masks the secrets)."""
        return KafkaConnection(self.bootstrap, self.client, self.client_options())

    @property
    def consumer(self) -> ConsumerSettings:
        """The learner's consumer: this topic and group, micro-batches of ``batch_size``
        records or ``batch_timeout_s``, the group session, a process of its own or not
        (``dataclasses.replace(cfg.consumer, partitions=...)`` for explicit partitions)."""
        return ConsumerSettings(
            self.topic, self.group, max_records=self.batch_size,
            max_wait_s=self.batch_timeout_s, process=self.uses_client_process(),
            session_timeout_ms=self.session_timeout_ms)

    @property
    def labels(self) -> LabelRule:
        """The dwell-time label rule: the settings named as :class:`LabelRule`'s fields."""
        return LabelRule(**self._same_names(LabelRule))

    def learner_settings(self) -> LearnerSettings:
        """What the model core takes: every setting named as a :class:`LearnerSettings`
        field (but ``rank``: the job's, resolved by the rank daemon), and :attr:`labels`."""
        return LearnerSettings(**self._same_names(LearnerSettings, but=("rank",)),
                               labels=self.labels)

    def section(self, concern: str) -> Any:
        """The settings of ``concern`` (a key of :data:`CONCERNS`) as a frozen object of their
        own: ``cfg.section("checkpoint").checkpoint_keep``."""
        kind = SECTIONS[concern]
        return kind(**self._same_names(kind))

    def _same_names(self, kind: type, but: Iterable[str] = ()) -> dict[str, Any]:
        """This config's values of the fields of dataclass ``kind`` that it has, less ``but``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(kind)
                if f.name in _FIELDS and f.name not in but}

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


#: Config's fields by name, and the concern of each.
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
CONCERN_OF = {name: f.metadata["concern"] for name, f in _FIELDS.items()}
#: A frozen class per concern, with the fields of its settings (:meth:`Config.section`).
SECTIONS: dict[str, type] = {
    concern: dataclasses.make_dataclass(
        f"{concern.title()}Settings",
        [(name, f.type, field(default=f.default, repr=f.repr))
         for name, f in _FIELDS.items() if CONCERN_OF[name] == concern],
        frozen=True, namespace={"__module__": __name__})
    for concern in CONCERNS
}


def _option_item(item: str, where: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as (key, value); ConfigError naming ``where``, not the item."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{where}: expected KEY=VALUE")
    return key.strip(), _option_value(value.strip())


def _read_options_file(path: str) -> dict[str, Any]:
    """The ``KEY=VALUE`` lines of ``path`` (blank lines and ``#`` comments skipped)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--kafka-options-file {path}: cannot read it "
                          f"({type(exc).__name__})") from None
    options = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = _option_item(line, f"--kafka-options-file {path} line {number}")
            options[key] = value
    return options


def _problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f``: its type, or its declared rule."""
    kind = type(f.default)
    if type(value) is not kind and not (kind is float and type(value) is int):
        return f"must be {_KINDS.get(kind, kind.__name__)} (got {value!r})"
    rule = f.metadata.get("rule")
    return rule.problem(value) if rule is not None else None


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _option_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: flat keys, a ``[dwell]`` table of them (as before), and
    a table per concern (``[kafka]``, ``[consumer]``, ...: the keys of :data:`CONCERNS`)
    holding that concern's settings, at the top or under ``[dwell]``. An unknown table, an
    unknown setting, a setting in another concern's table or set twice: ConfigError."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    values: dict[str, Any] = {}
    _read_table(data, None, values, f"config file {path}", top=True)
    return values


def _read_table(table: Mapping[str, Any], concern: str | None, values: dict[str, Any],
                where: str, top: bool = False) -> None:
    """Put the settings of ``table`` (of ``concern``'s table, or None for flat keys; ``top``:
    the file itself, where ``[dwell]`` may be) in ``values``."""
    for key, value in table.items():
        if isinstance(value, dict) and concern is None:  # a table: [dwell] or a concern's
            if key == "dwell" and top:
                _read_table(value, None, values, f"{where} [dwell]")
            elif key in CONCERNS:
                _read_table(value, key, values, where)
            else:
                raise ConfigError(f"{where}: unknown table [{key}] (tables: "
                                  f"{', '.join(f'[{c}]' for c in CONCERNS)}, or flat keys)")
            continue
        place = f"{where} [{concern}]" if concern else where
        if key not in CONCERN_OF:
            raise ConfigError(f"{place}: unknown setting {key!r}")
        if concern is not None and CONCERN_OF[key] != concern:
            raise ConfigError(f"{place}: {key} belongs in the [{CONCERN_OF[key]}] table")
        if key in values:
            raise ConfigError(f"{place}: {key} is set twice")
        values[key] = value


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """``value`` (a flag's, a variable's text, a TOML value) as the field's type; its range is
    checked by Config itself. A bool is no number, nor a float with a fraction an integer."""
    kind = type(f.default)
    if type(value) is kind or (kind is float and type(value) is int):
        return kind(value)
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(value)
            return text in {"1", "true", "yes", "on"}
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError(value)
        return kind(str(value).strip()) if kind in (int, float) else kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag_name(f.name)} ({f.name}): cannot read {value!r} as "
                          f"{_KINDS.get(kind, kind.__name__)}") from None


def add_config_args(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add a ``--flag`` for each named Config field (all by default), defaulting to None, in an
    argument group per concern (:data:`CONCERNS`, in that order), and ``--config``."""
    wanted = set(_FIELDS if names is None else names)
    if wanted - set(_FIELDS):
        raise ValueError(f"not settings: {', '.join(sorted(wanted - set(_FIELDS)))}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in sorted(wanted, key=list(_FIELDS).index):
        f = _FIELDS[name]
        concern = CONCERN_OF[name]
        if concern not in groups:
            groups[concern] = parser.add_argument_group(
                CONCERNS[concern], f"(--config table [{concern}])")
        group, flag = groups[concern], flag_name(name)
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f.metadata["help"])
        else:
            rule = f.metadata.get("rule")
            allowed = f"; {rule.describe()}" if rule is not None else ""
            group.add_argument(flag, type=type(f.default), default=None, metavar=name.upper(),
                               help=f"{f.metadata['help']} (default: {f.default!r}{allowed})")
    parser.add_argument("--config", dest="config_file", default=None,
                        help="TOML file of settings (or DWELL_CONFIG): a table per concern "
                             "([kafka], [consumer], [model], ...: each group below names its "
                             "own) or flat keys; DWELL_* variables (DWELL_BATCH_SIZE for "
                             "--batch-size) override it, flags override both")


def config_from_args(
    args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> Config:
    """The Config for parsed arguments: flags over environment over TOML over ``defaults``."""
    names = {f.name for f in dataclasses.fields(Config)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    return Config.load(flags=flags, toml_path=getattr(args, "config_file", None),
                       defaults=defaults)
