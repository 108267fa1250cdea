"""The bench's report (tools/bench, `make bench`), without measuring anything: every section renders its block from a
results file (tests/data/bench_results.json: made-up figures with every key the sections read), in the report's
order; a section absent from the results keeps its block of the existing docs/benchmarks.md, and its date; the
figures measured by hand are linked, not copied."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

RESULTS = json.loads((ROOT / "tests" / "data" / "bench_results.json").read_text(encoding="utf-8"))


@pytest.fixture
def report(tmp_path, monkeypatch):
    """tools/bench/report.py writing into tmp_path, over a copy of the committed docs/benchmarks.md."""
    from tools.bench import report

    shutil.copy(ROOT / "docs" / "benchmarks.md", tmp_path / "benchmarks.md")
    monkeypatch.setattr(report, "DOCS", tmp_path)
    return report


def test_every_section_renders_in_report_order(report):
    from tools.bench.sections import REPORT_ORDER, SECTIONS

    text = report.write(RESULTS)
    assert text == (report.DOCS / "benchmarks.md").read_text(encoding="utf-8")
    _, blocks = report._blocks(text)
    assert list(blocks) == [s.NAME for s in REPORT_ORDER] and set(blocks) == set(SECTIONS)  # every --only section
    assert [line for line in text.splitlines() if line.startswith("## ")][-1] == "## measured by hand"
    assert "[benchmarks-by-hand.md](benchmarks-by-hand.md)" in text and "Search kernels, 2026-11-30" not in text
    for row in RESULTS["embed"]:  # a figure of the results, as its table prints it
        assert f"| {row['model']} | {row['texts']:,} | {row['embtool_tps']:.1f} | {row['st_tps']:.1f} |" in blocks["embed"]
    assert report.write(RESULTS) == text  # written again over its own output: the same


def test_a_section_not_measured_keeps_its_block_and_date(report):
    _, old = report._blocks((report.DOCS / "benchmarks.md").read_text(encoding="utf-8"))
    old_runs = report._old_runs()  # from the header: {section: {date, command}}
    _, new = report._blocks(report.write({k: v for k, v in RESULTS.items() if k not in ("search", "fused")}))
    assert new["search"] == old["search"] and new["fused"] == old["fused"]
    assert new["embed"] != old["embed"] and list(new) == list(old)
    runs = report._old_runs()
    assert runs["search"] == old_runs["search"] and runs["embed"] == RESULTS["_runs"]["embed"]
