"""Seeds aggregated into tables (markdown) and curves (PNG) for ``docs/RESULTS.md``.

Each cell is the mean over seeds ± the sample standard deviation. A method is compared with the
reference's baseline, BCE with vague (sampled) items as negatives (``bce_neg``): a
difference smaller than twice the larger of the two spreads is reported as no difference
(``=``), otherwise ``+`` (better) or ``-`` (worse).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from learner.doc_sections import write_section
from learner.evaluation.protocol import METHODS

BASELINE = "bce_neg"
REFERENCE_ML1M = {  # ../shared/data/ml1m_inverselearning/REFERENCE_RESULTS.md
    ("gmf", "bce_neg"): (0.7152, 0.0030, 0.6853, 0.0050),
    ("neumf", "bce_neg"): (0.7354, 0.0048, 0.6934, 0.0015),
    ("gmf", "idl"): (0.7670, 0.0005, 0.7027, 0.0005),
    ("neumf", "idl"): (0.7742, 0.0021, 0.7072, 0.0028),
    ("gmf", "idl_ig"): (0.7832, 0.0027, 0.7184, 0.0000),
    ("neumf", "idl_ig"): (0.7586, 0.0158, 0.7035, 0.0187),
}
COLUMNS = {
    "ml1m": ("auc", "wauc"),
    "recovery": ("recovery_auc_at_sight", "recovery_acc_at_sight", "recovery_auc_after",
                 "recovery_acc_after"),
    "kuairand": ("auc", "user_auc", "warm_auc"),
}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value).

    >>> mean_sd([0.70, 0.72])
    (0.71, 0.014142135623730963)
    """
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict]) -> dict:
    """(setting, model, method) -> {metric: (mean, std, n)} and the mean curve."""
    groups = defaultdict(list)
    for r in rows:
        if not r.get("tag"):
            groups[(r["setting"], r["model"], r["method"])].append(r)
    out = {}
    for key, runs in groups.items():
        stats = {}
        for metric in set().union(*(r.keys() for r in runs)):
            values = [r[metric] for r in runs if isinstance(r.get(metric), int | float)]
            if values and metric not in ("seed",):
                stats[metric] = (*mean_sd(values), len(values))
        curves = [np.asarray(r["curve"], dtype=float) for r in runs if r.get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            stats["curve"] = np.mean([c[:n] for c in curves], axis=0)
        out[key] = stats
    return out


def verdict(mine: tuple, base: tuple | None) -> str:
    if base is None:
        return ""
    diff = mine[0] - base[0]
    if abs(diff) < 2 * max(mine[1], base[1]):
        return " ="
    return " +" if diff > 0 else " -"


def _cell(stats: dict, metric: str, base: dict | None) -> str:
    if metric not in stats:
        return "n/a"
    mean, std, _n = stats[metric]
    mark = verdict(stats[metric], base.get(metric) if base else None) if base is not stats else ""
    return f"{mean:.4f} ± {std:.4f}{mark}"


def table(agg: dict, setting: str, models: list[str]) -> str:
    metrics = COLUMNS[setting]
    lines = ["| method | model | " + " | ".join(metrics) + " | seeds | events/s |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " | --- | --- |"]
    for model in models:
        base = agg.get((setting, model, BASELINE))
        for method in METHODS:
            stats = agg.get((setting, model, method))
            if not stats:
                continue
            cells = [_cell(stats, m, base) for m in metrics]
            n = max(v[2] for k, v in stats.items() if k != "curve")
            speed = stats.get("events_per_s", (float("nan"),))[0]
            row = " | ".join([method, model, *cells, str(n), f"{speed:,.0f}"])
            lines.append(f"| {row} |")
    return "\n".join(lines)


def reference_table() -> str:
    lines = ["| method | model | auc | wauc |", "| --- | --- | --- | --- |"]
    for (model, method), (a, sa, w, sw) in REFERENCE_ML1M.items():
        lines.append(f"| {method} | {model} | {a:.4f} ± {sa:.4f} | {w:.4f} ± {sw:.4f} |")
    return "\n".join(lines)


def plot(agg: dict, setting: str, model: str, path: Path, ylabel: str) -> bool:
    """AUC against events seen, one line per method; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    drawn = False
    for method in METHODS:
        curve = agg.get((setting, model, method), {}).get("curve")
        if curve is not None and len(curve):
            ax.plot(curve[:, 0], curve[:, 1], label=method, linewidth=1.6)
            drawn = True
    if drawn:
        ax.set_xlabel("events seen")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{setting}, {model} (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return drawn


def write_results(rows: list[dict], out_dir: Path, extras: dict) -> Path:
    """Write the settings' part of ``RESULTS.md`` (its ``eval:settings`` section: the feed
    logs' sections beside it are kept) and ``img/*.png`` under ``out_dir``; return the
    markdown path."""
    agg = aggregate(rows)
    models = sorted({k[1] for k in agg}, key=["gmf", "neumf", "deepfm"].index)
    parts = [
        "# Results of `dwell eval`",
        "",
        f"Generated by `dwell eval` on {dt.date.today().isoformat()} ({extras['machine']}). "
        "Mean ± sample standard deviation over seeds. Marks compare with `bce_neg` (BCE, vague as "
        "negatives, the reference's baseline) on the same backbone: `+` better, `-` worse, "
        "`=` a difference smaller than twice the larger spread (no difference). Events/s is "
        "each run's own training rate, taken while other work may have shared the machine: a "
        "record, not a benchmark (speed is measured by `dwell bench`, docs/BENCHMARKS.md).",
        "",
        "Methods: " + ", ".join(f"`{m}` ({', '.join(f'{k}={v}' for k, v in c.items())})"
                                for m, c in METHODS.items()) + ".",
        "",
        "## Tuned hyper-parameters (GMF, seed 0, first part of each stream)",
        "",
        "| setting | method | values |",
        "| --- | --- | --- |",
    ]
    for setting, per_method in extras["tuned"].items():
        for method, params in per_method.items():
            values = ", ".join(f"{k}={v}" for k, v in params.items())
            parts.append(f"| {setting} | {method} | {values} |")
    sections = {
        "ml1m": ("## 1. The paper's benchmark: MovieLens-1M splits",
                 "Test AUC (liked against disliked observed ratings) and wauc (mean per-user "
                 "AUC), the epoch picked by validation AUC. The reference code's own numbers "
                 "on the same split:\n\n" + reference_table() + "\n\nOurs:"),
        "recovery": ("## 2. Label recovery on MovieLens-1M (30% of training ratings hidden)",
                     "How well the score of a hidden-rating interaction matches the hidden "
                     "rating: when first seen (before training on it) and after training."),
        "kuairand": ("## 3. Dwell labels against the explicit truth: KuaiRand like/hate",
                     "Trained on dwell-time labels only; each event scored before training on "
                     "it against the explicit like/hate; reported on the stream after its "
                     "first 30% (left for tuning). Per-user AUC over users with both labels; "
                     "warm: videos seen in an earlier batch."),
    }
    for setting, (title, intro) in sections.items():
        if not any(k[0] == setting for k in agg):
            continue
        parts += ["", title, "", intro, "", table(agg, setting, models), ""]
        if setting == "kuairand":
            parts += ["Baselines on the same slices (no learning):", "",
                      "| baseline | auc | user_auc | warm_auc |", "| --- | --- | --- | --- |"]
            for name, values in extras["baselines"].items():
                parts.append(f"| {name} | " + " | ".join(
                    f"{values[m]:.4f}" for m in ("auc", "user_auc", "warm_auc")) + " |")
            parts += ["", "Quality of the dwell labels themselves (whole stream):", "",
                      "| dwell band | share of events | explicit like rate |",
                      "| --- | --- | --- |"]
            for band, q in extras["label_quality"].items():
                parts.append(f"| {band} | {q['share']:.3f} | {q['like_rate']:.3f} |")
            parts.append("")
        ylabel = {"ml1m": "test AUC", "recovery": "test AUC",
                  "kuairand": "windowed prequential AUC (explicit)"}[setting]
        for model in models:
            image = out_dir / "img" / f"{setting}-{model}.png"
            if plot(agg, setting, model, image, ylabel):
                parts.append(f"![{setting} {model}](img/{image.name})")
    path = out_dir / "RESULTS.md"
    write_section(path, "\n".join(parts), "eval:settings")
    return path
