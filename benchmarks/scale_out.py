"""Scale out on Dask: inline vs a LocalCluster of 1 and 2 worker processes, for reduce and compress.

    python benchmarks/scale_out.py                        # 64 x 64 scan of 256 x 256 uint16 (512 MiB) .npy
    python benchmarks/scale_out.py --scan 128 --repeat 1  # 2 GiB
    python benchmarks/scale_out.py --workers 1,2,4 --codecs blosc_zstd

Writes a Poisson cube (a bright disk and a weak halo, as a diffraction pattern) to an ``.npy`` file in
``--folder`` (read from the page cache after the first run), then times, on the same file:

- ``reduce``: ``reduce_to_file`` with the default targets (bf, adf, com, mean_pattern): inline (one process,
  one pass), then on Dask, where every worker reopens the file and reduces its own partitions of the scan;
- ``compress`` for each codec: inline (one thread compresses), then on Dask, where every worker reads its own
  partitions and compresses their chunks, and this process writes them into the one HDF5 file;
- ``compress --shards`` for each codec: each worker writes its partitions' shard files, this process only the
  master (checked by ``verify``: every shard's chunk CRCs).

The cluster's start is timed apart (it is paid once per command); each run checks its output against inline
(bit-identical reduced images, byte-identical archive but for the EMD UUID). Prints seconds, GB/s (1e9 raw
bytes per second) and the ratios inline/Dask and 1 worker/N workers. Not a test: the numbers depend on the
machine (its cores, whether other work shares them) and on the codec's speed beside the writer's.

Then the model of ``docs/scale-out.md``, fitted to these runs, and its prediction for ``--predict-tb`` of raw
data on 8 and 64 nodes of ``--workers-per-node`` workers:

- ``r``, a worker's rate per job (raw bytes/s): least squares of throughput = n x r over the Dask runs (``r'``
  for ``--shards``, which includes writing the shard);
- ``R``, the file system's read rate: one process reading the whole file in 256 MiB blocks (here: the page
  cache, after the first run); predictions are also printed for the aggregate rates of ``--fs-read-gbs``
  (a cluster's parallel file system, which one node cannot measure);
- ``W``, the single writer's rate (compressed bytes/s that the client stores: HDF5 direct-chunk writes, closing
  and syncing), from the compress runs' writer stages, and each codec's ratio ``q``;
- ``t0``, the cluster's start.

    reduce:             T = t0 + S / min(N r, R)
    compress:           T = t0 + S / min(N r, R, q W)
    compress --shards:  T = t0 + S / min(N r', R)     (no single writer; r': a worker's rate writing its shard)

with N workers in all; the smallest term names what limits the run.

LiberTEM's Dask executor on the same file (issue 15's comparison) runs in the peers venv of
``benchmarks/requirements-external.txt`` (no stempress; dask and distributed pinned to one release, or
distributed does not import), as a LiberTEM user scripts it; the main guard is LiberTEM's rule (its workers
are spawned processes). Equivalent UDFs: SumUDF (mean_pattern), ApplyMasksUDF with the bf disk and adf ring
stempress used (radii in the reduced file's provenance), CoMUDF (com); time ``run_udf`` apart from the
cluster start, as here::

    from libertem.api import Context
    from libertem.masks import circular, ring
    from libertem.udf.com import CoMUDF
    from libertem.udf.masks import ApplyMasksUDF
    from libertem.udf.sum import SumUDF

    if __name__ == "__main__":
        with Context.make_with("dask", cpus=2) as ctx:  # a LocalCluster of 2 worker processes
            ds = ctx.load("npy", path="/tmp/stempress-scale-out/cube-64x256.npy")
            masks = [lambda: circular(128, 128, 256, 256, R_BF), lambda: ring(128, 128, 256, 256, R_OUT, R_IN)]
            ctx.run_udf(dataset=ds, udf=[SumUDF(), ApplyMasksUDF(mask_factories=masks),
                                         CoMUDF.with_params(cy=128, cx=128)])

(``/work/venvs/peers/bin/python -I that_script.py``; checked to run with LiberTEM 0.16.0, dask/distributed
2026.8.0.)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from stempress.data.open import open_source
from stempress.exec.dask import DaskExecutor
from stempress.sinks.shards import shard_folder
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file
from stempress.store.verify import verify

TARGETS = ["bf", "adf", "com", "mean_pattern"]
READ_BLOCK = 256 * 1024**2


def write_cube(path: Path, scan: int, det: int) -> None:
    """A Poisson cube written row by row (never whole in memory)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (scan, scan, det, det):
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:det, :det]
    r = np.hypot(yy - det / 2, xx - det / 2)
    lam = np.where(r < det / 8, 20.0, 0.3 * np.exp(-r / (det / 6)))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(scan, scan, det, det))
    for row in range(scan):
        out[row] = rng.poisson(lam, size=(scan, det, det))
    out.flush()
    del out


def labels(codecs: list[str]) -> list[str]:
    """The jobs, in the order they run."""
    return ["reduce", *(f"compress {c}{shards}" for c in codecs for shards in ("", " --shards"))]


def read_rate(path: Path) -> float:
    """Raw bytes/s of one process reading the whole file through stempress's reader, block by block."""
    with open_source(path) as source:
        rows = max(1, READ_BLOCK // (int(np.prod(source.shape[1:])) * np.dtype(source.dtype).itemsize))
        started = time.perf_counter()
        total = sum(source.read_rows(r, min(r + rows, source.shape[0])).nbytes for r in range(0, source.shape[0],
                                                                                               rows))
        return total / (time.perf_counter() - started)


def fit_worker_rate(raw: int, seconds: dict[int, float]) -> float:
    """Least squares of throughput_n = n x r over the worker counts measured."""
    counts = sorted(seconds)
    return sum(n * raw / seconds[n] for n in counts) / sum(n * n for n in counts)


def predict(size: float, workers: int, rate: float, fs: float, start: float,
            writer: float | None = None) -> tuple[float, str]:
    """Wall seconds for ``size`` raw bytes and the part that limits it (the smallest rate)."""
    terms = {f"workers ({workers} x {rate / 1e6:.0f} MB/s)": workers * rate, "file system read": fs}
    if writer is not None:
        terms["single writer"] = writer
    limit = min(terms, key=terms.__getitem__)
    return start + size / terms[limit], limit


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def reduced_images(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     and o.dtype.kind in "fiu" else None)
    return found


def verified(path: Path) -> None:
    """A --shards master: every shard's stored and decoded chunk CRCs (what the workers encoded) check out."""
    report = verify(path)
    assert report.problem is None and report.checksums, report.summary()


def without_uuid(path: Path) -> bytes:
    with h5py.File(path, "r") as f:
        uuid = str(f.attrs["UUID"]).encode()
    return path.read_bytes().replace(uuid, b"-" * len(uuid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, default=64, help="scan rows = columns")
    parser.add_argument("--det", type=int, default=256, help="detector rows = columns")
    parser.add_argument("--workers", default="1,2", help="Dask worker processes to try, comma separated")
    parser.add_argument("--codecs", default="blosc_zstd,gzip_6")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest is kept")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "stempress-scale-out")
    parser.add_argument("--predict-tb", type=float, default=1.0, help="raw TB (1e12 bytes) of the predicted scan")
    parser.add_argument("--workers-per-node", type=int, default=32)
    parser.add_argument("--fs-read-gbs", default="20",
                        help="cluster file systems' aggregate read rates in GB/s, comma separated, to predict with "
                             "besides the rate measured here (default 20: a mid-sized Lustre)")
    args = parser.parse_args()

    args.folder.mkdir(parents=True, exist_ok=True)
    cube_path = args.folder / f"cube-{args.scan}x{args.det}.npy"
    write_cube(cube_path, args.scan, args.det)
    raw = args.scan**2 * args.det**2 * 2
    out = Path(tempfile.mkdtemp(dir=args.folder))
    counts = [int(w) for w in args.workers.split(",")]
    codecs = [c for c in args.codecs.split(",") if c]
    print(f"{cube_path}: {raw / 2**30:.2f} GiB uint16, scan {args.scan}x{args.scan}, detector {args.det}x{args.det}")

    seconds: dict[tuple[str, str], float] = {}
    results: dict[tuple[str, str], object] = {}
    starts: list[float] = []
    run_no = [0]

    def best(label: str, where: str, fn: Callable[[Path], object], check: Callable[[Path], None]) -> None:
        times = []
        for _ in range(args.repeat):
            run_no[0] += 1
            target = out / f"{run_no[0]}.h5"
            took, result = timed(lambda t=target: fn(t))
            check(target)
            target.unlink()
            shutil.rmtree(shard_folder(target), ignore_errors=True)
            times.append(took)
            if took == min(times):
                results[label, where] = result
        seconds[label, where] = min(times)
        print(f"  {label:<28} {where:<10} {min(times):7.2f} s  {raw / 1e9 / min(times):6.2f} GB/s", flush=True)

    references: dict[str, object] = {}

    def keep_or_compare(label: str, value: object) -> None:
        if label not in references:
            references[label] = value
            return
        expected = references[label]
        if isinstance(value, bytes):
            assert value == expected, f"{label}: archive differs from inline"
        else:
            assert all(np.array_equal(v, value[k]) for k, v in expected.items()), f"{label}: images differ"

    def jobs(executor: DaskExecutor | None) -> None:
        where = "inline" if executor is None else f"dask:{executor.workers}"
        with open_source(cube_path) as source:
            best("reduce", where,
                 lambda p: reduce_to_file(source, TARGETS, p, executor=executor),
                 lambda p: keep_or_compare("reduce", reduced_images(p)))
            for codec in codecs:
                best(f"compress {codec}", where,
                     lambda p, c=codec: compress(source, p, codec=c, workers=1, executor=executor),
                     lambda p, c=codec: keep_or_compare(c, without_uuid(p)))
                best(f"compress {codec} --shards", where,
                     lambda p, c=codec: compress(source, p, codec=c, workers=1, executor=executor, shards=True),
                     lambda p: verified(p))

    print("inline (this process alone):")
    jobs(None)
    for n in counts:
        executor = DaskExecutor(f"local:{n}")
        took, _ = timed(lambda e=executor: e.client.submit(abs, -1).result())
        starts.append(took)
        print(f"LocalCluster of {n} worker process(es), started in {took:.1f} s:")
        try:
            jobs(executor)
        finally:
            executor.close()

    print("\nratios (time of the first / time of the second; above 1: the second is faster)")
    for label in labels(codecs):
        inline = seconds[label, "inline"]
        cells = [f"inline/dask:{n} {inline / seconds[label, f'dask:{n}']:.2f}" for n in counts]
        if 1 in counts:
            cells += [f"dask:1/dask:{n} {seconds[label, 'dask:1'] / seconds[label, f'dask:{n}']:.2f}"
                      for n in counts if n != 1]
        print(f"  {label:<28} " + "   ".join(cells))
    model(args, raw, cube_path, counts, codecs, seconds, results, starts)


def model(args: argparse.Namespace, raw: int, cube_path: Path, counts: list[int], codecs: list[str],
          seconds: dict[tuple[str, str], float], results: dict[tuple[str, str], object], starts: list[float]) -> None:
    """Fit the model's parameters to the runs above, print them, and predict the big scan."""
    fs = read_rate(cube_path)
    start = max(starts)
    print("\nmodel parameters (fitted to the runs above):")
    print(f"  file system read R = {fs / 1e9:.2f} GB/s (measured: one reader, this machine)")
    print(f"  cluster start t0 = {start:.1f} s")
    rates, writers = {}, {}
    for label in labels(codecs):
        rates[label] = fit_worker_rate(raw, {n: seconds[label, f"dask:{n}"] for n in counts})
        line = f"  {label:<28} worker rate r = {rates[label] / 1e6:7.1f} MB/s raw"
        report = results.get((label, f"dask:{max(counts)}"))
        stages = getattr(report, "stages", None)
        if stages and not label.endswith("--shards"):
            store = stages.get("write", 0.0) + stages.get("publish", 0.0)
            ratio = report.ratio  # type: ignore[attr-defined]
            writers[label] = report.file_bytes / store * ratio if store > 0 else float("inf")  # type: ignore[attr-defined]
            line += (f", writer W = {report.file_bytes / store / 1e6:7.1f} MB/s stored"  # type: ignore[attr-defined]
                     f" x ratio q = {ratio:.2f} -> {writers[label] / 1e9:.2f} GB/s raw")
        print(line)
    given = [float(g) * 1e9 for g in str(args.fs_read_gbs).split(",") if g.strip()]
    for read in [fs, *given]:
        prediction(args, rates, writers, read, start)


def prediction(args: argparse.Namespace, rates: dict[str, float], writers: dict[str, float], fs: float,
               start: float) -> None:
    size = args.predict_tb * 1e12
    print(f"\nprediction for {args.predict_tb:g} TB raw, {args.workers_per_node} workers per node, file system "
          f"read R = {fs / 1e9:.2f} GB/s:")
    for nodes in (8, 64):
        workers = nodes * args.workers_per_node
        for label in rates:
            wall, limit = predict(size, workers, rates[label], fs, start, writers.get(label))
            print(f"  {nodes:>2} nodes  {label:<28} {wall:9.0f} s  limited by {limit}")


if __name__ == "__main__":
    main()
