"""The Poisson entropy code against the HDF5 codecs on counted cubes, side by side in one run.

    python benchmarks/event_codec.py                                   # synthetic:counted/counted and a 128x128 scan
    python benchmarks/event_codec.py --source synthetic:counted/counted --runs 3 --codecs blosc_zstd,gzip_6

Each cube is read into memory once, so the timings are the codecs', not the generator's. Every file is read
back and compared bit for bit. Throughputs are MB/s of dense data (1 MB = 1e6 bytes), medians over runs.
Columns: ratio = dense bytes / file bytes; /bound = ratio over the Poisson bound of the mean pattern
(``poisson_bound``: what a coder knowing each pixel's mean count reaches); /zstd = ratio over blosc_zstd's.
``entropy (full fit)`` fits the model on the whole cube (a first pass, not timed: the source is read twice);
``entropy (1st block)`` is the bench's FileFormat, fitted on the first ``--first-rows`` scan rows only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stempress.bench.bounds import poisson_bound
from stempress.codecs.catalog import get_codec
from stempress.codecs.chunking import chunk_shape
from stempress.codecs.hdf5_store import read_cube_blocks, write_cube
from stempress.data.base import Block
from stempress.data.suites import open_synthetic
from stempress.events.entropy import EntropyCodedFormat, encode_blocks, fit_model

SOURCES = "synthetic:counted/counted,synthetic:counted/counted?scan=128x128"
CODECS = "blosc_zstd,bitshuffle_lz4,gzip_6"


def _blocks(cube: np.ndarray, rows: int) -> Iterator[Block]:
    for start in range(0, cube.shape[0], rows):
        yield Block(start, cube[start:start + rows])


def _load(text: str) -> np.ndarray:
    with open_synthetic(text) as source:
        return source.read_rows(0, source.shape[0])


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _measure(cube: np.ndarray, path: Path, write: Callable[[], object], read: Callable[[], Iterator[Block]],
             runs: int) -> tuple[int, float, float]:
    enc, dec = [], []
    for _ in range(runs):
        path.unlink(missing_ok=True)
        enc.append(_time(write))
        out = np.empty_like(cube)

        def drain(out: np.ndarray = out) -> None:
            for block in read():
                out[block.start:block.stop] = block.data

        dec.append(_time(drain))
        if not np.array_equal(out, cube):
            raise SystemExit(f"{path.name}: read back differs from the cube")
    mb = cube.nbytes / 1e6
    return path.stat().st_size, mb / statistics.median(enc), mb / statistics.median(dec)


def bench(text: str, codecs: list[str], runs: int, first_rows: int, scratch: Path) -> None:
    cube = _load(text)
    frame = cube.shape[2] * cube.shape[3]
    shape, dtype = cube.shape, cube.dtype
    bound = poisson_bound(cube.reshape(-1, frame).mean(axis=0, dtype=np.float64), 8 * dtype.itemsize)
    print(f"\n{text}: {shape} {dtype}, {cube.nbytes / 1e6:.1f} MB, {np.mean(cube == 0):.2%} zeros, "
          f"Poisson bound {bound:.1f}x", flush=True)
    results: dict[str, tuple[int, float, float]] = {}
    rows = max(1, (64 << 20) // (cube.nbytes // shape[0]))
    for name in codecs:
        codec = get_codec(name)
        chunks = chunk_shape("balanced", shape)
        path = scratch / f"{name}.h5"
        results[f"{name} (balanced)"] = _measure(
            cube, path, lambda c=codec, p=path, k=chunks: write_cube(p, _blocks(cube, rows), shape, dtype, k,
                                                                     c.h5_kwargs()),
            lambda p=path, k=chunks: read_cube_blocks(p, max(k[0], rows // k[0] * k[0])), runs)
    full = fit_model(cube.reshape(-1, frame).sum(axis=0, dtype=np.float64), shape[0] * shape[1])
    path = scratch / "entropy_full.h5"
    fmt = EntropyCodedFormat()
    results["entropy (full fit)"] = _measure(
        cube, path, lambda: encode_blocks(path, _blocks(cube, rows), shape, dtype, model=full),
        lambda: fmt.read(path, shape, dtype), runs)
    path = scratch / "entropy_first.h5"

    def first_block() -> Iterator[Block]:
        yield Block(0, cube[:first_rows])
        yield from (Block(b.start + first_rows, b.data) for b in _blocks(cube[first_rows:], rows))

    results[f"entropy (1st {first_rows} rows)"] = _measure(
        cube, path, lambda: fmt.write(path, first_block(), shape, dtype), lambda: fmt.read(path, shape, dtype), runs)
    zstd = cube.nbytes / results["blosc_zstd (balanced)"][0] if "blosc_zstd (balanced)" in results else float("nan")
    print(f"{'codec':28s} {'ratio':>8s} {'enc MB/s':>9s} {'dec MB/s':>9s} {'/bound':>7s} {'/zstd':>6s} {'bytes':>10s}")
    for label, (size, enc, dec) in results.items():
        ratio = cube.nbytes / size
        print(f"{label:28s} {ratio:8.1f} {enc:9.0f} {dec:9.0f} {ratio / bound:7.1%} {ratio / zstd:6.2f} {size:10d}")
    print(f"entropy model: {full.n_classes} lambda classes; own-model bound "
          f"{8 * dtype.itemsize * frame / full.bound_bits():.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SOURCES, help="comma-separated synthetic sources")
    parser.add_argument("--codecs", default=CODECS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-rows", type=int, default=4, help="scan rows the one-pass model is fitted on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stempress-entropy-") as scratch:
        for text in args.source.split(","):
            bench(text, args.codecs.split(","), args.runs, args.first_rows, Path(scratch))


if __name__ == "__main__":
    main()
