"""The ``dwell eval`` subcommand: tune, run the grid (resumable), write the report.

With ``--log``, any feed log instead (:mod:`learner.evaluation.feed`): every learner and
baseline over seeds, the results kept in ``docs/results/feed-NAME.jsonl`` and the section
of ``docs/RESULTS.md`` rebuilt from them (``--report-only`` rebuilds it alone).
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

from tqdm import tqdm

from learner.bounds import FIELD_COLUMN, Choices, Flag, Pattern, Range, column_mapping
from learner.core.settings import BACKBONE_NAMES, SEED_MAX
from learner.evaluation import feed as feed_eval
from learner.evaluation import feed_page, protocol, results_page, tuning
from learner.evaluation.store import RunStore
from producers.readers import READERS

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
    p.add_argument("--runs", type=Path, default=REPO / "docs/results",
                   help="folder of the resumable per-run results (committed: --report-only "
                   "rebuilds the page from them)")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where RESULTS.md goes")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report")
    feed = p.add_argument_group(
        "any feed log (--log)", "prequential on a log read as dwell replay reads it, every "
        "scorer beside the counting baselines; instead of the settings above")
    feed.add_argument("--log", type=Path, help="the log file (CSV, TSV, JSONL or Parquet)")
    feed.add_argument("--name", help="the log's name in the report (default: the file's stem)")
    feed.add_argument("--format", default="auto", type=Flag(str, Choices(("auto", *READERS))),
                      help=f"log format: auto or {', '.join(READERS)}")
    feed.add_argument("--map", nargs="*", metavar="FIELD=COLUMN", help="column mapping, as "
                      "dwell replay's (context.tab=COLUMN gives the wide model its tab)",
                      type=Flag(str, FIELD_COLUMN))
    feed.add_argument("--explicit", type=Flag(str, Pattern(r"[\w.]+", "COLUMN", ("a b",)),
                                              many=True), default=[],
                      help="comma list of 0/1 columns: engaged = any set (the truth no dwell "
                      "label sees)")
    feed.add_argument("--scorers", default=["default", "counters", "biased_mf"],
                      type=Flag(str, Choices((*feed_eval.LEARNERS, *feed_eval.BASELINES)),
                                many=True),
                      help="comma list of learners (" + ", ".join(feed_eval.LEARNERS)
                      + ") and baselines (" + ", ".join(feed_eval.BASELINES) + ")")
    p.set_defaults(func=run_eval)


def run_feed_eval(args: argparse.Namespace) -> int:
    """``dwell eval --log``: the runs not yet in the store, then the report section."""
    name = args.name or args.log.name.split(".")[0]
    store = RunStore(args.out / "results" / f"feed-{name}.jsonl")
    jobs = [(scorer, seed) for scorer in args.scorers for seed in args.seeds
            if not store.has(name, scorer, "-", seed)]
    if jobs and not args.report_only:
        feed = feed_eval.load_feed(args.log, column_mapping(args.map), args.explicit,
                                   args.format)
        logger.info("%s: %d events (%d invalid dropped)", args.log, len(feed), feed.dropped)
        for scorer, seed in tqdm(jobs, desc=f"eval {name}", unit="run"):
            row = feed_eval.evaluate(feed, scorer, seed)
            store.add({"setting": name, "method": scorer, "model": "-", **row,
                       "events": len(feed), "dropped": feed.dropped})
            logger.info("%s seed %d: %s", scorer, seed,
                        {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    rows = store.rows()
    if not rows:
        print(f"no results for {name} yet")
        return 1
    from learner.doc_sections import write_section

    about = {"events": rows[-1]["events"], "invalid rows dropped": rows[-1]["dropped"],
             "results": f"docs/results/feed-{name}.jsonl"}
    path = args.out / "RESULTS.md"
    write_section(path, feed_page.section(name, rows, about), f"feed:{name}")
    print(f"wrote {path} (section feed:{name})")
    return 0


def _tuned(setting: str, args: argparse.Namespace) -> dict[str, dict]:
    source = "ml1m" if setting == "recovery" else setting
    store = RunStore(args.runs / f"tune-{source}.jsonl")
    if args.tune and not args.report_only:
        return tuning.tune(source, args.methods, store)
    return tuning.best_params(source, args.methods, store)


def run_eval(args: argparse.Namespace) -> int:
    if args.log is not None:
        return run_feed_eval(args)
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
