"""``verify`` of a ``--shards`` master: every shard verified as the archive it is (its stored and decoded chunk
CRCs), then, with ``against``, the cube read through the master's virtual dataset compared with the source.

Why each shard and not only the virtual dataset: HDF5 reads a missing or unreadable shard as the fill value without
a word, and the checksums live in the shards. Problems are located in the master's scan rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from stempress.sinks.shards import shard_sources

if TYPE_CHECKING:
    from stempress.data.base import Dataset4D
    from stempress.store.verify import Problem, VerifyReport


def verify_master(path: Path, dset: h5py.Dataset, against: Dataset4D | None, workers: int,
                  started: float) -> VerifyReport:
    """The report of a master: chunks summed over its shards; the first problem found, in master rows."""
    import time

    from stempress.store.verify import Problem, VerifyReport, _Verifier, verify

    sources = shard_sources(dset)
    total = checked = bad = 0
    checksums, direct, codec, config = True, True, "none", None
    problem: Problem | None = None
    row = 0
    for start, stop, shard, name in sources:
        if start != row:
            problem = Problem("stored", f"no shard holds scan rows {row}-{start - 1}", (row, start), (0, dset.shape[1]))
            break
        row = stop
        if not shard.is_file():
            problem = Problem("stored", f"shard {shard} is missing (HDF5 would read fill values there)",
                              (start, stop), (0, dset.shape[1]))
            break
        report = verify(shard, dataset=name, workers=workers)
        total, checked, bad = total + report.chunks_total, checked + report.chunks_checked, bad + report.bad_chunks
        checksums, direct = checksums and report.checksums, direct and report.direct
        codec, config = report.codec, report.codec_config
        if report.problem is not None:
            problem = _shifted(report.problem, start, f"shard {shard.name}: ")
            break
    if problem is None and row != dset.shape[0]:
        problem = Problem("stored", f"the shards end at scan row {row}, the cube has {dset.shape[0]}")
    compared = False
    if problem is None and against is not None:  # read through the virtual dataset, as a user does
        problem = _Verifier(path, dset, against, workers, started).run().problem
        compared = problem is None
    return VerifyReport(path=path, dataset_path=dset.name, codec=codec, direct=direct, chunks_total=total,
                        chunks_checked=checked, checksums=checksums and bool(sources), compared=compared,
                        bad_chunks=bad, problem=problem, seconds=time.perf_counter() - started,
                        checks=(f"stored and decoded CRCs of {len(sources)} shards" if checksums and sources
                                else None),
                        codec_config=config)


def _shifted(problem: Problem, rows: int, prefix: str) -> Problem:
    moved = None if problem.rows is None else (problem.rows[0] + rows, problem.rows[1] + rows)
    return replace(problem, reason=prefix + problem.reason, rows=moved)
