"""``dwell bench``: quick mode runs every method, the report's section replacement is safe.

No timing assertions: these machines are noisy.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt

import pytest
import torch

from learner import bench as cli
from learner import doc_sections as report
from learner.bench import steps as bench
from learner.core.backbones import BACKBONES, make_backbone
from learner.core.features import FEATURE_SIZES
from learner.core.meta import InverseGradient, Pairs
from learner.core.optim import MixedAdam, ensure_rows
from learner.machine import machine_description


@pytest.fixture(scope="module")
def quick_rows() -> list[dict]:
    return bench.step_costs(models=tuple(sorted(BACKBONES)), quick=True, progress=False)


def test_quick_mode_times_every_method_of_every_model(quick_rows):
    cases = {(r["model"], r["batch"], r["users"]) for r in quick_rows}
    assert {c[0] for c in cases} == set(BACKBONES)
    for case in cases:
        rows = [r for r in quick_rows if (r["model"], r["batch"], r["users"]) == case]
        assert [r["method"] for r in rows] == list(bench.METHODS)
        for r in rows:
            assert r["steps"] >= 1
            assert r["median_ms"] > 0 and r["min_ms"] > 0 and r["ratio"] > 0
            assert r["items"] == max(1, r["users"] // 5)
        assert rows[0]["method"] == "bce" and rows[0]["ratio"] == 1.0


def test_markdown_has_a_row_per_result_and_a_verdict_per_case(quick_rows):
    skipped = dict(quick_rows[3], median_ms=None, min_ms=None, max_ms=None, steps=0, ratio=None)
    text = bench.format_markdown([*quick_rows, skipped], "a test machine", dt.date(2026, 1, 2))
    assert "2026-01-02" in text and "a test machine" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(quick_rows) + 1
    assert "not timed" in table[-1]
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(verdicts) == len(BACKBONES)
    assert all(line.endswith(("yes", "**no**")) for line in verdicts)


def test_machine_description_names_the_versions():
    text = machine_description()
    assert torch.__version__ in text and "Python" in text and "numpy" in text


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_reference_step_computes_what_the_fast_ig_computes(name):
    """The benchmark's reference step is the same IG as learner.core.meta's, done the slow way:
    on every backbone, with context features, and a counting backbone's counts (the IG step
    looks ahead on local rows: each must read its own row's counts)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = make_backbone(name, 6)
    opt = MixedAdam(model, lr=0.01)
    ensure_rows(model, opt, 30, 20)
    model.observe(torch.randint(0, 30, (500,), generator=gen),
                  torch.randint(0, 20, (500,), generator=gen),
                  torch.randint(0, 2, (500,), generator=gen).float())
    twin = copy.deepcopy(model)
    twin_opt = MixedAdam(twin, lr=0.01)
    ig = InverseGradient(model, opt, sample_lr=0.05)
    for _ in range(3):
        vague = Pairs(torch.randint(0, 30, (24,), generator=gen),
                      torch.randint(0, 20, (24,), generator=gen), _feats(24, gen))
        meta = Pairs(torch.randint(0, 30, (16,), generator=gen),
                     torch.randint(0, 20, (16,), generator=gen), _feats(16, gen))
        labels = torch.randint(0, 2, (16,), generator=gen).float()
        fast, _, _ = ig.step(vague, meta, labels)
        slow = bench.reference_ig_step(twin, twin_opt, vague, meta, labels, sample_lr=0.05)
        assert fast == slow
        for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(),
                                  strict=True):
            assert torch.allclose(p, q, atol=1e-6), n


def _feats(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, size, (n,), generator=gen) for size in FEATURE_SIZES],
                       dim=1)


SECTION = "## Step cost\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n"


def test_section_is_appended_then_replaced_in_place():
    before = "# Benchmarks\n\nIntro.\n"
    once = report.replace_section(before, SECTION)
    assert once.startswith(before)
    assert once.count(bench.START) == 1 and once.count(bench.END) == 1
    assert report.replace_section(once, SECTION) == once  # idempotent

    around = once + "\n## Later\n\nKept.\n"
    updated = report.replace_section(around, "## Step cost\n\nnew figures\n")
    assert updated.startswith(before) and updated.endswith("## Later\n\nKept.\n")
    assert "new figures" in updated and "| 1 | 2 |" not in updated
    assert report.replace_section(updated, "## Step cost\n\nnew figures\n") == updated


def test_section_text_with_backslashes_is_kept_verbatim():
    once = report.replace_section("x\n", "old\n")
    assert r"a \1 \g<0> b" in report.replace_section(once, "a \\1 \\g<0> b\n")


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError):
        report.replace_section(f"x\n{bench.START}\ny\n", SECTION)


def test_bench_subcommand_writes_the_section(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="dwell")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nKeep me.\n")
    args = parser.parse_args(["bench", "--suites", "steps", "--models", "gmf", "--quick",
                              "--write", str(doc)])
    assert args.models == ("gmf",)
    assert args.func(args) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nKeep me.\n")
    assert text.count(bench.START) == 1 and "| gmf | 64 | 500 | idl+ig |" in text
    assert "| gmf | 64 | 500 | bce |" in capsys.readouterr().out


def test_bench_subcommand_defaults_and_lists():
    parser = argparse.ArgumentParser(prog="dwell")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench"])
    assert args.models == ("gmf", "neumf")
    assert args.batch_sizes == (1024, 8192) and args.table_sizes == (10_000, 1_000_000)
    args = parser.parse_args(["bench", "--batch-sizes", "1,2", "--table-sizes", "1_000"])
    assert args.batch_sizes == (1, 2) and args.table_sizes == (1000,)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--batch-sizes", "x"])
