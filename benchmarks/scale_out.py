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
bytes per second), the cores kept busy (CPU seconds of this process and every worker over the wall time: inline
already runs its reads on a second thread, so where it nears the machine's cores a second worker has nothing left
to run on), their system time and page faults per raw GB, and the ratios inline/Dask and 1 worker/N workers.
Not a test: the numbers depend on the machine (its cores, whether other work shares them) and on the codec's
speed beside the writer's.

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

``--libertem PYTHON`` (issue 15's comparison) then runs LiberTEM's Dask executor on the same file, in the
same run: ``benchmarks/libertem_reduce.py`` in PYTHON, a venv with LiberTEM and without stempress (the peers
venv of ``benchmarks/requirements-external.txt``: ``/work/venvs/peers/bin/python``), scripted as a LiberTEM
user does (``Context.make_with("dask", cpus=N)``, ``ctx.load("npy", ...)``, one ``run_udf`` with SumUDF,
ApplyMasksUDF and CoMUDF; the cluster's start and the load timed apart, as here). It gets the centre, BF disk,
ADF ring and CoM mask radius stempress's reduce used (read back from the reduced file's provenance) as radii
that select exactly the same pixels under LiberTEM's rule (r <= R; ours is inner <= r < outer); the masks it
used and its results come back and are checked against ours (the same pixels; BF, ADF, mean pattern and CoM
within float tolerance) before its times are printed beside ours per worker count. Ours twice: the
``reduce`` above (the command: calibrate, one pass, provenance hash, write the file) and the pass alone
(``run_reducers`` with the same reducers and calibration, results in memory: run_udf's job).

    python benchmarks/scale_out.py --codecs "" --libertem /work/venvs/peers/bin/python   # reduce only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.calibration import Calibration, radius_map
from stempress.data.open import open_source
from stempress.exec.dask import DaskExecutor
from stempress.reduce.engine import single_blas_thread
from stempress.reduce.imaging import CenterOfMass, VirtualDetectors
from stempress.reduce.sufficiency import parse_targets
from stempress.sinks.shards import shard_folder
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file
from stempress.store.reducing import run_reducers
from stempress.store.verify import verify

TARGETS = ["bf", "adf", "com", "mean_pattern"]
READ_BLOCK = 256 * 1024**2
#: LiberTEM's results against ours: |d| <= RTOL x (an image's max, or for CoM the detector size in px). Counts
#: summed in float32 (LiberTEM's default) stay exact below 2**24; what is left is the rounding of one division
#: and of float32 CoM moments, well under this; one pixel more or less in a detector is >= 1 count, above it.
RTOL = 1e-6
#: Our reduced file's datasets that LiberTEM's results are compared with (its key in libertem_reduce.py's .npz).
SAME_QUANTITY = {"bf": "reduced/bf/BF", "adf": "reduced/adf/ADF", "mean": "reduced/mean_pattern/mean",
                 "com_y": "reduced/com/com_y", "com_x": "reduced/com/com_x"}


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


def usage() -> np.ndarray:
    """This process's (user s, system s, minor page faults) so far: resource.getrusage, run in each process."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime, r.ru_stime, r.ru_minflt], np.float64)


def usage_all(executor: DaskExecutor | None) -> np.ndarray:
    """``usage`` summed over this process (the client, and a LocalCluster's scheduler) and every worker."""
    own = usage()
    if executor is None:
        return own
    return own + sum(executor.client.run(usage).values())


@dataclass(frozen=True)
class Busy:
    """What a run cost every process together: the cores kept busy on average (CPU seconds / wall: where it nears
    the machine's cores, more workers have nothing left to run on), system seconds and page faults per raw GB."""

    cores: float
    system_s_per_gb: float
    faults_per_gb: float


def busy_timed(fn: Callable[[], object], executor: DaskExecutor | None, raw: int) -> tuple[float, object, Busy]:
    """Wall seconds, the result, and what the run cost (``Busy``)."""
    before = usage_all(executor)
    took, result = timed(fn)
    user, system, faults = usage_all(executor) - before
    return took, result, Busy((user + system) / took, system / (raw / 1e9), faults / (raw / 1e9))


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


@dataclass(frozen=True)
class Geometry:
    """What stempress's reduce used, read back from its file: the calibration, the reducers built from it (as
    ``ReducedFileSink`` builds them) and each detector's pixels (bf, adf, com)."""

    calibration: Calibration
    reducers: list[Any]
    masks: dict[str, np.ndarray]


def reduce_geometry(path: Path) -> Geometry:
    """The geometry recorded in a reduced file's provenance."""
    with h5py.File(path, "r") as f:
        record = json.loads(f.attrs["stempress_provenance"])
    fields = dict(record["calibration"])
    fields["det_shape"] = tuple(fields["det_shape"])
    cal = Calibration(**fields)
    reducers = [t.reducer(cal, name=t.label) for t in parse_targets(TARGETS)]
    masks: dict[str, np.ndarray] = {}
    for reducer in reducers:
        if isinstance(reducer, VirtualDetectors):
            masks.update({k.lower(): v.astype(bool) for k, v in reducer.masks(cal.det_shape, cal).items()})
        elif isinstance(reducer, CenterOfMass):
            weights = reducer.prepare((1, 1, *cal.det_shape), np.dtype(np.uint16), cal)["weights"]
            masks["com"] = weights[:, 0].reshape(cal.det_shape).astype(bool)
    return Geometry(cal, reducers, masks)


def libertem_radius(r: np.ndarray, inside: np.ndarray) -> float:
    """A radius R for LiberTEM's rule (r <= R) that selects exactly ``inside`` (a disk by our rule, r < ours):
    halfway between the farthest pixel in and the nearest out."""
    if not inside.any():
        raise SystemExit("a detector of stempress's reduce covers no pixel; nothing to compare with LiberTEM")
    return float((r[inside].max() + r[~inside].min()) / 2) if (~inside).any() else float(r.max()) + 1.0


def libertem_args(geo: Geometry) -> list[str]:
    """libertem_reduce.py's geometry arguments: our centre and radii that select our pixels by its rules."""
    cal = geo.calibration
    r = radius_map(cal.det_shape, cal)
    adf = geo.masks["adf"]
    hole = r < r[adf].min()  # our ring is inner <= r < outer: its hole is a disk by our rule
    return ["--centre", repr(cal.centre_y), repr(cal.centre_x), "--bf", repr(libertem_radius(r, geo.masks["bf"])),
            "--adf", repr(libertem_radius(r, hole)), repr(libertem_radius(r, adf | hole)),
            "--com-r", repr(libertem_radius(r, geo.masks["com"]))]


def run_libertem(python: str, cube: Path, geo: Geometry, counts: list[int], repeat: int,
                 folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """libertem_reduce.py in ``python`` (isolated: no stempress, no PYTHONPATH): its JSON report and arrays."""
    script = Path(__file__).with_name("libertem_reduce.py")
    npz = folder / "libertem.npz"
    command = [python, "-I", str(script), str(cube), *libertem_args(geo), "--workers", ",".join(map(str, counts)),
               "--repeat", str(repeat), "--out", str(npz)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"LiberTEM run failed (exit {done.returncode}): {' '.join(command)}\n{tail}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    npz.unlink()
    return report, arrays


def check_libertem(ours: dict[str, np.ndarray], geo: Geometry, arrays: dict[str, np.ndarray],
                   counts: list[int]) -> None:
    """LiberTEM used our pixels and computed our numbers (else the timing compares different work)."""
    for name, mask in geo.masks.items():
        differ = int(np.count_nonzero(arrays[f"{name}_mask"] != mask))
        if differ:
            raise SystemExit(f"LiberTEM's {name} mask differs from stempress's on {differ} pixels")
    det = float(max(geo.calibration.det_shape))
    for n in counts:
        cells = []
        for name, key in SAME_QUANTITY.items():
            mine, theirs = ours[key], np.asarray(arrays[f"{n}/{name}"], np.float64)
            scale = det if name.startswith("com") else max(float(np.abs(mine).max()), 1.0)
            diff = float(np.abs(theirs - mine).max())
            if not np.all(np.isfinite(theirs)) or diff > RTOL * scale:
                raise SystemExit(f"LiberTEM dask:{n} {name} differs from stempress's {key} by {diff:.3g} "
                                 f"(tolerance {RTOL * scale:.3g})")
            cells.append(f"{name} {diff:.1g}")
        print(f"  dask:{n} results = ours (max |d|, tolerance {RTOL:g} x scale): " + ", ".join(cells))


def compare_libertem(report: dict[str, Any], raw: int, counts: list[int], seconds: dict[tuple[str, str], float],
                     passes: dict[str, float]) -> None:
    """Its times beside ours per worker count: ours / its (below 1: ours is ahead)."""
    runs = {run["workers"]: run for run in report["runs"]}
    for n in counts:
        run = runs[n]
        print(f"  dask:{n} cluster start {run['start_s']:.1f} s, load {run['load_s']:.2f} s (neither timed); "
              f"run_udf " + ", ".join(f"{t:.2f}" for t in run["run_udf_s"]) + f" s: best {run['best_s']:.2f} s  "
              f"{raw / 1e9 / run['best_s']:6.2f} GB/s")
    print("ours / LiberTEM's (seconds; below 1: ours is ahead):")
    for n in counts:
        theirs = runs[n]["best_s"]
        ours, alone = seconds["reduce", f"dask:{n}"], passes[f"dask:{n}"]
        print(f"  dask:{n}  reduce (calibrate + pass + hash + write) {ours:6.2f} s / {theirs:6.2f} s = "
              f"{ours / theirs:5.2f}   the pass alone {alone:6.2f} s / {theirs:6.2f} s = {alone / theirs:5.2f}")
    if 1 in counts:
        print("  (dask:1: stempress's engine partitions only for 2 or more workers, so with one it runs the pass in "
              "this process; LiberTEM's run_udf runs on its one worker process)")


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
    parser.add_argument("--libertem", metavar="PYTHON",
                        help="also run LiberTEM's Dask executor on the same file with this python (one with "
                             "LiberTEM, e.g. /work/venvs/peers/bin/python) and compare")
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

    def best(label: str, where: str, fn: Callable[[Path], object], check: Callable[[Path], None],
             executor: DaskExecutor | None) -> None:
        times: list[float] = []
        cost = Busy(0.0, 0.0, 0.0)
        for _ in range(args.repeat):
            run_no[0] += 1
            target = out / f"{run_no[0]}.h5"
            took, result, busy = busy_timed(lambda t=target: fn(t), executor, raw)
            check(target)
            target.unlink()
            shutil.rmtree(shard_folder(target), ignore_errors=True)
            times.append(took)
            if took == min(times):
                results[label, where], cost = result, busy
        seconds[label, where] = min(times)
        print(f"  {label:<28} {where:<10} {min(times):7.2f} s  {raw / 1e9 / min(times):6.2f} GB/s  "
              f"cores busy {cost.cores:4.2f} of {os.cpu_count()}  system {cost.system_s_per_gb:5.2f} s/GB  "
              f"page faults {cost.faults_per_gb:8,.0f}/GB", flush=True)

    references: dict[str, object] = {}
    geometry: list[Geometry] = []
    passes: dict[str, float] = {}

    def check_reduce(path: Path) -> None:
        keep_or_compare("reduce", reduced_images(path))
        if not geometry:
            geometry.append(reduce_geometry(path))

    def pass_alone(source: Any, executor: DaskExecutor | None, where: str) -> None:
        """run_reducers with the reduce's own reducers and calibration: the pass that run_udf is compared with."""
        geo = geometry[0]
        times = []
        for _ in range(args.repeat):
            with single_blas_thread():
                took, _ = timed(lambda: run_reducers(source, geo.reducers, calibration=geo.calibration,
                                                     executor=executor))
            times.append(took)
        passes[where] = min(times)
        print(f"  {'reduce: the pass alone':<28} {where:<10} {min(times):7.2f} s  {raw / 1e9 / min(times):6.2f} GB/s",
              flush=True)

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
                 lambda p: reduce_to_file(source, TARGETS, p, executor=executor), check_reduce, executor)
            if args.libertem:
                pass_alone(source, executor, where)
            for codec in codecs:
                best(f"compress {codec}", where,
                     lambda p, c=codec: compress(source, p, codec=c, workers=1, executor=executor),
                     lambda p, c=codec: keep_or_compare(c, without_uuid(p)), executor)
                best(f"compress {codec} --shards", where,
                     lambda p, c=codec: compress(source, p, codec=c, workers=1, executor=executor, shards=True),
                     lambda p: verified(p), executor)

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
    if args.libertem:
        print(f"\nLiberTEM's Dask executor on the same file ({args.libertem}; SumUDF, ApplyMasksUDF with our BF disk "
              "and ADF ring, CoMUDF with our centre and mask):", flush=True)
        report, arrays = run_libertem(args.libertem, cube_path, geometry[0], counts, args.repeat, out)
        print(f"  LiberTEM {report['libertem']}")
        check_libertem(references["reduce"], geometry[0], arrays, counts)  # type: ignore[arg-type]
        compare_libertem(report, raw, counts, seconds, passes)
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
