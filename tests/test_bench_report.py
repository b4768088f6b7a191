"""A full benchmark run rewrites bench/RESULTS.md's figures but keeps its hand-written analysis.

The analysis (what the profiles showed, why a goal is missed, the design that would close it)
is what the next person reads first; losing it each time the figures are measured again
would leave only numbers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def report() -> ModuleType:
    """bench/report.py, imported the way bench/run.py imports it (bench/ on the path)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("report")
    finally:
        sys.path.remove(str(BENCH))


def test_a_new_run_replaces_the_figures_and_keeps_the_analysis(
    report: ModuleType, tmp_path: Path
) -> None:
    """The old generated part goes, everything from the analysis heading on stays."""
    results = tmp_path / "RESULTS.md"
    analysis = f"{report.HAND_WRITTEN}\n\nWhy blocked answers miss: the profile says so.\n"
    results.write_text("# misp-dns benchmark results\n\nold figure 0.40x\n\n" + analysis)
    report.write_results(results, "# misp-dns benchmark results\n\nnew figure 0.72x\n")
    text = results.read_text()
    assert "new figure 0.72x" in text
    assert "old figure" not in text
    assert text.endswith(analysis)


def test_a_file_without_analysis_gets_the_report_alone(report: ModuleType, tmp_path: Path) -> None:
    """No heading, nothing kept: the report is the whole file, as before."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# misp-dns benchmark results\n\nold figure\n")
    report.write_results(results, "new report\n")
    assert results.read_text() == "new report\n"
