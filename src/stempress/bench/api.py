"""``stempress bench`` as a function: sources in, a results folder out.

The HTML report of the folder is the report layer's (``stempress.report.bench.run_bench_with_report`` runs this and
then renders it; ``stempress.report.build_report`` renders any results folder later).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stempress.bench.environment import environment
from stempress.bench.inventory import DatasetProfile, profile_dataset, write_inventory
from stempress.bench.measure import DEFAULT_LAYOUT, FILTER, PARALLEL, Layout, layout_path
from stempress.bench.protocol import Protocol
from stempress.bench.results import (
    RESULTS_CSV,
    STATISTICS_CSV,
    atomic_write,
    missing_root,
    prepare_out_dir,
    problems_table,
    save_results,
)
from stempress.bench.runner import ERROR, SKIPPED, UNAVAILABLE, BenchConfig, Progress, run_grid
from stempress.bench.statistics import statistics, summary
from stempress.codecs.catalog import select_codecs
from stempress.cores import usable_cores
from stempress.data.base import Dataset4D
from stempress.errors import StempressError

DEFAULT_SUITE = "paper-like"
#: Runs of the grid by default: two give every cell a run-to-run CV and keep the default paper-like benchmark
#: near ten minutes on a 2-core machine (README); the study ran ten (``runs=STUDY_RUNS``, ``--runs 10``).
DEFAULT_RUNS = 2
STUDY_RUNS = 10


@dataclass
class BenchReport:
    out: Path
    report: Path | None  # the HTML report, once rendered (run_bench_with_report); None from run_bench
    results: pd.DataFrame
    statistics: pd.DataFrame
    summary: pd.DataFrame
    errors: int
    problems: list[str]

    @property
    def problems_table(self) -> pd.DataFrame:
        """The cells without a number: status, dataset, method, reason and how many runs."""
        return problems_table(self.results)

    @property
    def nothing_measured(self) -> str | None:
        """Why no cell has a number, and what to change; None when something was measured."""
        if not self.statistics.empty:
            return None
        counts = self.results["status"].value_counts()
        found = ", ".join(f"{counts[s]} {s}" for s in (SKIPPED, UNAVAILABLE, ERROR) if s in counts) or "no cells"
        return (f"no measurement succeeded ({found}; reasons in {self.out / RESULTS_CSV}); raise --time-limit, "
                "or choose methods this machine has (stempress codecs)")


def open_sources(
    sources: Sequence[str | Path], suite: str | None, dataset: str | None, scan_shape: tuple[int, int] | None
) -> list[Dataset4D]:
    """Files named by the user, plus a suite; the paper-like suite when neither is given."""
    from stempress.data.open import open_source
    from stempress.data.suites import suite as suite_sources

    opened: list[Dataset4D] = [open_source(s, dataset=dataset, scan_shape=scan_shape) for s in sources]
    if suite or not opened:
        opened += suite_sources(suite or DEFAULT_SUITE)
    names = [s.name for s in opened]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise StempressError(f"two sources are both named {duplicated[0]!r}; rename one file so results stay apart")
    return opened


def check_protocol(protocol: str) -> None:
    """The timing protocols the study's way allows, refused before any folder is made."""
    if protocol not in ("warm", "cold"):
        raise StempressError(f"--protocol {protocol!r} is unknown; use warm or cold")


def default_results_folder() -> Path:
    """results/bench-DATE-TIME: a new folder per run, so a run never mixes with an earlier one."""
    return Path("results") / time.strftime("bench-%Y%m%d-%H%M%S")


def run_bench(
    *,
    sources: Sequence[str | Path] = (),
    suite: str | None = None,
    methods: str | Sequence[str] = "paper",
    chunkings: Sequence[str | tuple[int, ...]] = ("real_space", "balanced", "single_frame"),
    paths: Sequence[str] = (FILTER,),
    workers: int | None = None,
    runs: int = DEFAULT_RUNS,
    protocol: Protocol = "warm",
    layout: Layout = DEFAULT_LAYOUT,
    out: Path,
    workdir: Path | None = None,
    time_limit_s: float | None = 60.0,
    dataset: str | None = None,
    scan_shape: tuple[int, int] | None = None,
    seed: int = 0,
    force: bool = False,
    warmup: bool = True,
    stage_limit_bytes: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> BenchReport:
    """Run the grid; write results.csv/.parquet, statistics.csv, inventory.csv and metadata.json (the report of
    the folder: ``stempress.report.bench.run_bench_with_report``, or ``build_report`` afterwards).

    A run that stops before its results are saved (bad input, too little disk space, an error, Ctrl-C) removes
    the folders it made, so an early stop leaves nothing behind.
    """
    check_protocol(protocol)
    codecs = select_codecs(methods)
    layout_path(layout)  # an unknown layout is one line, before anything is opened
    opened = open_sources(sources, suite, dataset, scan_shape)
    config = BenchConfig(codecs=codecs, chunkings=list(chunkings), paths=list(paths),
                         workers=workers or usable_cores(), runs=runs, protocol=protocol, layout=layout,
                         time_limit_s=time_limit_s, workdir=workdir or out, seed=seed, warmup=warmup,
                         stage_limit_bytes=stage_limit_bytes)
    profiles: list[DatasetProfile] = []
    made = [root for root in dict.fromkeys(map(missing_root, (out, config.workdir))) if root is not None]
    try:
        prepare_out_dir(out, force)
        rows = run_grid(opened, config, on_progress, on_staged=lambda cube: profiles.append(profile_dataset(cube)))
        frame, stats = _save(out, rows, profiles, _metadata(config, opened, paths))
    except BaseException:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        for source in opened:
            source.close()
    problems = [f"{r['dataset']} {r['method']} run {r['run_number']}: {r['status']}: {r['reason']}"
                for r in rows if r["status"] in (ERROR, SKIPPED)]
    unavailable = sorted({f"{r['codec']}: {r['reason']}" for r in rows if r["status"] == UNAVAILABLE})
    problems += [f"unavailable {line}" for line in unavailable]
    return BenchReport(out, None, frame, stats, summary(stats), sum(r["status"] == ERROR for r in rows), problems)


def _metadata(config: BenchConfig, opened: Sequence[Dataset4D], paths: Sequence[str]) -> dict[str, Any]:
    """metadata.json: the machine and libraries, and every setting the numbers depend on."""
    return environment(config.protocol, {
        "runs": config.runs, "seed": config.seed, "time_limit_s": config.time_limit_s,
        "warmup": "each method once on a sample of the first dataset, discarded" if config.warmup else "none",
        "layout": config.layout, "dataset_path": layout_path(config.layout),
        "methods": [c.config() for c in config.codecs], "chunkings": [str(c) for c in config.chunkings],
        "paths": list(paths), "parallel_workers": config.workers if PARALLEL in paths else None,
        "datasets": [{"name": s.name, "shape": s.shape, "dtype": str(s.dtype)} for s in opened],
    })


def _save(out: Path, rows: list[dict[str, Any]], profiles: list[DatasetProfile], meta: dict[str, Any]
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results folder's tables: results, metadata, inventory and statistics (empty when nothing succeeded)."""
    frame = save_results(out, rows, meta)
    write_inventory(out, profiles)
    stats = statistics(frame)
    atomic_write(out / STATISTICS_CSV, lambda p: stats.to_csv(p, index=False))
    return frame, stats
