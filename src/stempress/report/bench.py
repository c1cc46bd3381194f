"""``stempress bench`` with its report: the grid run by ``bench.api.run_bench``, then its folder rendered.

Why here: the benchmark measures and saves; rendering is the report layer's, above it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from stempress.bench.api import BenchReport, run_bench
from stempress.report import build_report


def run_bench_with_report(*, paper_dir: Path | None = None, **options: Any) -> BenchReport:
    """``run_bench(**options)``, then the folder's report (compared with the study's tables in ``paper_dir``, by
    default those shipped with stempress); ``BenchReport.report`` is the HTML page."""
    measured = run_bench(**options)
    return replace(measured, report=build_report(measured.out, paper_dir))
