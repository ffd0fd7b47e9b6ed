"""What every benchmark report carries: the machine's description and Markdown sections.

Each benchmark writes its own section of ``docs/BENCHMARKS.md`` between
``<!-- name -->`` and ``<!-- /name -->`` markers, so one can be rerun without the others.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

import torch

THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _kafka_clients() -> str:
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


def machine_description() -> str:
    """One line: CPU model, cores, RAM, OS, Python, torch and numpy versions, device, and the
    OpenMP settings from the environment if any (they change small-op timings a lot)."""
    import numpy

    ram = _ram_gib()
    cores = f"{os.cpu_count()} cores {_cpu_model()} ({platform.machine()})"
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):
        cores += f", this process pinned to {len(os.sched_getaffinity(0))} of them"
    parts = [
        cores,
        f"{ram:.0f} GiB RAM" if ram is not None else "RAM unknown",
        platform.platform(terse=True),
        f"Python {platform.python_version()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"numpy {numpy.__version__}",
        (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"),
        _kafka_clients(),
    ]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} when described")
    env = [f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ]
    if env:
        parts.append(" ".join(env))
    return ", ".join(parts)


def replace_section(text: str, section: str, name: str = "bench:step-cost") -> str:
    """``text`` with the part between the markers of section ``name`` replaced by ``section``.

    The markers are ``<!-- name -->`` and ``<!-- /name -->``. Without them the section is
    appended (markers included); the rest is kept as is.
    """
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    if start in text or end in text:
        raise ValueError(f"unbalanced markers {start} / {end}")
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"


def write_section(path: Path, section: str, name: str = "bench:step-cost") -> None:
    """Replace (or append) the section ``name`` of the file at ``path``."""
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_section(text, section, name))


def csv(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    """An argparse type: a comma list of ``kind``."""
    def parse(value: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse
