"""The cost of one training step, per backbone, batch size, table size, method.

Methods, each timed on the same random batch (half the events vague, random labels on the
genuine half) and on the same model, in round-robin so that machine noise hits all alike:

====================  ======================================================================
``bce``               a :class:`~learner.core.optim.MixedAdam` step on BCE over the genuine events
``idl``               a MixedAdam step on the IDL loss (BCE on genuine, IDL on vague events)
``idl+ig``            the learner's IG step (:func:`learner.core.fast.make_inverse_gradient`): vague
                      half as the vague batch, genuine half as the meta batch. For GMF and the
                      wide model on the CPU their compiled step (``gmf/steps.py``,
                      ``wide/steps.py``), else the autograd one
``idl+ig-autograd``   :meth:`learner.core.meta.InverseGradient.step`, the autograd IG step, for
                      every backbone (the same as ``idl+ig`` except for GMF and wide on the CPU)
``idl+ig-torch``      the autograd IG step with torch's parts as they come: ``SparseAdam``,
                      ``Adam`` (not fused) and :func:`torch.func.functional_call` for the
                      look-ahead: the baseline of :class:`~learner.core.optim.RowSparseAdam`, the
                      fused Adam and :class:`~learner.core.meta.SwappedCall`
``ig-reference``      the same step the reference code's way: two deep copies of the model with
                      dense embeddings and a fresh Adam each, the winner's ``state_dict`` loaded
                      back, then the persistent MixedAdam on the meta loss. It copies whole
                      tables, so its repeats are capped (and it is skipped where one step is
                      longer than ``reference_limit_s``)
====================  ======================================================================

The design's target (../shared/DESIGN.md, "Cost must not grow with the id space"): an IDL+IG step
within 3x a sparse BCE step, at any table size. Timings are medians of wall-clock
(:func:`time.perf_counter`) per step; ratios divide medians taken in the same run.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from learner.bounds import Choices, Flag, Range, positive_int
from learner.core.backbones import BACKBONES, Backbone, make_backbone
from learner.core.backbones.gmf.steps import GMFInverseGradient
from learner.core.devices import resolve_device
from learner.core.fast import make_inverse_gradient
from learner.core.losses import LOSSES, inverse_dual_loss
from learner.core.meta import BRANCHES, InverseGradient, Pairs
from learner.core.optim import MixedAdam, ensure_rows
from learner.machine import THREAD_ENV
from learner.service.config import DEVICE

logger = logging.getLogger(__name__)

METHODS = ("bce", "idl", "idl+ig", "idl+ig-autograd", "idl+ig-torch", "ig-reference")
TARGET_RATIO = 3.0
LR = 1e-3
SAMPLE_LR = 1e-3
CPU = torch.device("cpu")
SECTION = "bench:step-cost"
START = f"<!-- {SECTION} -->"
END = f"<!-- /{SECTION} -->"

DEFAULT_MODELS = ("gmf", "neumf")
DEFAULT_BATCH_SIZES = (1024, 8192)
DEFAULT_TABLE_SIZES = (10_000, 1_000_000)
DEFAULT_REPEATS = 15
DEFAULT_WARMUP = 2
QUICK_BATCH_SIZES = (64,)
QUICK_TABLE_SIZES = (500,)
QUICK_REPEATS = 2
QUICK_WARMUP = 1


@dataclass
class _Case:
    """One model, its optimisers and one random batch, in every shape the methods need."""

    model: Backbone
    opt: MixedAdam
    ig: InverseGradient | GMFInverseGradient
    ig_autograd: InverseGradient
    ig_torch: InverseGradient
    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    vague: torch.Tensor
    vague_pairs: Pairs
    meta_pairs: Pairs
    meta_labels: torch.Tensor


def _make_case(
    name: str, dim: int, batch: int, users: int, items: int, seed: int,
    device: torch.device = CPU,
) -> _Case:
    torch.manual_seed(seed)
    model = make_backbone(name, dim).to(device)
    model.train()
    opt = MixedAdam(model, lr=LR)
    ensure_rows(model, opt, users, items)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randint(0, users, (batch,), generator=gen)
    i = torch.randint(0, items, (batch,), generator=gen)
    labels = torch.randint(0, 2, (batch,), generator=gen).float()
    half = batch // 2
    vague = torch.arange(batch) < half
    u, i, labels, vague = (t.to(device) for t in (u, i, labels, vague))
    return _Case(
        model=model, opt=opt, ig=make_inverse_gradient(model, opt, sample_lr=SAMPLE_LR),
        ig_autograd=InverseGradient(model, opt, sample_lr=SAMPLE_LR),
        ig_torch=InverseGradient(
            model, MixedAdam(model, lr=LR, lean=False), sample_lr=SAMPLE_LR,
            call=lambda params, *args: functional_call(model, params, args)),
        users=u, items=i, labels=labels, vague=vague,
        vague_pairs=Pairs(u[:half], i[:half]), meta_pairs=Pairs(u[half:], i[half:]),
        meta_labels=labels[half:],
    )


def _loss_step(case: _Case, loss_name: str) -> None:
    """A plain training step: MixedAdam on ``LOSSES[loss_name]`` over the whole batch."""
    case.opt.zero_grad()
    logits = case.model(case.users, case.items)
    LOSSES[loss_name](logits, case.labels, case.vague, 0).backward()
    case.opt.step()


def _ig_step(case: _Case, ig: InverseGradient | GMFInverseGradient | None = None) -> None:
    ig = ig or case.ig
    ig.optimizer.zero_grad()
    ig.step(case.vague_pairs, case.meta_pairs, case.meta_labels)


def reference_ig_step(
    model: Backbone, optimizer: MixedAdam, vague: Pairs, meta: Pairs, meta_labels: torch.Tensor,
    sample_lr: float = SAMPLE_LR,
) -> str:
    """IG the reference code's way (as ``tests/unit/test_meta.py::slow_ig``); returns the branch.

    Two deep copies of the whole model, with dense embeddings and a fresh Adam each, one step
    on ``+IDL`` / ``-IDL`` of the vague batch; the meta losses pick the winner, whose
    ``state_dict`` is loaded into ``model``; then one step of ``optimizer`` on the meta loss.
    """
    optimizer.zero_grad()
    candidates: dict[str, Backbone] = {"original": model}
    for branch, sign in (("forward", 1.0), ("inverse", -1.0)):
        twin = copy.deepcopy(model)
        for table in model.user_tables + model.item_tables:
            getattr(twin, table).sparse = False
        opt = torch.optim.Adam(twin.parameters(), lr=sample_lr)
        opt.zero_grad()
        loss = sign * inverse_dual_loss(twin(vague.users, vague.items, vague.feats)).mean()
        loss.backward()
        opt.step()
        candidates[branch] = twin
    with torch.no_grad():
        losses = {
            b: float(F.binary_cross_entropy_with_logits(m(meta.users, meta.items, meta.feats),
                                                        meta_labels))
            for b, m in candidates.items()
        }
    chosen = min(BRANCHES, key=lambda b: losses[b])
    if chosen != "original":
        model.load_state_dict(candidates[chosen].state_dict())
    del candidates
    optimizer.zero_grad()
    F.binary_cross_entropy_with_logits(model(meta.users, meta.items, meta.feats),
                                       meta_labels).backward()
    optimizer.step()
    return chosen


def _reference_step(case: _Case) -> None:
    reference_ig_step(case.model, case.opt, case.vague_pairs, case.meta_pairs, case.meta_labels)


STEPS: dict[str, Callable[[_Case], None]] = {
    "bce": lambda case: _loss_step(case, "bce"),
    "idl": lambda case: _loss_step(case, "idl"),
    "idl+ig": _ig_step,
    "idl+ig-autograd": lambda case: _ig_step(case, case.ig_autograd),
    "idl+ig-torch": lambda case: _ig_step(case, case.ig_torch),
    "ig-reference": _reference_step,
}


def _timed(fn: Callable[[_Case], None], case: _Case) -> float:
    start = time.perf_counter()
    fn(case)
    if case.users.is_cuda:  # a CUDA step is queued, not done, when the call returns
        torch.cuda.synchronize(case.users.device)
    return time.perf_counter() - start


def _spread(count: int, total: int) -> set[int]:
    """``count`` round indices spread evenly over ``range(total)``."""
    if count >= total:
        return set(range(total))
    return {math.floor(k * total / count) for k in range(count)}


def step_costs(
    models: Sequence[str] = DEFAULT_MODELS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    table_sizes: Sequence[int] = DEFAULT_TABLE_SIZES,
    dim: int = 32,
    repeats: int | None = None,
    warmup: int | None = None,
    *,
    reference_repeats: int = 3,
    reference_budget_s: float = 10.0,
    reference_limit_s: float = 60.0,
    quick: bool = False,
    progress: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Median wall-clock ms of one training step, per model x batch size x table size x method.

    ``users`` is the table size and ``items`` a fifth of it. The methods run round-robin in
    each of ``repeats`` rounds (the order rotating by round), after ``warmup`` untimed rounds.
    ``ig-reference`` is timed in ``max(reference_repeats, reference_budget_s / its warm-up
    time)`` of the rounds at most, spread over the run, and not at all where its warm-up step
    took longer than ``reference_limit_s`` (its row then has ``median_ms=None``).
    ``quick=True`` uses tiny sizes (batch 64, 500 users) and two rounds: for tests.

    Each row: ``model, batch, users, items, method, median_ms, min_ms, max_ms, steps,
    ratio`` (median over the median of ``bce`` in the same case).
    """
    if quick:
        batch_sizes, table_sizes = QUICK_BATCH_SIZES, QUICK_TABLE_SIZES
        repeats = QUICK_REPEATS if repeats is None else repeats
        warmup = QUICK_WARMUP if warmup is None else warmup
    repeats = DEFAULT_REPEATS if repeats is None else repeats
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    cases = [(m, b, t) for m in models for b in batch_sizes for t in table_sizes]
    rows: list[dict] = []
    bar = tqdm(total=len(cases) * (warmup + repeats), desc="bench", unit="round",
               disable=not progress, leave=False)
    try:
        for k, (name, batch, table) in enumerate(cases):
            bar.set_postfix_str(f"{name} batch {batch} users {table:,}")
            rows += _run_case(name, dim, batch, table, repeats, warmup, reference_repeats,
                              reference_budget_s, reference_limit_s, seed + k, bar,
                              resolve_device(device))
    finally:
        bar.close()
    return rows


def _run_case(
    name: str, dim: int, batch: int, table: int, repeats: int, warmup: int,
    reference_repeats: int, reference_budget_s: float, reference_limit_s: float, seed: int,
    bar: tqdm, device: torch.device = CPU,
) -> list[dict]:
    users, items = table, max(1, table // 5)
    case = _make_case(name, dim, batch, users, items, seed, device)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    reference_rounds = _spread(min(reference_repeats, repeats), repeats)  # if no warm-up
    for r in range(warmup):
        for method in METHODS:
            if method == "ig-reference" and r > 0:
                continue  # one untimed reference step warms it up and sizes its repeats
            seconds = _timed(STEPS[method], case)
            if method == "ig-reference":
                if seconds > reference_limit_s:
                    logger.warning("%s batch %d users %d: ig-reference took %.1f s, not timed",
                                   name, batch, users, seconds)
                    reference_rounds = set()
                else:
                    count = max(reference_repeats, int(reference_budget_s // max(seconds, 1e-9)))
                    reference_rounds = _spread(min(count, repeats), repeats)
        bar.update()
    for r in range(repeats):
        shift = r % len(METHODS)
        for method in METHODS[shift:] + METHODS[:shift]:
            if method == "ig-reference" and r not in reference_rounds:
                continue
            times[method].append(_timed(STEPS[method], case))
        bar.update()
    base = statistics.median(times["bce"])
    rows = []
    for method in METHODS:
        ts = times[method]
        median = statistics.median(ts) if ts else None
        rows.append({
            "model": name, "batch": batch, "users": users, "items": items, "method": method,
            "median_ms": None if median is None else median * 1e3,
            "min_ms": min(ts) * 1e3 if ts else None, "max_ms": max(ts) * 1e3 if ts else None,
            "steps": len(ts), "ratio": None if median is None else median / base,
        })
    logger.info("%s batch %d users %d: %s", name, batch, users, ", ".join(
        f"{r['method']} {r['median_ms']:.2f} ms" for r in rows if r["median_ms"] is not None))
    return rows


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "not timed"
    return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


def format_markdown(
    rows: Iterable[dict], machine: str, date: dt.date | None = None, command: str | None = None
) -> str:
    """The rows as a markdown table, with the machine, the date and the 3x verdicts."""
    rows = list(rows)
    date = date or dt.date.today()
    lines = [
        f"## Cost of one training step (`dwell bench`, {date.isoformat()})",
        "",
        f"Machine: {machine}.",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        "Median wall-clock time of one step on the same random batch (half the events vague),",
        "methods interleaved round-robin; ratio = median / median of `bce` in the same run.",
        "`idl+ig-torch` is the same IG step with torch's SparseAdam, Adam and functional_call",
        "(the baseline of dwell's own); `ig-reference` is the reference code's way (deep",
        "copies, fresh Adam per copy), timed in fewer rounds where it is slow.",
        "",
        "| model | batch | users | method | median ms | ratio to BCE | steps timed |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['model']} | {r['batch']:,} | {r['users']:,} | {r['method']} "
            f"| {_fmt_ms(r['median_ms'])} | {ratio} | {r['steps']} |"
        )
    lines += ["", f"IDL+IG within {TARGET_RATIO:g}x BCE (the design's target):", ""]
    for r in rows:
        if r["method"] != "idl+ig" or r["ratio"] is None:
            continue
        ok = r["ratio"] <= TARGET_RATIO
        lines.append(
            f"- {r['model']}, batch {r['batch']:,}, {r['users']:,} users: "
            f"{r['ratio']:.2f}x, {'yes' if ok else '**no**'}"
        )
    return "\n".join(lines) + "\n"


def _command_line(args: argparse.Namespace) -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ)
    words = [env, "dwell bench --suites steps", "--models", ",".join(args.models)]
    if not args.quick:  # --quick overrides the sizes
        words += ["--batch-sizes", ",".join(map(str, args.batch_sizes)),
                  "--table-sizes", ",".join(map(str, args.table_sizes))]
    if args.dim != 32:
        words += ["--dim", str(args.dim)]
    if args.device != "cpu":
        words += ["--device", args.device]
    for flag in ("repeats", "warmup"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", str(getattr(args, flag))]
    if args.quick:
        words.append("--quick")
    if args.write:
        words += ["--write", args.write]
    return " ".join(w for w in words if w)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The step-cost options of ``dwell bench``."""
    p.add_argument("--models", type=Flag(str, Choices(tuple(BACKBONES)), many=True),
                   default=DEFAULT_MODELS,
                   help="comma-separated backbones (default gmf,neumf)")
    p.add_argument("--batch-sizes", type=positive_int(many=True), default=DEFAULT_BATCH_SIZES,
                   help="comma-separated batch sizes (default 1024,8192)")
    p.add_argument("--table-sizes", type=positive_int(many=True), default=DEFAULT_TABLE_SIZES,
                   help="comma-separated user counts; items are a fifth (default 10000,1000000)")
    p.add_argument("--dim", type=positive_int(65_536), default=32, help="latent factors")
    p.add_argument("--device", type=Flag(str, DEVICE), default="cpu",
                   help="cpu, cuda or auto (step cost, and the learner of the kafka suite)")
    p.add_argument("--repeats", type=positive_int(),
                   help=f"timed rounds (default {DEFAULT_REPEATS})")
    p.add_argument("--warmup", type=Flag(int, Range(0)),
                   help=f"untimed rounds (default {DEFAULT_WARMUP})")


def run(args: argparse.Namespace, machine: str) -> str:
    """Time the steps; the Markdown section."""
    rows = step_costs(args.models, args.batch_sizes, args.table_sizes, dim=args.dim,
                      repeats=args.repeats, warmup=args.warmup, quick=args.quick,
                      device=args.device)
    return format_markdown(rows, machine, command=_command_line(args))
