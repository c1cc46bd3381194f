"""``ingest`` (one read feeding every output) against the separate commands on the same file.

    python benchmarks/ingest_one_pass.py                 # a 2 GiB counted cube (.npy), page cache dropped
    python benchmarks/ingest_one_pass.py --gib 0.5 --source scan.h5

Runs, in one process, each with the source's pages dropped from the page cache first (as ``bench --protocol
cold``): ``compress`` (blosc_zstd), ``count`` (stempy events, when ingest writes events), ``reduce`` (bf, adf,
com) one after the other, then ``ingest`` writing all of them in one pass. Prints the wall time of each, the bytes
the kernel read from storage for each (``/proc/self/io`` read_bytes: the file's size once for ingest, once per
command for the separate runs) and the ratio ingest / sum of the separate commands (target <= 0.7x).
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stempress.bench.protocol import evict_from_page_cache
from stempress.data.calibration import Calibration
from stempress.data.open import open_source
from stempress.ingest import ingest
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file

TARGETS = ["bf", "adf", "com"]


def read_bytes() -> int:
    """Bytes this process has read from storage so far (not from the page cache)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def make_cube(path: Path, gib: float) -> Path:
    """A counted cube (uint16, ~5 % of pixels hit) of about ``gib`` GiB, written block by block."""
    det = 128
    frames = int(gib * 1024**3 / (det * det * 2))
    scan_x = 128
    scan_y = max(2, frames // scan_x)
    cube = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(scan_y, scan_x, det, det))
    rng = np.random.default_rng(0)
    for start in range(0, scan_y, 8):
        block = cube[start:start + 8]
        block[...] = rng.poisson(0.06, block.shape)
        block[:, :, 56:72, 56:72] += rng.poisson(4.0, block[:, :, 56:72, 56:72].shape).astype(np.uint16)
    cube.flush()
    del cube
    return path


def timed(label: str, source_path: Path, work: Callable[[], object]) -> tuple[float, int]:
    evict_from_page_cache(source_path)
    before, t0 = read_bytes(), time.perf_counter()
    work()
    seconds, nbytes = time.perf_counter() - t0, read_bytes() - before
    print(f"{label:34s} {seconds:8.2f} s   read from storage {nbytes / 1024**3:7.3f} GiB", flush=True)
    return seconds, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a cube file (default: a synthetic counted cube of --gib GiB)")
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stempress-ingest-", dir=".") as scratch:
        work = Path(scratch)
        path = Path(args.source) if args.source else make_cube(work / "cube.npy", args.gib)
        size = path.stat().st_size
        with open_source(path) as probe:
            cal = Calibration((probe.shape[2] - 1) / 2, (probe.shape[3] - 1) / 2, probe.shape[2] / 8,
                              det_shape=probe.shape[2:])
            print(f"{path.name}: {probe.shape} {probe.dtype}, {size / 1024**3:.3f} GiB on disk")
        events = "events" in inspect.signature(ingest).parameters
        separate = []

        def run_compress():
            with open_source(path) as s:
                compress(s, work / "sep.h5", workers=args.workers)

        def run_reduce():
            with open_source(path) as s:
                reduce_to_file(s, TARGETS, work / "sep-red.h5", calibration=cal)

        separate.append(timed("compress blosc_zstd", path, run_compress))
        if events:
            from stempress.events.counting import CountingParams
            from stempress.store.count import count_to_file

            def run_count():
                with open_source(path) as s:
                    count_to_file(s, work / "sep-ev.h5", CountingParams())

            separate.append(timed("count (stempy)", path, run_count))
        separate.append(timed(f"reduce {','.join(TARGETS)}", path, run_reduce))

        def run_ingest():
            extra = {"events": work / "one-ev.h5"} if events else {}
            with open_source(path) as s:
                ingest(s, archive=work / "one.h5", reduce=TARGETS, reduced=work / "one-red.h5", calibration=cal,
                       workers=args.workers, **extra)

        one = timed("ingest (all in one pass)", path, run_ingest)
        total_s, total_b = sum(s for s, _ in separate), sum(b for _, b in separate)
        print(f"\nseparate commands: {total_s:.2f} s, {total_b / size:.2f}x the file read; "
              f"ingest: {one[0]:.2f} s, {one[1] / size:.2f}x the file read")
        print(f"ingest / separate wall time: {one[0] / total_s:.2f}x (target <= 0.7x)"
              + ("" if events else "  [events not yet written by ingest: compress + reduce only]"))


if __name__ == "__main__":
    main()
