"""The machine a report's figures were measured on, in one line (benchmarks, evaluation).

It imports no Kafka client: a benchmark that uses one adds its versions
(``machine_description(extra=...)``, :func:`learner.bench.kafka_clients`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

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


def machine_description(extra: Sequence[str] = ()) -> str:
    """One line: CPU model, cores, RAM, OS, Python, torch and numpy versions, device, the
    ``extra`` parts (a benchmark's Kafka clients), and the OpenMP settings from the
    environment if any (they change small-op timings a lot)."""
    import numpy
    import torch

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
        *extra,
    ]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} when described")
    env = [f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ]
    if env:
        parts.append(" ".join(env))
    return ", ".join(parts)
