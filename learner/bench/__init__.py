"""``dwell bench``: speed and memory, each measured side by side in one run.

Suites (``--suites``, comma list; default all), each writing its own section of
``docs/BENCHMARKS.md`` with ``--write``:

===========  ===============================================================================
``steps``    the cost of one training step: BCE, IDL, IDL+IG, IG the reference's way
``decode``   decoding and validation: record by record against a column at a time
``peer``     river's FunkMF and BiasedMF beside dwell's learner on the same events
``kafka``    consume ceilings, end to end, event-to-update latency, replay; per client
``memory``   peak RSS with a million users streamed through, with and without a capacity
``ranks``    one learner against a job of two ranks (torchrun), sync every 1, 16, 64 steps
``budget``   where a record's time goes: fetch, decode, dead letters, train; fetch beside train
``serve``    dwell serve under load: p50/p99 of /rank with 500 candidates, requests/s on one core
``publish``  the model synced through Kafka: the learner with and without publishing, freshness
===========  ===============================================================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from learner.bounds import Choices, Flag
from learner.doc_sections import write_section
from learner.machine import machine_description

logger = logging.getLogger(__name__)

SUITES = ("steps", "decode", "peer", "kafka", "memory", "ranks", "budget", "serve", "publish")


def kafka_clients() -> str:
    """The Kafka clients' versions, for the machine description of a benchmark report."""
    import kafka
    from kafka.record import util

    crc = "crc32c (C)" if util.crc32c_c is not None else "pure-Python CRC-32C"
    text = f"kafka-python {kafka.__version__} with {crc}"
    try:
        import confluent_kafka
    except ImportError:
        return text + ", no confluent-kafka"
    return text + (f", confluent-kafka {confluent_kafka.__version__} "
                   f"(librdkafka {confluent_kafka.libversion()[0]})")


def _suite(name: str):
    return importlib.import_module(f"learner.bench.{name}")


def _bench(args: argparse.Namespace) -> int:
    for name in args.suites:
        # before the run: its load average is the neighbours'
        machine = machine_description([kafka_clients()])
        module = _suite(name)
        text = module.run(args, machine)
        print(text)
        if args.write:
            write_section(Path(args.write), text, module.SECTION)
            logger.info("wrote the %s section of %s", module.SECTION, args.write)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommand on the ``dwell`` command's subparsers."""
    p = subparsers.add_parser("bench", help="measure speed and memory (docs/BENCHMARKS.md)")
    p.add_argument("--suites", type=Flag(str, Choices(SUITES), many=True), default=SUITES,
                   help=f"comma list of {', '.join(SUITES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--write", metavar="FILE",
                   help="replace (or append) each suite's section of FILE, e.g. "
                        "docs/BENCHMARKS.md")
    for name in SUITES:
        _suite(name).add_arguments(p)
    p.set_defaults(func=_bench)


def main(argv: list[str] | None = None) -> int:
    """``python -m learner.bench ...``: the ``bench`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="dwell")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    return args.func(args)
