"""The peer and decode benchmark suites produce their sections (tiny runs)."""

from __future__ import annotations

import argparse

from learner.bench import decode, peer


def test_peer_section_compares_river_and_dwell_on_the_same_events():
    section = peer.run(argparse.Namespace(quick=True), machine="test machine")
    assert section.startswith("## Peer") and "test machine" in section
    rows = [line for line in section.splitlines() if line.startswith("| river")
            or line.startswith("| dwell")]
    assert len(rows) == 2 + len(peer.DWELL_SETUPS)
    for row in rows:
        rate, auc = row.split("|")[2], row.split("|")[4]
        assert float(rate.replace(",", "")) > 0 and 0.0 <= float(auc) <= 1.0


def test_decode_section_has_both_ways_and_the_floor():
    rates = decode.decode_rates(rounds=1)
    assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
