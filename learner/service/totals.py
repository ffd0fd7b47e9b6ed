"""The ending of a run: the counts that must add up, and the closing summary it prints."""

from __future__ import annotations


def totals_add_up(totals: dict, sent: int | None = None) -> bool:
    """Whether a run's ending is the whole truth: every event consumed was accepted or
    dead-lettered (and, given ``sent``, every event sent was consumed), every dead letter was
    acknowledged by the dead-letter topic, and the committed offsets reached what was
    processed (``uncommitted`` is empty)."""
    dead = totals["dead_lettered"]
    return (totals["consumed"] == totals["accepted"] + dead
            and (sent is None or sent == totals["consumed"])
            and totals.get("dead_letters_written", dead) == dead
            and not totals.get("uncommitted"))


def format_totals(totals: dict, auc: dict, sent: int | None = None,
                  baseline: dict | None = None) -> str:
    """The closing summary: counts that must add up, and the final AUCs (the model's, and
    the counting baseline's beside them where ``baseline`` is given)."""
    lines = []
    rate = totals["consumed"] / totals["seconds"] if totals["seconds"] else 0.0
    if sent is not None:
        lines.append(f"sent          {sent:,}")
    lines += [
        f"consumed      {totals['consumed']:,}",
        f"accepted      {totals['accepted']:,}  "
        + "  ".join(f"{k} {v:,}" for k, v in totals["labelled"].items()),
        f"dead-lettered {totals['dead_lettered']:,}  "
        + "  ".join(f"{k} {v:,}" for k, v in totals["invalid"].items()),
        f"dead letters  {totals.get('dead_letters_written', totals['dead_lettered']):,} "
        "written to the dead-letter topic"
        + (f" ({totals['dead_letters_truncated']:,} as envelopes: too large, cut)"
           if totals.get("dead_letters_truncated") else ""),
        f"train steps   {totals['train_steps']:,}",
        f"learning time {totals['seconds']:.1f} s ({rate:,.0f} events/s from the first batch)",
        "AUC (window/run)  dwell labels {:.4f}/{:.4f}  explicit like/hate {:.4f}/{:.4f}".format(
            auc[("short", "dwell")], auc[("run", "dwell")],
            auc[("short", "explicit")], auc[("run", "explicit")],
        ),
    ]
    if baseline is not None:
        lines.append(
            "  counting baseline       {:.4f}/{:.4f}                     {:.4f}/{:.4f}".format(
                baseline[("short", "dwell")], baseline[("run", "dwell")],
                baseline[("short", "explicit")], baseline[("run", "explicit")]))
    if totals.get("uncommitted"):
        from learner.service.commit import format_uncommitted  # late: it imports torch

        lines.append(f"uncommitted   {format_uncommitted(totals['uncommitted'])} (offsets not "
                     "committed: read again by the group's next learner)")
    lines.append("totals add up: " + ("yes" if totals_add_up(totals, sent) else "NO"))
    return "\n".join(lines)
