"""Decoding and validating record values: record by record against a column at a time.

Both paths of :func:`stream.event.decode_batch` on the same micro-batches of the shipped
KuaiRand log (whose 18% zero-duration rows take the record-by-record check), interleaved
round by round. Two floors: msgspec's parse into the event struct alone (what both paths
start from), and ``orjson.loads`` to dicts alone (the parser before msgspec).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgspec
import orjson

from learner.evaluation.datasets import KUAIRAND
from producers.readers import order_by_time, read_log
from stream.event import Wire, decode_batch, decode_each

SECTION = "bench:decode"


def _orjson_only(values: list[bytes]) -> None:
    list(map(orjson.loads, values))


_WIRE = msgspec.json.Decoder(Wire)


def _msgspec_only(values: list[bytes]) -> None:
    list(map(_WIRE.decode, values))


def decode_rates(rounds: int = 7, batch: int = 1024) -> dict[str, float]:
    """Median events/s of each way over ``rounds`` interleaved passes."""
    raw = [orjson.dumps(e) for e in order_by_time(read_log(KUAIRAND).events)]
    batches = [raw[i:i + batch] for i in range(0, len(raw), batch)]
    ways: dict[str, Callable[[list[bytes]], object]] = {
        "record by record (decode_each)": decode_each,
        "column at a time (decode_batch)": decode_batch,
        "msgspec parse into the event struct only": _msgspec_only,
        "orjson.loads to dicts only": _orjson_only,
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in list(ways)[r % len(ways):] + list(ways)[:r % len(ways)]:
            start = time.perf_counter()
            for values in batches:
                ways[name](values)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(raw) / statistics.median(s) for name, s in seconds.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(args: argparse.Namespace, machine: str) -> str:
    rates = decode_rates(rounds=2 if args.quick else 7)
    base = rates["record by record (decode_each)"]
    lines = ["## Decoding and validation", "",
             f"`dwell bench --suites decode` on {machine}: the shipped KuaiRand log in "
             "micro-batches of 1,024, median of interleaved rounds.", "",
             "| way | events/s | x record by record |", "| --- | --- | --- |"]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f} |" for name, rate in rates.items()]
    return "\n".join(lines) + "\n"
