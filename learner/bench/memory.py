"""Peak memory with a million users: the learner's RSS, with and without id-map capacities.

Synthetic events stream through an :class:`~learner.core.trainer.OnlineLearner` (GMF, IDL+IG, one
sampled unseen item per event, as ``dwell`` runs it): ``users`` distinct users and ``videos``
distinct videos, every id appearing (each a random permutation, repeated as needed to make
``max(users, videos)`` events), in micro-batches of ``batch``. Each configuration runs in a
fresh Python process, so its peak RSS (``VmHWM``) is its own: once unbounded, once with the
id-map capacities (``max_users`` / ``max_videos``, least recently seen ids evicted). The child
also samples its RSS every tenth of the stream: once a capped run's maps are full, RSS should
stop growing however many new ids come.

The design's target (issue 6): peak RSS under 2 GB at a million users with a capacity limit in
force, and memory bounded once the limit is reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from learner.bounds import positive_int
from learner.machine import THREAD_ENV

logger = logging.getLogger(__name__)

SECTION = "bench:memory"
TARGET_BYTES = 2_000_000_000  # "under 2 GB"
MIB = 2**20
DEFAULT_USERS = 1_000_000
DEFAULT_VIDEOS = 200_000
DEFAULT_CAPACITY = (100_000, 20_000)
QUICK_USERS = 20_000
QUICK_VIDEOS = 4_000
QUICK_CAPACITY = (5_000, 2_000)  # at least a batch (1024) each
BATCH = 1024
SAMPLES = 10
BOUNDED_GROWTH = 0.05  # "bounded": RSS grew by less than this share once the maps were full
_RESULT = "MEMORY-RESULT "
_ROOT = Path(__file__).resolve().parents[2]


# -- the child: one configuration, in its own process ---------------------------------------
def _memory_kib(field: str) -> int:
    """``VmRSS``, ``VmHWM`` or ``RssAnon`` of this process in KiB (ru_maxrss where /proc is
    missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _sequence(distinct: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ids in which each of ``0..distinct-1`` appears (needs ``n >= distinct``):
    random permutations, one after another."""
    rounds = -(-n // distinct)
    return np.concatenate([rng.permutation(distinct) for _ in range(rounds)])[:n]


def stream(users: int, videos: int, max_users: int = 0, max_videos: int = 0,
           batch: int = BATCH, dim: int = 32, samples: int = SAMPLES, seed: int = 0) -> dict:
    """Stream the synthetic events through a learner in this process; what it measured.

    Returns ``events, seconds, events_per_s, import_kib`` (RSS once torch and the learner's
    modules are imported), ``start_kib`` (RSS with the learner built and the
    events generated, before the first batch), ``peak_kib`` (VmHWM at the end),
    ``final_kib``, ``start_anon_kib, final_anon_kib`` (RssAnon: the heap, without the
    libraries' mapped files), ``users, videos`` (ids mapped at the end), ``user_rows, video_rows``
    (table rows), ``evictions`` per table and ``samples``: RSS and map sizes after each
    ``1/samples`` of the stream.
    """
    from learner.core.trainer import OnlineLearner
    from learner.service.config import Config
    from stream.event import EventBatch

    import_kib = _memory_kib("VmRSS")  # torch's libraries, mostly
    config = Config(model="gmf", lr=0.01, train_batch=64, dim=dim, loss="idl", meta="ig",
                    num_neg=1, batch_size=batch, max_users=max_users, max_videos=max_videos,
                    seed=seed)
    learner = OnlineLearner(config.learner_settings())
    rng = np.random.default_rng(seed)
    n = max(users, videos)
    user_ids, video_ids = _sequence(users, n, rng), _sequence(videos, n, rng)
    play_ms = rng.integers(0, 40_000, n)  # against 20 s videos: positive, negative and vague
    duration_ms = np.full(n, 20_000, dtype=np.int64)
    ts_ms = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 10
    no_explicit = np.full(batch, np.nan, dtype=np.float32)
    marks = {min(n, math.ceil(n * k / samples)) for k in range(1, samples + 1)}
    start_kib, start_anon_kib = _memory_kib("VmRSS"), _memory_kib("RssAnon")
    taken: list[dict] = []
    started = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        size = hi - lo
        learner.learn_many(EventBatch(
            np.arange(size), user_ids[lo:hi].tolist(), video_ids[lo:hi].tolist(),
            play_ms[lo:hi], duration_ms[lo:hi], ts_ms[lo:hi], no_explicit[:size],
            np.full(size, -1, np.int64), [None] * size,
        ))
        if any(lo < mark <= hi for mark in marks):
            taken.append({"events": hi, "rss_kib": _memory_kib("VmRSS"),
                          "anon_kib": _memory_kib("RssAnon"),
                          "users": len(learner.users), "videos": len(learner.videos),
                          "evictions": learner.evictions,
                          "seconds": time.perf_counter() - started})
            print(f"{hi:,} events: RSS {taken[-1]['rss_kib'] / 1024:,.0f} MiB, "
                  f"{len(learner.users):,} users, {len(learner.videos):,} videos mapped",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    user_rows, video_rows = learner.model.rows()
    return {
        "users_streamed": users, "videos_streamed": videos, "max_users": max_users,
        "max_videos": max_videos, "batch": batch, "dim": dim, "events": n,
        "seconds": seconds, "events_per_s": n / seconds, "import_kib": import_kib,
        "start_kib": start_kib,
        "peak_kib": _memory_kib("VmHWM"), "final_kib": _memory_kib("VmRSS"),
        "start_anon_kib": start_anon_kib, "final_anon_kib": _memory_kib("RssAnon"),
        "users": len(learner.users), "videos": len(learner.videos),
        "user_rows": user_rows, "video_rows": video_rows, "evictions": learner.evictions,
        "samples": taken,
    }


def _child(spec: str) -> None:
    """Entry point of the child process: ``spec`` is :func:`stream`'s keyword arguments."""
    result = stream(**json.loads(spec))
    print(_RESULT + json.dumps(result), flush=True)


def measure(users: int, videos: int, max_users: int = 0, max_videos: int = 0,
            batch: int = BATCH, dim: int = 32, samples: int = SAMPLES, seed: int = 0) -> dict:
    """:func:`stream` in a fresh Python process (peak RSS of that configuration alone); its
    result plus ``wall_s``, the child's whole life (imports included)."""
    spec = json.dumps({"users": users, "videos": videos, "max_users": max_users,
                       "max_videos": max_videos, "batch": batch, "dim": dim,
                       "samples": samples, "seed": seed})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    code = "import sys; from learner.bench.memory import _child; _child(sys.argv[1])"
    label = f"max_users={max_users}, max_videos={max_videos}" if max_users or max_videos else \
        "unbounded"
    logger.info("memory: %s users, %s videos, %s", f"{users:,}", f"{videos:,}", label)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, spec], cwd=_ROOT, env=env,
                          stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory benchmark child ({label}) failed with exit status "
                           f"{done.returncode}; its output: {done.stdout[-2000:]!r}")
    result = json.loads(lines[-1][len(_RESULT):])
    result["wall_s"] = wall
    return result


# -- the report -----------------------------------------------------------------------------
def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f}"


def _label(r: dict) -> str:
    if not (r["max_users"] or r["max_videos"]):
        return "unbounded"
    return f"capacity {r['max_users']:,} users / {r['max_videos']:,} videos"


def growth_once_full(r: dict) -> tuple[int, int] | None:
    """(RSS KiB at the first sample with both maps at capacity, RSS KiB at the last sample),
    or None where the maps were not full before the last sample (or are unbounded)."""
    if not (r["max_users"] and r["max_videos"]):
        return None
    full = [s for s in r["samples"]
            if s["users"] >= r["max_users"] and s["videos"] >= r["max_videos"]]
    if len(full) < 2:
        return None
    return full[0]["rss_kib"], full[-1]["rss_kib"]


def format_markdown(runs: list[dict], machine: str, date: dt.date | None = None,
                    command: str | None = None) -> str:
    """The runs (unbounded and capped) as the Markdown ``## Memory`` section."""
    date = date or dt.date.today()
    first = runs[0]
    lines = [
        f"## Memory: peak RSS with {first['users_streamed']:,} users (`dwell bench`, "
        f"{date.isoformat()})",
        "",
        f"Machine: {machine}.",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        f"{first['events']:,} synthetic events, {first['users_streamed']:,} distinct users and "
        f"{first['videos_streamed']:,} distinct videos (every id appears), in micro-batches of "
        f"{first['batch']:,}, through an OnlineLearner: GMF (dim {first['dim']}), IDL+IG, one "
        "sampled unseen item per event. Each run is a fresh process: peak RSS is its VmHWM, "
        "everything included. Import: RSS once torch and the learner are imported (shared "
        "library pages, mostly); start: with the learner built and the stream generated, "
        "before the first batch. Anon is RssAnon, the process's own heap.",
        "",
        "| run | peak RSS MiB | RSS import / start / final MiB | anon start / final MiB "
        "| users / videos mapped | table rows users / videos | evictions users / videos "
        "| events/s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {_label(r)} | {_mib(r['peak_kib'])} "
            f"| {_mib(r['import_kib'])} / {_mib(r['start_kib'])} / {_mib(r['final_kib'])} "
            f"| {_mib(r['start_anon_kib'])} / {_mib(r['final_anon_kib'])} "
            f"| {r['users']:,} / {r['videos']:,} | {r['user_rows']:,} / {r['video_rows']:,} "
            f"| {r['evictions']['user']:,} / {r['evictions']['video']:,} "
            f"| {r['events_per_s']:,.0f} | {r['wall_s']:,.1f} |"
        )
    capped = [r for r in runs if r["max_users"] or r["max_videos"]]
    lines += ["", f"RSS while streaming, every {1 / SAMPLES:.0%} of the stream (MiB):", ""]
    header = ["events"] + [f"{_label(r)}: RSS / anon" for r in runs]
    for r in capped:
        header.append(f"{_label(r)}: users / videos mapped, evictions")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(["---:"] * len(header)) + " |")
    for k, sample in enumerate(first["samples"]):
        cells = [f"{sample['events']:,}"]
        for r in runs:
            s = r["samples"][k] if k < len(r["samples"]) else None
            cells.append("" if s is None else f"{_mib(s['rss_kib'])} / {_mib(s['anon_kib'])}")
        for r in capped:
            s = r["samples"][k] if k < len(r["samples"]) else None
            cells.append("" if s is None else (
                f"{s['users']:,} / {s['videos']:,}, "
                f"{s['evictions']['user']:,} / {s['evictions']['video']:,}"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Targets (issue 6): peak RSS under 2 GB ({TARGET_BYTES / MIB:,.0f} MiB) "
              "with a capacity; RSS bounded once the maps are full "
              f"(grown by under {BOUNDED_GROWTH:.0%} from the first sample with both maps full "
              "to the last):", ""]
    for r in runs:
        verdict = "yes" if r["peak_kib"] * 1024 < TARGET_BYTES else "**no**"
        line = f"- {_label(r)}: peak {_mib(r['peak_kib'])} MiB, under 2 GB: {verdict}"
        growth = growth_once_full(r)
        if growth is not None:
            at_full, last = growth
            share = (last - at_full) / at_full
            bounded = "yes" if share < BOUNDED_GROWTH else "**no**"
            line += (f"; RSS {_mib(at_full)} MiB once full, {_mib(last)} MiB at the end "
                     f"({share:+.1%}), bounded: {bounded}")
        elif r in capped:
            line += "; maps not full before the last sample, boundedness not measured"
        lines.append(line)
    return "\n".join(lines) + "\n"


# -- the suite contract -----------------------------------------------------------------------
def _sizes(args: argparse.Namespace) -> tuple[int, int, tuple[int, int]]:
    if getattr(args, "quick", False):
        return QUICK_USERS, QUICK_VIDEOS, QUICK_CAPACITY
    capacity = tuple(getattr(args, "memory_capacity", DEFAULT_CAPACITY))
    if len(capacity) != 2:
        from stream.errors import ConfigError

        raise ConfigError(f"--memory-capacity takes USERS,VIDEOS, not {capacity}")
    return (getattr(args, "memory_users", DEFAULT_USERS),
            getattr(args, "memory_videos", DEFAULT_VIDEOS), capacity)


def _command_line(args: argparse.Namespace) -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ)
    words = [env, "dwell bench --suites memory"]
    if getattr(args, "quick", False):
        words.append("--quick")
    else:
        users, videos, capacity = _sizes(args)
        words += ["--memory-users", str(users), "--memory-videos", str(videos),
                  "--memory-capacity", ",".join(map(str, capacity))]
    if getattr(args, "memory_dim", 32) != 32:
        words += ["--memory-dim", str(args.memory_dim)]
    if getattr(args, "write", None):
        words += ["--write", args.write]
    return " ".join(w for w in words if w)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The memory options of ``dwell bench`` (all ``--memory-...``)."""
    p.add_argument("--memory-users", type=positive_int(), default=DEFAULT_USERS,
                   help=f"distinct users streamed (default {DEFAULT_USERS:,})")
    p.add_argument("--memory-videos", type=positive_int(), default=DEFAULT_VIDEOS,
                   help=f"distinct videos streamed (default {DEFAULT_VIDEOS:,})")
    p.add_argument("--memory-capacity", type=positive_int(many=True), default=DEFAULT_CAPACITY,
                   metavar="USERS,VIDEOS",
                   help="id-map capacities of the capped run (default "
                        f"{DEFAULT_CAPACITY[0]},{DEFAULT_CAPACITY[1]}; each at least a batch, "
                        f"{BATCH})")
    p.add_argument("--memory-dim", type=positive_int(65_536), default=32,
                   help="latent factors (default 32)")


def run(args: argparse.Namespace, machine: str) -> str:
    """Stream once unbounded and once capped, each in its own process; the Markdown section."""
    users, videos, (max_users, max_videos) = _sizes(args)
    dim = getattr(args, "memory_dim", 32)
    runs = [measure(users, videos, dim=dim),
            measure(users, videos, max_users, max_videos, dim=dim)]
    return format_markdown(runs, machine, command=_command_line(args))
