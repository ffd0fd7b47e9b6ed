"""The ``dwell`` command: ``broker``, ``replay``, ``learn`` and ``demo``.

Settings come from flags, ``DWELL_*`` environment variables and an optional TOML file
(``--config``), in that order of precedence; see :mod:`learner.service.config`. Each
subcommand's ``--help`` shows its flags in groups: its own, then one per concern of the
settings (Kafka connection, topics and consumer, model and training, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from learner.bounds import (
    FIELD_COLUMN,
    MAX_PORT,
    Choices,
    Flag,
    Range,
    column_mapping,
    positive_int,
)
from learner.core.errors import CoreError
from learner.service.config import CONCERN_OF, Config, add_config_args, config_from_args
from learner.service.totals import format_totals, totals_add_up
from producers.readers.registry import READERS
from stream import redact
from stream.errors import ClientError, ConfigError, DwellError

logger = logging.getLogger("dwell")

#: What a bad setting raises, from the Kafka side (stream) and from the model core: one line,
#: status 2.
ERRORS = (DwellError, CoreError)
#: Subcommands whose modules are imported only when they run (or for ``dwell --help``): the
#: others (replay, broker) import no torch. Name -> module with ``add_parser(subparsers)``.
LAZY_COMMANDS = {
    "eval": "learner.evaluation.command",
    "bench": "learner.bench",
    "report": "learner.service.metrics_figure",
    "drift-eval": "learner.evaluation.drift_drill",
    "serve": "learner.serving.command",
}

#: The settings of ``dwell learn``: all but those of ``dwell serve``.
LEARN_FLAGS = tuple(name for name, concern in CONCERN_OF.items() if concern != "serve")
KAFKA_FLAGS = ("bootstrap", "topic", "partitions", "kafka_options", "kafka_options_file",
               "client", "connect_timeout_s")
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1]
    / "data/kuairand27k_like_hate/processed_standard_kcore_15.tsv"
)
#: A flag's TCP port, and a flag's positive number (events/s, a speed-up).
PORT = Flag(int, Range(1, MAX_PORT))
POSITIVE = Flag(float, Range(0, 1e12, low_open=True))
DWELL_HOME = Path(os.environ.get("DWELL_HOME", Path.home() / ".local/share/dwell"))
DEFAULT_BROKER_DIR = DWELL_HOME / "kafka"
DEFAULT_CLUSTER_DIR = DWELL_HOME / "kafka-cluster"


def _broker(args: argparse.Namespace) -> int:
    from stream.broker import LocalBroker

    if args.nodes != 1:
        return _cluster(args)
    data = args.data or str(DEFAULT_BROKER_DIR)
    controller_port = 9093 if args.controller_port is None else args.controller_port
    broker = LocalBroker(Path(data), args.port, controller_port, args.heap)
    if args.action == "start":
        print(broker.start())
    elif args.action == "stop":
        broker.stop()
    else:
        running = broker.status()
        print(f"{'running' if running else 'stopped'} ({broker.bootstrap}, data {data})")
        return 0 if running else 3
    return 0


def _cluster(args: argparse.Namespace) -> int:
    """``dwell broker --nodes N``: node k on ports P+k-1 and C+k-1, data in DATA/node-k."""
    from stream.broker import LocalCluster

    n = args.nodes
    if n < 1:
        raise DwellError(f"--nodes must be at least 1, not {n}")
    first_controller = args.port + n if args.controller_port is None else args.controller_port
    data = Path(args.data or DEFAULT_CLUSTER_DIR)
    try:
        cluster = LocalCluster(data, range(args.port, args.port + n),
                               range(first_controller, first_controller + n), args.heap)
    except ValueError as exc:
        raise DwellError(f"dwell broker --nodes {n}: {exc}") from exc
    if args.action == "start":
        print(cluster.start(timeout=120))
    elif args.action == "stop":
        cluster.stop()
    else:
        running = cluster.status()
        for k, up in running.items():
            node = cluster.node(k)
            print(f"node {k}: {'running' if up else 'stopped'} ({node.bootstrap}, "
                  f"data {node.data_dir})")
        return 0 if all(running.values()) else 3
    return 0


def _replay(args: argparse.Namespace) -> int:
    from producers.pacing import Pacer
    from producers.readers import order_by_time, read_log
    from producers.replay import replay
    from stream.admin import create_topic

    cfg = config_from_args(args)
    result = read_log(args.file, args.format, column_mapping(args.map),
                      time_unit=args.time_unit)
    result.events = order_by_time(result.events)
    if args.limit is not None and args.limit < len(result.events):
        result.events = result.events[: args.limit]  # the earliest events by event time
        result.rows_read = len(result.events) + result.rejected_total
    if args.shift:
        from producers.shift import inject_shift

        at = args.shift_at if args.shift_at is not None else len(result.events) // 2
        result.events = inject_shift(result.events, at, args.shift)
        logger.info("concept shift %s injected from event %d on", args.shift, at)
    create_topic(cfg.bootstrap, cfg.topic, partitions=cfg.partitions,
                 options=cfg.client_options())
    pacer = Pacer(rate=args.rate, speed=args.speed)
    stats = replay(result, bootstrap=cfg.bootstrap, topic=cfg.topic, pacer=pacer,
                   producer_config=cfg.client_options(), client=cfg.client,
                   resend_rounds=args.resend_rounds)
    print(
        f"rows read {stats.rows_read:,} | events sent {stats.events_sent:,} | "
        f"failed {stats.failed:,} {dict(stats.errors)} | resent {stats.resent:,} | "
        f"not an event {sum(stats.rejected.values()):,} "
        f"{dict(stats.rejected)} | {stats.events_per_s:,.0f} events/s"
    )
    return 0 if stats.failed == 0 else 1


def _learn(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from learner.service.daemon import Daemon
    from learner.service.distributed import JobSpec
    from learner.service.monitoring import serve_metrics
    from learner.service.rank_daemon import RankDaemon

    cfg = learn_config(args)
    logger.info("checkpoints in %s", cfg.checkpoint_dir or "(none: --checkpoint-dir '')")
    registry = CollectorRegistry()
    spec = JobSpec.resolve(cfg.rank, cfg.world_size, cfg.master_addr, cfg.master_port,
                           cfg.device, cfg.dist_timeout_s)
    daemon = RankDaemon(cfg, registry, spec) if spec.world_size > 1 else Daemon(cfg, registry)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    server = None
    if cfg.metrics_port >= 0:
        # the ranks of one machine serve on consecutive ports
        port = cfg.metrics_port + spec.local_rank if cfg.metrics_port else 0
        server = serve_metrics(registry, cfg.metrics_addr, port)
        logger.info("metrics on http://%s:%d/metrics", cfg.metrics_addr, server.server_port)
    try:
        totals = daemon.run()
    finally:
        if server is not None:
            server.shutdown()
    print(format_totals(totals, daemon.learner.evaluator.values(),
                        baseline=daemon.learner.baseline_evaluator.values()))
    job = totals.get("job")
    if job:
        print(f"job of {job['ranks']} ranks: consumed {job['consumed']:,} accepted "
              f"{job['accepted']:,} dead-lettered {job['dead_lettered']:,} | run AUC dwell "
              f"{job['auc_run']['dwell']:.4f} explicit {job['auc_run']['explicit']:.4f}")
    return 0 if totals_add_up(totals) else 1


def learn_config(args: argparse.Namespace, home: Path = DWELL_HOME) -> Config:
    """The settings of ``dwell learn``: as given, checkpointing into ``home`` by default.

    The default folder is ``home/checkpoints/GROUP``; ``--checkpoint-dir ''`` turns it off.
    """
    group = config_from_args(args).group
    return config_from_args(args, {"checkpoint_dir": str(home / "checkpoints" / group)})


def _demo(args: argparse.Namespace) -> int:
    from learner.service.demo import run_demo

    return run_demo(args)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``dwell learn: error: ...`` (status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``dwell`` parser. Given the ``command`` about to run, the subcommands of
    :data:`LAZY_COMMANDS` other than it are registered by name only (their modules not
    imported)."""
    parser = Parser(prog="dwell", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging (the Kafka clients' at INFO: see --debug-kafka)")
    parser.add_argument("--debug-kafka", action="store_true",
                        default=redact.kafka_debug_asked(os.environ),
                        help="the Kafka clients' DEBUG logs too (or DWELL_DEBUG_KAFKA=1); "
                             "secrets are masked in every log all the same")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="start, stop or query a local Apache Kafka broker "
                                      "(or a local cluster of several, --nodes)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--nodes", type=positive_int(64), default=1,
                   help="number of nodes (KRaft, each broker and controller); with N > 1 "
                        "node k listens on PORT+k-1 and CONTROLLER_PORT+k-1 and keeps its data "
                        "in DATA/node-k")
    p.add_argument("--port", type=PORT, default=9092, help="(first) broker port")
    p.add_argument("--controller-port", type=PORT, default=None,
                   help="(first) controller port (default: 9093 for one node, PORT+N for N)")
    p.add_argument("--data", default=None,
                   help=f"data folder (default {DEFAULT_BROKER_DIR}, or {DEFAULT_CLUSTER_DIR} "
                        "with --nodes N > 1)")
    p.add_argument("--heap", default="512m", help="JVM heap (of each node)")
    p.set_defaults(func=_broker)

    p = sub.add_parser("replay", help="replay a historical log into a Kafka topic")
    log = p.add_argument_group("the log", "what is read, and what is sent of it")
    log.add_argument("file", nargs="?", default=str(DEFAULT_DATA), help="log file")
    log.add_argument("--format", default="auto", type=Flag(str, Choices(("auto", *READERS))),
                     help=f"log format: auto or {', '.join(READERS)}")
    log.add_argument("--map", nargs="*", metavar="FIELD=COLUMN", help="column mapping (generic)",
                     type=Flag(str, FIELD_COLUMN))
    log.add_argument("--time-unit", choices=["ms", "s"], default="ms",
                     help="unit of the time column (generic)")
    log.add_argument("--limit", type=Flag(int, Range(0)), help="send at most this many events")
    log.add_argument("--shift", choices=["invert", "swap_items"],
                     help="inject a concept shift (a drift-detection drill; producers/shift.py)")
    log.add_argument("--shift-at", type=Flag(int, Range(0)),
                     help="first shifted event (default: the middle)")
    sending = p.add_argument_group("sending", "pace (as fast as possible unless --rate or "
                                   "--speed) and delivery")
    pace = sending.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=POSITIVE, help="events per second")
    pace.add_argument("--speed", type=POSITIVE, help="multiple of real event time")
    sending.add_argument("--resend-rounds", type=Flag(int, Range(0, 100)), default=3,
                         help="rounds of sending again, on a fresh producer, the events whose "
                              "delivery failed with a retriable error (timed out while the "
                              "cluster was away); at-least-once for those (default 3; 0: off)")
    add_config_args(p, KAFKA_FLAGS)
    p.set_defaults(func=_replay)

    p = sub.add_parser(
        "learn", help="run the learner daemon on a topic",
        description="Run the learner daemon. It checkpoints into "
        f"{DWELL_HOME}/checkpoints/GROUP unless --checkpoint-dir says otherwise "
        "(--checkpoint-dir '' turns checkpoints off; DWELL_HOME moves the default).",
    )
    add_config_args(p, LEARN_FLAGS)
    p.set_defaults(func=_learn)

    for name, module in LAZY_COMMANDS.items():
        if command is None or command == name:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name)

    p = sub.add_parser("demo", help="broker + replay of the shipped data + learner, end to end")
    demo = p.add_argument_group("the demo")
    demo.add_argument("file", nargs="?", default=str(DEFAULT_DATA), help="log file to replay")
    demo.add_argument("--keep-serving", action="store_true",
                      help="keep broker, learner and /metrics up after the replay (Ctrl-C "
                           "stops)")
    demo.add_argument("--external", action="store_true",
                      help="use the broker at --bootstrap instead of starting one")
    add_config_args(p)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dwell``: 0 on success; 2 for a bad setting (one line, nothing started); 1 when
    the Kafka cluster cannot be reached or a Kafka client fails (one line)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    redact.install(logging.DEBUG if args.debug_kafka
                   else logging.INFO if args.verbose else logging.ERROR)
    try:
        _check_before_start(args)
        return args.func(args)
    except ClientError as exc:
        return _fail(exc, 1)
    except ERRORS as exc:
        return _fail(exc, 2)
    except Exception as exc:
        if not _is_kafka_error(exc):
            raise
        return _fail(exc, 1)


def _command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option (``dwell``'s own
    options take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _check_before_start(args: argparse.Namespace) -> None:
    """Every setting of a command that has them, checked (ConfigError), its secrets known to
    the log filter; then, for a command that talks to Kafka, the cluster's answer awaited
    (ConnectError after ``--connect-timeout-s``)."""
    if not hasattr(args, "config_file"):  # no Config settings: its flags checked themselves
        return
    cfg = learn_config(args) if args.command == "learn" else config_from_args(args)
    redact.remember(cfg.secrets())
    if args.command == "replay":
        _check_readable(args.file)
    if args.command in ("learn", "demo"):
        _check_writable(cfg)
        from learner.core.devices import resolve_device

        resolve_device(cfg.device)  # cuda where torch sees no GPU: ConfigError
    if args.command in ("learn", "replay", "serve") or getattr(args, "external", False):
        from stream.admin import check_connection

        with _quiet(redact.KAFKA_LOGGERS, unless=args.verbose):  # the error says it all
            check_connection(cfg.bootstrap, cfg.connect_timeout_s, cfg.client_options())


def _check_readable(path: str) -> None:
    """ConfigError unless ``path`` is a file this process can read."""
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigError(f"log file {path}: not a readable file")


def _check_writable(cfg: Config) -> None:
    """ConfigError unless the folders the learner writes into can be made and written: the
    checkpoint folder, and those of the audit and metrics logs."""
    folders = [("--checkpoint-dir", cfg.checkpoint_dir)]
    folders += [(flag, os.path.dirname(os.path.abspath(path)))
                for flag, path in (("--audit-log", cfg.audit_log),
                                   ("--metrics-log", cfg.metrics_log)) if path]
    for flag, folder in folders:
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{flag} {folder}: cannot make the folder ({exc.strerror})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder}: the folder is not writable")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...], unless: bool) -> Iterator[None]:
    """The loggers ``names`` silent (but for CRITICAL) inside, unless ``unless``."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(lg.level if unless else logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _is_kafka_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the Kafka client library's own errors."""
    from kafka.errors import KafkaError

    return isinstance(exc, KafkaError)


def _fail(exc: BaseException, status: int) -> int:
    """Print ``exc`` as one line, secrets masked; return ``status``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, ERRORS):
        text = f"{type(exc).__name__}: {text}"
    print(f"dwell: error: {redact.redact(text)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
