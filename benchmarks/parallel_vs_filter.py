"""Our parallel direct-chunk writer against HDF5's filter pipeline: same codec, chunks and data, one run.

    python benchmarks/parallel_vs_filter.py                       # paper-like 4D_Diff (128 MiB), 3 runs
    python benchmarks/parallel_vs_filter.py --source scan.emd --workers 8 --chunks 16x16x128x128

Both paths write the same standard HDF5 file (the parallel one declares the same filter and stores the chunks
with write_direct_chunk), read it back and verify it bit-exact; cells run in random order after a warm-up.
Prints write and read GiB/s of each path, the speed-up (median over runs) and the peak memory.

Then, as the engine issue's targets ask, ``compress`` itself (its own reported time, fsync included) with one
worker and with every worker against h5py's filter pipeline on the same data and chunks, on the source and on a
95 %-sparse counted cube (64x64x128x128 uint16), with the time per stage of the archive writer (read, encode,
checksum, write, wait for encoded chunks, publish = close + fsync + rename), so the limit is visible, and the
CPU seconds of both (every thread of the process): ``bound`` = filter CPU / (compress CPU / cores), the speed-up
compress would reach were its CPU spread over the cores with nothing serial, and ``bnd N/1`` = encoders' CPU /
(compress CPU / cores), the same for the workers (one worker is at least its encoder's CPU time; the writer has
the other core to itself, while N workers share the cores with it): the ceilings on a small machine (README,
"compress against h5py's filter path": why the LZ4 codecs stay below 1.8x on 2 cores).

    python benchmarks/parallel_vs_filter.py --no-grid --stage-codecs blosc_lz4,bitshuffle_lz4 --cubes source
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stempress.bench.runner import BenchConfig, run_grid
from stempress.codecs.catalog import get_codec, select_codecs
from stempress.codecs.chunking import chunk_shape, parse_chunk_shape
from stempress.cores import usable_cores
from stempress.data.base import ArraySource
from stempress.data.open import open_source
from stempress.engine import run
from stempress.sinks.archive import ArchiveSink, ArchiveSpec
from stempress.store.compress import compress

CODECS = "gzip_6,gzip_9,blosc_zstd,bitshuffle_lz4"
#: The study's six best by its own ranking (write speed x ratio), the engine issue's targets.
TOP_SIX = "gzip_6,gzip_9,blosc_zstd,bitshuffle_lz4,blosc_lz4,zstd_3"
#: The stage table's cubes: ``--source`` (in memory) and the 95 %-sparse counted cube.
CUBES = ("source", "sparse")


class TimedSource:
    """A source whose reads are timed (the engine's read stage)."""

    def __init__(self, source) -> None:
        self.source, self.read_s = source, 0.0
        self.name, self.shape, self.dtype, self.metadata = source.name, source.shape, source.dtype, source.metadata

    def read_rows(self, start: int, stop: int):
        t0 = time.perf_counter()
        data = self.source.read_rows(start, stop)
        self.read_s += time.perf_counter() - t0
        return data

    def close(self) -> None:
        """The wrapped source is closed by its owner."""


def sparse_counted_cube():
    rng = np.random.default_rng(0)
    cube = np.zeros((64, 64, 128, 128), np.uint16)
    hit = rng.random(cube.shape) < 0.05
    cube[hit] = rng.poisson(1.0, int(hit.sum())).astype(np.uint16) + 1
    return ArraySource(cube, name="sparse-counted 95%")


def filter_path_seconds(source, codec, chunks, scratch: Path) -> tuple[float, float]:
    """h5py's filter pipeline on the same data and chunks (bare file, as a user writing with h5py gets): wall
    and CPU seconds."""
    spec = ArchiveSpec(scratch / "filter.h5", codec, chunks, layout="plain", checksums=False, direct=False,
                       provenance=False, force=True)
    t0, c0 = time.perf_counter(), time.process_time()
    run(source, [ArchiveSink(spec)])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    discard(scratch / "filter.h5")
    return seconds, cpu


def fresh_compress(source, out: Path, codec: str, workers: int):
    """``compress`` into a new file, deleted afterwards, as the filter path's file is: replacing the last run's
    file would time the deletion of its blocks too (ms per 20 MiB on a file system mounted with discard).
    Returns the report and the CPU seconds of the call (every thread)."""
    c0 = time.process_time()
    report = compress(source, out, codec=codec, workers=workers, force=True)
    cpu = time.process_time() - c0
    discard(out)
    return report, cpu


def discard(path: Path) -> None:
    """Delete a timed run's file and sync, untimed: on ext4 mounted with ``discard`` the freed blocks are
    discarded at the next journal commit, which the next run's fsync would otherwise wait for (the publish
    stage of one run timing the deletion of the run before)."""
    path.unlink()
    os.sync()


def stages_table(sources, codecs: list[str], workers: int, runs: int, scratch: Path) -> None:
    cores = min(workers, usable_cores())
    print(f"\ncompress vs h5py's filter path (median of {runs}), {workers} workers; stages of the {workers}-worker "
          "compress in seconds (encode and checksum: CPU summed over workers); CPU seconds of the filter path and "
          f"of the {workers}-worker compress; bound = filter CPU / (compress CPU / {cores} cores), bnd N/1 = "
          f"(encode + crc) / (compress CPU / {cores} cores)")
    print(f"{'cube':20s} {'codec':15s} {'filter s':>9s} {'1 worker':>9s} {'N workers':>9s} {'N/filter':>9s} "
          f"{'N/1':>6s} | {'read':>6s} {'encode':>7s} {'crc':>6s} {'write':>6s} {'wait':>6s} {'publish':>7s} | "
          f"{'cpu filt':>8s} {'cpu N':>6s} {'bound':>6s} {'bnd N/1':>7s}")
    for source in sources:
        for name in codecs:
            codec = get_codec(name)
            chunks = chunk_shape("balanced", source.shape)
            filt, one, many, stages, reads, filt_cpu, many_cpu = [], [], [], [], [], [], []
            for _ in range(runs):
                seconds, cpu = filter_path_seconds(source, codec, chunks, scratch)
                filt.append(seconds)
                filt_cpu.append(cpu)
                one.append(fresh_compress(source, scratch / "one.h5", name, 1)[0].seconds)
                timed = TimedSource(source)
                report, cpu = fresh_compress(timed, scratch / "many.h5", name, workers)
                many.append(report.seconds)
                many_cpu.append(cpu)
                stages.append(report.stages)
                reads.append(timed.read_s)
            f, o, m, fc, mc = (statistics.median(v) for v in (filt, one, many, filt_cpu, many_cpu))
            st = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
            print(f"{source.name[:20]:20s} {name:15s} {f:9.3f} {o:9.3f} {m:9.3f} {f / m:8.2f}x {o / m:5.2f}x | "
                  f"{statistics.median(reads):6.3f} {st['encode']:7.3f} {st['checksum']:6.3f} {st['write']:6.3f} "
                  f"{st['wait']:6.3f} {st['publish']:7.3f} | {fc:8.3f} {mc:6.3f} {fc / (mc / cores):5.2f}x "
                  f"{(st['encode'] + st['checksum']) / (mc / cores):6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic:paper-like/4D_Diff")
    parser.add_argument("--codecs", default=CODECS)
    parser.add_argument("--chunks", default="balanced")
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stage-codecs", default=TOP_SIX, help="codecs of the compress-vs-filter stage table")
    parser.add_argument("--no-grid", action="store_true", help="only the compress-vs-filter stage table")
    parser.add_argument("--cubes", default=",".join(CUBES),
                        help=f"cubes of the stage table: {', '.join(CUBES)} (the source, the sparse counted cube)")
    args = parser.parse_args()
    if not args.no_grid:
        grid(args)
    cubes = [c.strip() for c in args.cubes.split(",") if c.strip()]
    unknown = sorted(set(cubes) - set(CUBES))
    if unknown:
        parser.error(f"unknown cubes {unknown}; choose from {', '.join(CUBES)}")
    with open_source(args.source) as source, tempfile.TemporaryDirectory(prefix="stempress-stages-") as scratch:
        sources = [in_memory(source) if c == "source" else sparse_counted_cube() for c in cubes]
        stages_table(sources, args.stage_codecs.split(","), args.workers, args.runs, Path(scratch))


def in_memory(source, budget: int = 4 * 1024**3):
    """The source's frames in memory when they fit ``budget``, as the grid stages them: a synthetic source makes
    its frames on every read (seconds per 128 MiB), which would time the generator, not the writers."""
    if int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize > budget:
        print(f"{source.name}: larger than {budget / 1024**3:.0f} GiB, timed as read from its file", flush=True)
        return source
    return ArraySource(np.ascontiguousarray(source.read_rows(0, source.shape[0])), name=source.name)


def grid(args: argparse.Namespace) -> None:

    chunking = parse_chunk_shape(args.chunks) or args.chunks
    with open_source(args.source) as source, tempfile.TemporaryDirectory(prefix="stempress-paths-") as scratch:
        print(f"{source.name} {source.shape} {source.dtype}, chunks {args.chunks}, {args.workers} workers "
              f"({usable_cores()} usable cores)", flush=True)
        config = BenchConfig(codecs=select_codecs(args.codecs), chunkings=[chunking], paths=["filter", "parallel"],
                             workers=args.workers, runs=args.runs, workdir=Path(scratch), time_limit_s=None)
        rows = pd.DataFrame(run_grid([source], config))
    bad = rows[rows["status"] != "ok"]
    for r in bad.itertuples():
        print(f"{r.method} {r.path}: {r.status}: {r.reason}")
    ok = rows[rows["status"] == "ok"]
    med = ok.groupby(["codec", "path"])[["compression_ratio", "write_throughput_gbs", "read_throughput_gbs",
                                         "peak_rss_mb"]].median().unstack("path")
    print(f"\n{'codec':16s} {'ratio':>7s} {'write GiB/s filter':>19s} {'parallel':>9s} {'speed-up':>9s} "
          f"{'read GiB/s filter':>18s} {'parallel':>9s} {'speed-up':>9s} {'peak MiB':>9s}")
    for codec in dict.fromkeys(args.codecs.split(",")):
        if codec not in med.index:
            continue
        m = med.loc[codec]
        w_f, w_p = m[("write_throughput_gbs", "filter")], m[("write_throughput_gbs", "parallel")]
        r_f, r_p = m[("read_throughput_gbs", "filter")], m[("read_throughput_gbs", "parallel")]
        print(f"{codec:16s} {m[('compression_ratio', 'filter')]:7.2f} {w_f:19.3f} {w_p:9.3f} {w_p / w_f:8.2f}x "
              f"{r_f:18.3f} {r_p:9.3f} {r_p / r_f:8.2f}x {m[('peak_rss_mb', 'parallel')]:9.0f}")
    same = (ok.pivot_table(index="codec", columns="path", values="file_bytes", aggfunc="first")
            .pipe(lambda t: (t["filter"] == t["parallel"]).all()))
    print(f"\nfile sizes identical between paths: {same}; every read verified bit-exact: {bool(ok['verified'].all())}")


if __name__ == "__main__":
    main()
