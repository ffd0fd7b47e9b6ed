"""The peer and decode benchmark suites produce their sections (tiny runs); the ranks suite
reads its learners' summaries and lays out its table (no broker, no processes here)."""

from __future__ import annotations

import argparse

import pytest

from learner import bench
from learner.bench import decode, peer, ranks
from learner.cli import format_totals


def test_peer_section_compares_river_and_dwell_on_the_same_events():
    section = peer.run(argparse.Namespace(quick=True), machine="test machine")
    assert section.startswith("## Peer") and "test machine" in section
    rows = [line for line in section.splitlines() if line.startswith("| river")
            or line.startswith("| dwell")]
    assert len(rows) == 2 + len(peer.DWELL_SETUPS)
    for row in rows:
        rate, auc = row.split("|")[2], row.split("|")[4]
        assert float(rate.replace(",", "")) > 0 and 0.0 <= float(auc) <= 1.0


def test_decode_section_has_both_ways_and_the_floors():
    rates = decode.decode_rates(rounds=1)
    assert len(rates) == 4 and all(rate > 0 for rate in rates.values())


def _summary(consumed: int, seconds: float, run_auc: float) -> str:
    """The closing summary ``dwell learn`` prints (the learner's own formatting)."""
    totals = {"consumed": consumed, "accepted": consumed - 5, "dead_lettered": 5,
              "labelled": {"positive": 10}, "invalid": {"duration": 5},
              "train_steps": 42, "seconds": seconds}
    auc = {("short", "dwell"): 0.6, ("run", "dwell"): run_auc,
           ("short", "explicit"): 0.7, ("run", "explicit"): 0.71}
    return format_totals(totals, auc)


def test_ranks_reads_a_plain_learners_summary():
    text = "12:00:00 INFO learner.daemon: consumed 512 so far\n" + _summary(40_000, 4.0, 0.6312)
    result = ranks.parse_learner("1 learner", text)
    assert (result.ranks, result.sync_every) == (1, None)
    assert (result.events, result.seconds, result.auc) == (40_000, 4.0, 0.6312)
    assert result.rate == 10_000


def test_ranks_reads_a_job_the_slowest_rank_sets_its_time():
    job_line = ("job of 2 ranks: consumed 40,000 accepted 39,990 dead-lettered 10 | run AUC "
                "dwell 0.6290 explicit 0.7000")
    rank0, rank1 = _summary(20_000, 5.0, 0.62), _summary(20_000, 8.0, 0.64)
    progress = ("12:00:05 INFO learner.rank_daemon: job of 2 ranks: consumed 20480 | run AUC "
                "dwell 0.6100 | per rank [(10240, 9760), (10240, 9760)]")
    text = "\n".join([progress, rank0, job_line, rank1, job_line])
    result = ranks.parse_job("2 ranks, sync every 16", 16, text)
    assert (result.ranks, result.sync_every, result.events) == (2, 16, 40_000)
    assert result.seconds == 8.0 and result.rate == 5_000
    assert result.auc == 0.6290  # the job's merged run AUC, not a rank's own


def test_ranks_refuses_output_without_a_summary():
    with pytest.raises(ValueError, match="no job summary"):
        ranks.parse_job("2 ranks", 1, _summary(20_000, 5.0, 0.62))
    with pytest.raises(ValueError, match="learning times for 2 ranks"):
        ranks.parse_job("2 ranks", 1, _summary(20_000, 5.0, 0.62) + "\njob of 2 ranks: "
                        "consumed 40,000 accepted 40,000 dead-lettered 0 | run AUC dwell 0.6 "
                        "explicit 0.7")
    with pytest.raises(ValueError, match="no closing summary"):
        ranks.parse_learner("1 learner", "Traceback (most recent call last):")


def test_ranks_section_compares_every_configuration_with_one_learner():
    results = [ranks.Result("1 learner", 1, None, 40_000, 4.0, 0.6300),
               ranks.Result("2 ranks, sync every 1", 2, 1, 40_000, 8.0, 0.6250),
               ranks.Result("2 ranks, sync every 64", 2, 64, 40_000, 5.0, 0.6350)]
    section = ranks.format_markdown(results, 40_000, "the shipped log", "test machine",
                                    "dwell bench --suites ranks")
    assert section.startswith("## Ranks") and "test machine" in section
    assert "`dwell bench --suites ranks`" in section and "2 cores" in section
    rows = [line for line in section.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert rows == ["| 1 learner | 10,000 | 1.00 | 0.6300 | +0.0000 |",
                    "| 2 ranks, sync every 1 | 5,000 | 0.50 | 0.6250 | -0.0050 |",
                    "| 2 ranks, sync every 64 | 8,000 | 0.80 | 0.6350 | +0.0050 |"]


def test_ranks_is_a_suite_with_its_options():
    parser = argparse.ArgumentParser(prog="dwell")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--suites", "ranks", "--ranks-sync", "1,8"])
    assert "ranks" in bench.SUITES and args.suites == ("ranks",)
    assert args.ranks_sync == (1, 8) and args.ranks_repeat == 5
    assert parser.parse_args(["bench"]).ranks_sync == ranks.DEFAULT_SYNC


def test_peer_rounds_report_one_median_pass_per_learner():
    once = {r.name: r for r in peer.peer_results(limit=1_500, rounds=1)}
    thrice = peer.peer_results(limit=1_500, rounds=3)
    assert [r.name for r in thrice] == list(once)
    for r in thrice:  # every model is seeded: a pass's AUC does not depend on the round
        assert r.auc == pytest.approx(once[r.name].auc, abs=1e-9) and r.events_per_s > 0
