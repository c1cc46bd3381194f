"""Recommend a codec for one cube: benchmark a spread sample of it, then apply the use case's rule.

Compression ratio depends on the data (the study's sparsity law), so the answer comes from measuring the
user's own cube, not from a table; a sample keeps that to seconds on a cube of tens of GiB. ``compress_auto`` is
``compress --codec auto``: this, then ``store.compress`` with the winner (the benchmark sits above the store).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from stempress.atomic import partial_folder
from stempress.bench.ranking import USE_CASES, Recommendation, compress_writes, recommend
from stempress.bench.runner import OK, BenchConfig, Progress, run_grid
from stempress.bench.sample import spread_sample
from stempress.bench.statistics import statistics
from stempress.codecs.catalog import select_codecs
from stempress.codecs.chunking import chunk_shape
from stempress.data.base import Dataset4D
from stempress.errors import StempressError
from stempress.store.compress import AUTO, DEFAULT_CODEC, CompressReport, check_hdf5_output, compress, direct_codecs

MIB = 1024**2


def recommend_source(
    source: Dataset4D,
    use_case: str,
    *,
    methods: str | Sequence[str] = "paper",
    chunkings: Sequence[str | tuple[int, ...]] = ("balanced",),
    runs: int = 2,
    workdir: Path | None = None,
    max_sample_bytes: int = 256 * MIB,
    required_write_gibs: float | None = None,
    time_limit_s: float | None = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[Recommendation, pd.DataFrame]:
    """Benchmark a sample of ``source`` and recommend a method for ``use_case``.

    Returns the recommendation and the statistics it came from (one row per method, with a ``verified``
    column: every run of that method read back bit-exact). Cells that failed or were skipped are listed in
    ``stats.attrs["problems"]``; they cannot be recommended because they have no statistics row. The sample
    files go to a temporary folder (inside ``workdir`` when given) that is removed afterwards.
    """
    if use_case not in USE_CASES:
        raise StempressError(f"unknown use case {use_case!r}; choose one of {', '.join(USE_CASES)}")
    if runs < 1:
        raise StempressError(f"runs must be at least 1, got {runs}")
    chosen = select_codecs(methods)
    codecs = [c for c in chosen if compress_writes(c.name)]  # the file baselines cannot be recommended
    if not codecs:
        raise StempressError(f"--methods {', '.join(c.name for c in chosen)}: stempress compress can write none "
                             "of them, so none can be recommended; choose HDF5 codecs (stempress codecs)")
    sample = spread_sample(source, max_sample_bytes)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".stempress-recommend-") as scratch:
        config = BenchConfig(codecs=codecs, chunkings=list(chunkings), runs=runs, protocol="warm",
                             time_limit_s=time_limit_s, workdir=Path(scratch))
        rows = run_grid([sample], config, on_progress)
    results = pd.DataFrame(rows)
    stats = statistics(results)
    if stats.empty:
        raise StempressError(f"no method could be measured on {source.name} (all skipped or failed); "
                             "raise the time limit or choose other methods")
    ok = results[results["status"] == OK]
    verified = ok.groupby(["dataset", "method"])["verified"].apply(lambda v: bool(v.fillna(False).all()))
    stats["verified"] = [verified.get((d, m), False) for d, m in zip(stats["dataset"], stats["method"],
                                                                       strict=True)]
    stats.attrs["problems"] = [f"{r['method']} run {r['run_number']}: {r['status']}: {r['reason']}"
                               for r in rows if r["status"] != OK]
    stats.attrs["sample"] = sample.metadata["sample"]
    rec = recommend(stats, use_case, required_write_gibs)
    info = sample.metadata["sample"]
    where = "the whole cube" if info["scan_rows"] == info["of_scan_rows"] else \
        f"{info['scan_rows']} of {info['of_scan_rows']} scan rows in {len(info['rows'])} runs"
    return dataclasses.replace(rec, why=f"{rec.why} Measured on {where}, {runs} run(s)."), stats


def recommend_codec(source: Dataset4D, chunks: tuple[int, int, int, int], out: Path) -> tuple[str, str]:
    """Codec "auto": the balanced choice among the codecs that compress in parallel here, measured on a sample of
    ``source`` in a scratch folder beside ``out``; the codec's name and why it won."""
    methods = direct_codecs()
    if not methods:
        raise StempressError("codec 'auto' found no codec that compresses in parallel here; "
                             f"pip install hdf5plugin or give a codec such as {DEFAULT_CODEC}")
    with partial_folder(out) as workdir:
        rec, _stats = recommend_source(source, "balanced", methods=methods, chunkings=[chunks], runs=1,
                                       workdir=Path(workdir))
    return rec.codec, rec.why


def resolve_auto(codec: str, source: Dataset4D, chunks: str | tuple[int, ...] | None, out: Path) -> str:
    """``codec`` itself, or for "auto" the codec ``recommend_codec`` measures best with ``chunks`` (default
    balanced): what ``ingest`` writes its archive with."""
    if codec.strip().lower() != AUTO:
        return codec
    return recommend_codec(source, chunk_shape("balanced" if chunks is None else chunks, tuple(source.shape)), out)[0]


def compress_auto(source: Dataset4D, out: Path | str, *, codec: str = AUTO,
                  chunks: str | tuple[int, ...] | None = None, layout: str = "emd", dataset_path: str | None = None,
                  force: bool = False, **options: Any) -> CompressReport:
    """``store.compress`` (same arguments), with ``codec="auto"`` resolved first: a sample of the source benchmarked
    (use case "balanced") among the codecs that compress in parallel, the winner used and ``chosen_why`` saying
    why. A bad layout or an existing ``out`` is refused before the benchmark; other codecs pass straight through."""
    out = Path(out)
    if codec.strip().lower() != AUTO:
        return compress(source, out, codec=codec, chunks=chunks, layout=layout, dataset_path=dataset_path,
                        force=force, **options)
    chunks_t = check_hdf5_output(source, out, chunks, layout, dataset_path, force)
    chosen, why = recommend_codec(source, chunks_t, out)
    report = compress(source, out, codec=chosen, chunks=chunks_t, layout=layout, dataset_path=dataset_path,
                      force=force, **options)
    return dataclasses.replace(report, chosen_why=why)
