"""The ``dwell eval`` subcommand: tune, run the grid (resumable), write the report."""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

from tqdm import tqdm

from learner.bounds import Choices, Flag, Range
from learner.core.settings import BACKBONE_NAMES, SEED_MAX
from learner.evaluation import protocol, results_page, tuning
from learner.evaluation.store import RunStore

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="replay data sets through the learner offline; report")
    p.add_argument("--settings", type=Flag(str, Choices(tuple(protocol.SETTINGS)), many=True),
                   default=list(protocol.SETTINGS),
                   help="comma list of " + ", ".join(protocol.SETTINGS))
    p.add_argument("--methods", type=Flag(str, Choices(tuple(protocol.METHODS)), many=True),
                   default=list(protocol.METHODS),
                   help="comma list of " + ", ".join(protocol.METHODS))
    p.add_argument("--models", type=Flag(str, Choices(BACKBONE_NAMES), many=True),
                   default=["gmf", "neumf", "deepfm"])
    p.add_argument("--seeds", type=Flag(int, Range(0, SEED_MAX), many=True), default=[0, 1, 2])
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                   help="tune on the first part of each stream first (cached)")
    p.add_argument("--runs", type=Path, default=REPO / "runs/eval",
                   help="folder of the resumable run results")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where RESULTS.md goes")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report")
    p.set_defaults(func=run_eval)


def _tuned(setting: str, args: argparse.Namespace) -> dict[str, dict]:
    source = "ml1m" if setting == "recovery" else setting
    store = RunStore(args.runs / f"tune-{source}.jsonl")
    if args.tune and not args.report_only:
        return tuning.tune(source, args.methods, store)
    return tuning.best_params(source, args.methods, store)


def run_eval(args: argparse.Namespace) -> int:
    store = RunStore(args.runs / "runs.jsonl")
    tuned = {s: _tuned(s, args) for s in args.settings}
    if not args.report_only:
        jobs = [
            job for job in itertools.product(args.settings, args.methods, args.models, args.seeds)
            if not store.has(*job)
        ]
        for setting, method, model, seed in tqdm(jobs, desc="eval", unit="run"):
            params = tuned[setting].get(method, {})
            result = protocol.run(setting, method, model, seed, params)
            store.add({"setting": setting, "method": method, "model": model, "seed": seed,
                       "params": params, **result})
            logger.info("%s %s %s seed %d: %s", setting, method, model, seed,
                        {k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
    from learner.machine import machine_description

    extras = {"tuned": {s: tuned[s] for s in args.settings}, "machine": machine_description()}
    rows = store.rows()
    if any(r["setting"] == "kuairand" for r in rows):
        extras["baselines"] = protocol.kuairand_baselines()
        extras["label_quality"] = protocol.dwell_label_quality()
    path = results_page.write_results(rows, args.out, extras)
    print(f"wrote {path}")
    return 0
