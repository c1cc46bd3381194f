"""The benchmark grid: datasets x methods x chunkings x runs, in random order within each run.

Every cell of the grid becomes one row of the tidy results table, including those that could not be
measured (codec unavailable, time limit, error), so nothing is silently dropped.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from stempress.bench.measure import (
    DEFAULT_LAYOUT,
    FILTER,
    NO_CHUNKING,
    PARALLEL,
    Layout,
    Method,
    measure,
    methods_for,
    unavailable_reason,
)
from stempress.bench.protocol import Protocol, TimeLimitExceeded
from stempress.bench.results import missing_root
from stempress.bench.verify import Reference, VerificationError
from stempress.codecs.catalog import Codec
from stempress.data.base import ArraySource, Dataset4D, iter_blocks, nbytes, row_nbytes
from stempress.errors import StempressError
from stempress.sizes import human_size

#: Rows of the results table that hold numbers; the others say why there are none.
OK, SKIPPED, UNAVAILABLE, ERROR = "ok", "skipped", "unavailable", "error"

#: Free space asked for beyond the largest cube, as a factor (HDF5 metadata, other files on the disk).
DISK_MARGIN = 1.1

#: Size of the discarded warm-up sample.
WARMUP_BYTES = 8 * 1024**2


@dataclass
class BenchConfig:
    """What to measure and how."""

    codecs: list[Codec]
    chunkings: list[str | tuple[int, ...]]
    paths: list[str] = field(default_factory=lambda: [FILTER])
    workers: int = 1
    runs: int = 3
    protocol: Protocol = "warm"
    #: Where the cube sits in each HDF5 test file (``study``: ``data`` at the root, as the study's script).
    layout: Layout = DEFAULT_LAYOUT
    time_limit_s: float | None = 60.0
    workdir: Path = field(default_factory=Path.cwd)
    seed: int = 0
    warmup: bool = True
    #: Cubes up to this size are held in memory like the study did; larger ones stream from their source.
    stage_limit_bytes: int | None = None


@dataclass
class Progress:
    """One event for a progress display: ``done`` of ``total`` cells, and the row just finished."""

    done: int
    total: int
    row: dict[str, Any] | None
    message: str = ""


def stage_limit(config: BenchConfig) -> int:
    """Hold cubes in memory only where they leave room for everything else."""
    if config.stage_limit_bytes is not None:
        return config.stage_limit_bytes
    return int(min(8 * 1024**3, 0.4 * psutil.virtual_memory().available))


def stage(source: Dataset4D, limit_bytes: int) -> tuple[Dataset4D, bool]:
    """Load a cube that fits into memory (the study's protocol); leave a larger one streaming."""
    if nbytes(source) > limit_bytes:
        return source, False
    cube = np.empty(source.shape, dtype=source.dtype)
    for block in iter_blocks(source):
        cube[block.start:block.stop] = block.data
    return ArraySource(cube, name=source.name, metadata=dict(source.metadata)), True


def grid_size(sources: Sequence[Dataset4D], config: BenchConfig) -> int:
    return len(sources) * config.runs * len(methods_for(config.codecs, config.chunkings, config.paths, config.workers))


def run_grid(
    sources: Sequence[Dataset4D],
    config: BenchConfig,
    on_progress: Callable[[Progress], None] | None = None,
    on_staged: Callable[[Dataset4D], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every cell; returns one row per cell. ``on_staged`` sees each cube once, as measured."""
    methods = methods_for(config.codecs, config.chunkings, config.paths, config.workers)
    total = grid_size(sources, config)
    rows: list[dict[str, Any]] = []
    notify = on_progress or (lambda event: None)
    if any(codec.name == "none" for codec in config.codecs):
        check_disk_space(config.workdir, sources)
    config.workdir.mkdir(parents=True, exist_ok=True)
    limit = stage_limit(config)

    if config.warmup and sources:
        notify(Progress(0, total, None, "warm-up (discarded)"))
        warm_up(sources[0], methods, config)

    for source in sources:
        notify(Progress(len(rows), total, None, f"loading {source.name}"))
        staged, in_memory = stage(source, limit)
        if on_staged is not None:
            on_staged(staged)
        reference = Reference(staged.shape, staged.dtype, staged.read_rows(0, staged.shape[0]) if in_memory else None)
        over_limit: dict[str, str] = {}
        for run in range(1, config.runs + 1):
            order = list(methods)
            random.Random(f"{config.seed}-{source.name}-{run}").shuffle(order)
            for method in order:
                row = measure_cell(staged, method, run, config, reference, over_limit)
                row["in_memory"] = in_memory
                rows.append(row)
                notify(Progress(len(rows), total, row))
        del staged, reference
    return rows


def measure_cell(
    source: Dataset4D,
    method: Method,
    run: int,
    config: BenchConfig,
    reference: Reference,
    over_limit: dict[str, str],
) -> dict[str, Any]:
    """One row: the numbers, or the reason there are none."""
    row = describe(source, method, run, config)
    reason = unavailable_reason(method, source.dtype)
    if reason:
        return row | {"status": UNAVAILABLE, "reason": reason}
    key = f"{method.path_name}:{method.name}"
    if key in over_limit:
        return row | {"status": SKIPPED, "reason": over_limit[key]}
    try:
        numbers = measure(source, method, config.workdir, protocol=config.protocol,
                          time_limit_s=config.time_limit_s, reference=reference, layout=config.layout)
    except TimeLimitExceeded as exc:
        over_limit[key] = f"{exc.phase} exceeded the {exc.limit_s:g} s time limit in run {run}"
        return row | {"status": SKIPPED, "reason": str(exc)}
    except VerificationError as exc:
        return row | {"status": ERROR, "reason": f"verification failed: {exc}", "verified": False}
    except Exception as exc:  # a codec that crashes is a finding, not a reason to lose the grid
        return row | {"status": ERROR, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return row | numbers | {"status": OK, "reason": ""}


def describe(source: Dataset4D, method: Method, run: int, config: BenchConfig) -> dict[str, Any]:
    """The columns every row has, measured or not."""
    chunks = method.chunks_for(source.shape)
    return {
        "dataset": source.name,
        "method": method.name,
        "codec": method.codec.name,
        "family": method.codec.family,
        "chunking": method.chunking_name,
        "path": method.path_name,
        "workers": method.workers if method.path == PARALLEL else 1,
        "chunk_size": str(tuple(chunks)) if chunks is not None else "",
        "run_number": run,
        "protocol": config.protocol,
        "layout": config.layout if chunks is not None else NO_CHUNKING,
        "dtype": str(source.dtype),
        "shape": str(tuple(source.shape)),
        "raw_bytes": nbytes(source),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def warm_up(source: Dataset4D, methods: Sequence[Method], config: BenchConfig) -> None:
    """Run every method once on a small sample and discard it: first calls load libraries and thread pools."""
    rows = min(source.shape[0], max(1, WARMUP_BYTES // row_nbytes(source)))
    sample = ArraySource(np.ascontiguousarray(source.read_rows(0, rows)), name=f"{source.name}-warmup")
    for method in methods:
        if unavailable_reason(method, source.dtype):
            continue
        try:
            measure(sample, method, config.workdir, protocol="warm", time_limit_s=config.time_limit_s,
                    layout=config.layout)
        except Exception:  # the real measurement will record what goes wrong, with its reason
            continue


def check_disk_space(workdir: Path, sources: Sequence[Dataset4D]) -> None:
    """Refuse to start a grid that would fill the disk with an uncompressed write of the largest cube."""
    if not sources:
        return
    largest = max(sources, key=nbytes)
    needed = int(DISK_MARGIN * nbytes(largest))
    missing = missing_root(workdir)  # the folder may not exist yet: ask the disk it will be made on
    free = shutil.disk_usage(missing.parent if missing is not None else workdir).free
    if free < needed:
        raise StempressError(
            f"{workdir}: {human_size(free)} free, but method 'none' writes {largest.name} uncompressed and needs "
            f"{human_size(needed)} ({human_size(nbytes(largest))} plus {DISK_MARGIN - 1:.0%}); free some space, "
            "choose another --workdir, or drop none from --methods"
        )

