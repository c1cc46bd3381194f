"""Benchmark a synthetic cube larger than this machine's memory and show that peak memory stays bounded.

    python benchmarks/larger_than_ram.py                 # cube = 1.25 x physical RAM, fast codecs
    python benchmarks/larger_than_ram.py --gib 2         # a quick look

The cube is generated block by block while it is written (it never exists whole, in memory or on disk),
read back in blocks and verified through per-row digests. Prints the cube size beside the machine's RAM
and the peak resident memory of each measurement and of the whole process (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil

from stempress.bench.api import run_bench

GIB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    total_gib = psutil.virtual_memory().total / GIB
    parser.add_argument("--gib", type=float, default=1.25 * total_gib, help="cube size in GiB")
    parser.add_argument("--methods", default="blosc_lz4,bitshuffle_lz4")
    parser.add_argument("--chunks", default="balanced")
    parser.add_argument("--workdir", type=Path, default=None, help="where the test files go (default: a temp dir)")
    parser.add_argument("--stream", action="store_true", help="stream even a cube that would fit in memory")
    parser.add_argument("--limit-gib", type=float, default=2.0, help="peak memory the run must stay under")
    args = parser.parse_args()

    det, scan_x = 128, 512
    row_bytes = scan_x * det * det * 2
    scan_y = max(16, int(args.gib * GIB // row_bytes) // 16 * 16)
    spec = f"synthetic:diffraction?scan={scan_y}x{scan_x}&det={det}x{det}&dtype=uint16&dose=2000&seed=7"
    cube_gib = scan_y * row_bytes / GIB
    print(f"machine RAM {total_gib:.1f} GiB; cube {spec[10:]}: {cube_gib:.1f} GiB")

    peak = {"rss": 0}
    done = threading.Event()

    def sample() -> None:
        process = psutil.Process()
        while not done.is_set():
            peak["rss"] = max(peak["rss"], process.memory_info().rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        report = run_bench(sources=[spec], methods=args.methods, chunkings=[args.chunks], runs=1,
                           out=Path(scratch) / "results", time_limit_s=None,
                           stage_limit_bytes=0 if args.stream else None,
                           on_progress=lambda e: print(f"  {e.done}/{e.total} {e.message}", flush=True)
                           if e.row is None else None)
    done.set()
    sampler.join()
    for row in report.results.itertuples():
        print(f"{row.method:28s} {row.status:8s} ratio {row.compression_ratio:7.2f}  "
              f"write {row.write_throughput_gbs:.3f} GiB/s  read {row.read_throughput_gbs:.3f} GiB/s  "
              f"peak {row.peak_rss_mb / 1024:.2f} GiB  verified {row.verified}")
    print(f"whole process peak RSS {peak['rss'] / GIB:.2f} GiB for a {cube_gib:.1f} GiB cube "
          f"({time.perf_counter() - started:.0f} s); limit {args.limit_gib} GiB: "
          + ("PASS" if peak["rss"] < args.limit_gib * GIB and (report.results["status"] == "ok").all() else "FAIL"))


if __name__ == "__main__":
    main()
