"""The report of ``dwell eval --log``: every scorer beside the counting baselines, over seeds.

One Markdown section per log in ``docs/RESULTS.md`` (``<!-- feed:NAME -->``), rebuilt from
the per-run results committed beside it (``docs/results/feed-NAME.jsonl``): means over
seeds with the sample standard deviation, and each learner's lead over the best baseline.

>>> rows = [{"scorer": "counters", "seed": s, "dwell": 0.7, "engaged": 0.6, "user_dwell": 0.6,
...          "user_engaged": 0.5, "served_dwell": 0.6, "served_engaged": 0.5, "tune_dwell": 0.7,
...          "events_per_s": 1e5} for s in (0, 1)]
>>> "| counters | 2 | 0.7000 ± 0.0000 |" in section("log", rows, {"events": 5})
True
"""

from __future__ import annotations

from learner.evaluation.feed import BASELINES
from learner.evaluation.results_page import mean_sd

#: the figures of each run (learner.evaluation.feed), in the table's order; all but the
#: last are compared with the baselines
COLUMNS = ("dwell", "engaged", "user_dwell", "user_engaged", "served_dwell", "served_engaged",
           "tune_dwell")
LEADS = COLUMNS[:-1]


def section(name: str, rows: list[dict], about: dict) -> str:
    """The Markdown section of log ``name`` from its run ``rows``."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["scorer"], []).append(row)
    means = {s: {c: mean_sd([r[c] for r in rs]) for c in (*COLUMNS, "events_per_s")}
             for s, rs in by.items()}
    lines = [
        f"### `{name}`: every scorer, prequential, reported after the first 30%",
        "",
        ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in about.items()),
        "",
        "| scorer | seeds | AUC vs dwell labels | AUC vs engagement | per-user AUC, dwell "
        "| per-user AUC, engagement | per-user AUC of the served order, dwell "
        "| per-user AUC of the served order, engagement | AUC vs dwell, tuning part "
        "| events/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = sorted(by, key=lambda s: (s in BASELINES, -means[s]["dwell"][0]))
    for scorer in order:
        m = means[scorer]
        cells = " | ".join(f"{m[c][0]:.4f} ± {m[c][1]:.4f}" for c in COLUMNS)
        lines.append(f"| {scorer} | {len(by[scorer])} | {cells} | {m['events_per_s'][0]:,.0f} |")
    baselines = [s for s in by if s in BASELINES]
    if baselines:
        lines += ["", "Lead of each learner over the best baseline of each column (mean):", "",
                  "| learner | " + " | ".join(LEADS) + " |",
                  "| --- | " + " | ".join("---" for _ in LEADS) + " |"]
        best = {c: max(means[b][c][0] for b in baselines) for c in LEADS}
        for scorer in order:
            if scorer not in BASELINES:
                lines.append(f"| {scorer} | " + " | ".join(
                    f"{means[scorer][c][0] - best[c]:+.4f}" for c in LEADS) + " |")
    return "\n".join(lines) + "\n"
