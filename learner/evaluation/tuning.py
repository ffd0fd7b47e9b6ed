"""Hyper-parameters tuned on the first part of each stream, with GMF and seed 0.

For ml1m (and recovery, which reuses ml1m's choice) the score is the validation AUC (the
reference's 20,004 validation rows); for kuairand, the explicit AUC on the first
``TUNE_SHARE`` of the stream, which the report leaves out. The same values then serve
every backbone and seed.
"""

from __future__ import annotations

import itertools
import logging

from tqdm import tqdm

from learner.evaluation.protocol import METHODS, run
from learner.evaluation.store import RunStore

logger = logging.getLogger(__name__)

GRID = {"lr": (0.003, 0.01, 0.03), "train_batch": (64, 256)}
IG_GRID = {"sample_lr": (0.001, 0.01)}
ML1M_EPOCHS = 2  # passes; the best by validation AUC is reported
SCORE = {"ml1m": "valid_auc", "kuairand": "tune_auc"}


def candidates(method: str, setting: str) -> list[dict]:
    grid = dict(GRID, **(IG_GRID if METHODS[method].get("meta") == "ig" else {}))
    out = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if setting == "ml1m":
        for c in out:
            c["epochs"] = ML1M_EPOCHS
    return out


def tune(setting: str, methods: list[str], store: RunStore) -> dict[str, dict]:
    """Run the grid (skipping what the store has) and return the best values per method."""
    tag_of = lambda c: "tune:" + ",".join(f"{k}={v}" for k, v in sorted(c.items()))  # noqa: E731
    jobs = [(m, c) for m in methods for c in candidates(m, setting)]
    for method, cand in tqdm(jobs, desc=f"tune {setting}", unit="run"):
        if not store.has(setting, method, "gmf", 0, tag_of(cand)):
            result = run(setting, method, "gmf", 0, cand)
            store.add({"setting": setting, "method": method, "model": "gmf", "seed": 0,
                       "tag": tag_of(cand), "params": cand, **result})
    return best_params(setting, methods, store)


def best_params(setting: str, methods: list[str], store: RunStore) -> dict[str, dict]:
    """The tuned values per method from the store (empty dict where nothing was tuned)."""
    rows = [r for r in store.rows() if r["setting"] == setting and r.get("tag", "").startswith(
        "tune:")]
    best = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if mine:
            best[method] = max(mine, key=lambda r: r[SCORE[setting]])["params"]
    return best
