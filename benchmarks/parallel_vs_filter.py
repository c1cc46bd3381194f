"""Our parallel direct-chunk writer against HDF5's filter pipeline: same codec, chunks and data, one run.

    python benchmarks/parallel_vs_filter.py                       # paper-like 4D_Diff (128 MiB), 3 runs
    python benchmarks/parallel_vs_filter.py --source scan.emd --workers 8 --chunks 16x16x128x128

Both paths write the same standard HDF5 file (the parallel one declares the same filter and stores the chunks
with write_direct_chunk), read it back and verify it bit-exact; cells run in random order after a warm-up.
Prints write and read GiB/s of each path, the speed-up (median over runs) and the peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from stempress.bench.runner import BenchConfig, run_grid
from stempress.codecs.catalog import select_codecs
from stempress.codecs.chunking import parse_chunk_shape
from stempress.cores import usable_cores
from stempress.data.open import open_source

CODECS = "gzip_6,gzip_9,blosc_zstd,bitshuffle_lz4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic:paper-like/4D_Diff")
    parser.add_argument("--codecs", default=CODECS)
    parser.add_argument("--chunks", default="balanced")
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

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
