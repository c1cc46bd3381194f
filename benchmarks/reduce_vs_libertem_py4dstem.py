"""stempress's reducers beside LiberTEM and py4DSTEM on the same HDF5 file, in one run: speed and equality.

Setup (one venv for all three; py4DSTEM 0.14 pins numpy<2, so stempress runs here on numpy 1.26):

    python3.11 -m venv /tmp/venv-ext
    /tmp/venv-ext/bin/pip install -r benchmarks/requirements-external.txt -e .

Run (from the repository root):

    /tmp/venv-ext/bin/python benchmarks/reduce_vs_libertem_py4dstem.py              # 128x128 scan, 128x128 det
    /tmp/venv-ext/bin/python benchmarks/reduce_vs_libertem_py4dstem.py --scan 32     # quick
    /tmp/venv-ext/bin/python benchmarks/reduce_vs_libertem_py4dstem.py --file cube.h5 --dataset /path/to/data

The script writes a synthetic uint16 diffraction cube (dense, uncompressed, contiguous) to a temporary HDF5
file, or takes yours; reads it once so every tool starts from a warm page cache; then on that same file:

* stempress: one streaming pass of ``default_reducers(calibrate(source))``: BF, ADF, HAADF, CoM, mean pattern;
* LiberTEM: ``ApplyMasksUDF`` with our three detector masks (the very arrays our reducer integrates) and
  ``CoMUDF`` centred on our calibrated beam centre with our CoM's mask radius (read from our reducer), both
  UDFs in one pass, with the inline executor and with LiberTEM's default Dask context (a worker process per
  core; ``--executors inline`` skips it);
* py4DSTEM: the cube read into a ``DataCube`` the way a py4DSTEM user does for a plain HDF5 file (h5py into
  RAM; ``py4DSTEM.import_file``/``read`` refuse a non-py4DSTEM .h5), ``get_virtual_image`` in 'circle' and
  'annulus' mode with our centre and radii, and ``py4DSTEM.process.utils.get_CoM`` per frame (py4DSTEM has no
  bulk plain-CoM call; ``get_origin`` thresholds the disk first, which is another quantity);
* a direct numpy reference on the whole in-memory cube: exact integer (uint64) sums for the images and
  integer first moments of the row/column profiles for the CoM, no BLAS, no blocking.

Where a tool's own detector rule selects other pixels than ours (py4DSTEM's annulus is ``ri < r < ro``,
LiberTEM's disk ``r <= R``, ours ``inner <= r < outer``), the script converts explicitly (py4DSTEM gets
``mode='mask'`` with our mask; LiberTEM's CoM a radius between our last included and first excluded pixel)
and says so in the notes; a pixel that still differs fails the run.

Prints seconds, GB/s (1e9 bytes of dense input per second) and our speed-up over each tool (their seconds /
ours), then each image's largest difference against ours and against numpy, PASS/FAIL at 1e-6 of the
reference's scale (see ``RTOL``); exits 1 if any check fails. Timings are the best of ``--repeat`` runs, the
first (warm-up) run included; LiberTEM's context start-up is reported but not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.open import open_source
from stempress.reduce import (
    Calibration,
    CenterOfMass,
    VirtualDetectors,
    default_reducers,
    radius_map,
)
from stempress.store.reducing import calibrate, run_reducers
from stempress.store.write import write_hdf5

#: Relative tolerance against the reference's scale. Why 1e-6: sums of uint16 counts are integers, exact in
#: float64 and in float32 while below 2**24, so correct tools differ only by the rounding of one division and of
#: a float32 store (~6e-8 relative); a detector that differs by one lit pixel changes an image by >= 1 count,
#: >= 1e-6 of the image maximum whenever that maximum is below 1e6 counts, so it cannot pass.
RTOL = 1e-6
IMAGES = ("BF", "ADF", "HAADF")
COM = ("com_y", "com_x")
Images = dict[str, np.ndarray]


@dataclass
class Timing:
    """One row of the speed table."""

    tool: str
    what: str
    seconds: float
    note: str = ""


@dataclass
class Report:
    """Everything the tables print; ``failed`` decides the exit status."""

    nbytes: int
    timings: list[Timing] = field(default_factory=list)
    results: dict[str, Images] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """Shortest wall time of ``repeat`` runs and the last result: the least disturbed run on a shared machine."""
    best, out = math.inf, None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return best, out


# -- the file ----------------------------------------------------------------------------------------------
def write_cube(spec: str, path: Path) -> str:
    """A synthetic cube as a plain contiguous HDF5 dataset; returns the dataset path."""
    with open_source(spec) as source:
        write_hdf5(source, path, force=True)
    with open_source(path) as source:
        return source.dataset_path


def warm_page_cache(path: Path, chunk: int = 64 * 2**20) -> None:
    """Read the file once so no tool pays the first disk read and the others a cached one."""
    with open(path, "rb") as fh:
        while fh.read(chunk):
            pass


# -- stempress ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """What the other tools must be given to compute our quantities: our calibration, our detectors' masks,
    and the CoM mask exactly as our ``CenterOfMass`` builds it (its radius, inf for the whole detector)."""

    cal: Calibration
    detectors: VirtualDetectors
    masks: dict[str, np.ndarray]
    com_mask: np.ndarray
    com_radius: float


def run_ours(path: Path, dataset: str, repeat: int, report: Report) -> tuple[Geometry, Images]:
    """Calibrate (timed apart: the other tools are handed its geometry), then time the one-pass reduction."""
    with open_source(path, dataset=dataset) as source:
        t0 = time.perf_counter()
        cal = calibrate(source)
        report.timings.append(Timing("stempress", "calibrate (16 sampled rows)", time.perf_counter() - t0,
                                     "not in the pass; the others get its geometry"))
        reducers = default_reducers(cal)
        seconds, out = best_of(repeat, lambda: run_reducers(source, reducers))
    report.timings.append(Timing("stempress", "1 pass: BF+ADF+HAADF+CoM+mean", seconds))
    images = {**{name: out["virtual"][name] for name in IMAGES},
              "com_y": out["com"]["com_y"], "com_x": out["com"]["com_x"], "mean": out["mean_pattern"]["mean"]}
    return geometry_of(reducers, source.shape, source.dtype, cal), images


def geometry_of(reducers: list, shape: tuple[int, ...], dtype: np.dtype, cal: Calibration) -> Geometry:
    """Masks from the reducers themselves (``prepare`` is what the engine multiplies by), so a change of our
    defaults (e.g. a CoM mask radius) changes what the other tools are asked for, not the verdict."""
    detectors = next(r for r in reducers if isinstance(r, VirtualDetectors))
    com = next(r for r in reducers if isinstance(r, CenterOfMass))
    context = com.prepare(tuple(shape), np.dtype(dtype), cal)
    com_mask = context["weights"][:, 0].reshape(shape[2:]).astype(bool)
    radius = float(context.get("mask_radius_px", math.inf if com_mask.all() else math.nan))
    if math.isnan(radius):
        raise SystemExit("our CoM uses a mask but does not say its radius; update this benchmark")
    return Geometry(cal, detectors, detectors.masks(shape[2:], cal), com_mask, radius)


# -- LiberTEM ----------------------------------------------------------------------------------------------
def _mask(values: np.ndarray) -> np.ndarray:
    """A mask factory's body (module level, so LiberTEM's worker processes can unpickle it)."""
    return values


def libertem_com_radius(geo: Geometry, report: Report) -> float:
    """The ``r`` for CoMUDF that selects exactly our CoM pixels. LiberTEM includes ``r**2 <= R**2``, we
    ``r < R``: where that differs at a pixel, take the midpoint between our farthest included and nearest
    excluded pixel, which selects the same pixels under either rule (said in the output)."""
    from libertem.masks import circular

    det_y, det_x = geo.com_mask.shape
    radius = geo.com_radius

    def theirs(r: float) -> np.ndarray:
        return np.asarray(circular(centerX=geo.cal.centre_x, centerY=geo.cal.centre_y, imageSizeX=det_x,
                                   imageSizeY=det_y, radius=r), bool)

    differ = int(np.count_nonzero(theirs(radius) != geo.com_mask))
    if differ == 0:
        report.notes.append(f"LiberTEM CoM: r={radius:.4f} (its rule r^2 <= R^2) selects exactly our CoM pixels")
        return radius
    r = radius_map(geo.com_mask.shape, geo.cal)
    adjusted = float((r[geo.com_mask].max() + r[~geo.com_mask].min()) / 2)
    left = int(np.count_nonzero(theirs(adjusted) != geo.com_mask))
    report.failed |= left > 0
    report.notes.append(f"LiberTEM CoM: r={radius:.4f} (its rule r^2 <= R^2) differs from our CoM mask on {differ} "
                        f"px; using r={adjusted:.4f} ({left} px differ then)")
    return adjusted


def run_libertem(path: Path, dataset: str, geo: Geometry, executor: str, repeat: int, report: Report) -> None:
    """ApplyMasksUDF + CoMUDF in one pass on ``executor`` ('inline' or 'dask'); context start-up is not timed."""
    from libertem.api import Context
    from libertem.udf.com import CoMUDF
    from libertem.udf.masks import ApplyMasksUDF

    com_radius = libertem_com_radius(geo, report)
    factories = [functools.partial(_mask, geo.masks[name]) for name in IMAGES]
    t0 = time.perf_counter()
    ctx = Context.make_with(executor)
    try:
        ds = ctx.load("hdf5", path=str(path), ds_path=dataset)
        started = time.perf_counter() - t0
        workers = _cpu_workers(ctx)

        def one_pass() -> list[dict[str, Any]]:
            # CoM shifts relative to our centre, over our CoM mask (r), as our CenterOfMass computes them
            udfs = [ApplyMasksUDF(mask_factories=factories, mask_dtype=np.float64),
                    CoMUDF.with_params(cy=geo.cal.centre_y, cx=geo.cal.centre_x, r=com_radius)]
            return ctx.run_udf(dataset=ds, udf=udfs, progress=False)

        seconds, (mask_out, com_out) = best_of(repeat, one_pass)
    finally:
        ctx.close()
    tool = f"LiberTEM {executor}"
    report.timings.append(Timing(tool, "1 pass: 3 masks+CoM", seconds,
                                 f"{workers} worker process(es); start-up {started:.1f} s not timed"))
    intensity = np.asarray(mask_out["intensity"].data)
    shifts = np.asarray(com_out["raw_shifts"].data)
    report.results[tool] = {**{name: intensity[..., j] for j, name in enumerate(IMAGES)},
                            "com_y": shifts[..., 0], "com_x": shifts[..., 1]}
    report.notes.append(f"{tool}: images {intensity.dtype}, CoM {shifts.dtype} (CoMUDF computes in float32)")
    if executor == "inline":
        report.notes.append("LiberTEM inline allows one BLAS/numba thread per core (its default); stempress's pass "
                            "runs on one BLAS thread (single_blas_thread)")


def _cpu_workers(ctx: Any) -> str:
    """How many computing workers the context has (for the table), or '?' when it does not say."""
    with contextlib.suppress(Exception):
        return str(sum(1 for w in ctx.executor.get_available_workers() if w.resources.get("CPU")))
    return "?"


# -- py4DSTEM ----------------------------------------------------------------------------------------------
def py4dstem_geometry(geo: Geometry) -> dict[str, tuple[str, tuple]]:
    """Our detectors in py4DSTEM's terms: centre as (qx, qy) = (row, column), radii in pixels."""
    centre = (float(geo.cal.centre_y), float(geo.cal.centre_x))
    out = {}
    for d in geo.detectors.detectors:
        inner, outer = d.radii_px(geo.cal)
        out[d.name] = ("circle", (centre, float(outer))) if inner == 0 else \
            ("annulus", (centre, (float(inner), float(outer))))
    return out


def py4dstem_calls(datacube: Any, geo: Geometry, report: Report) -> dict[str, tuple[str, Any]]:
    """py4DSTEM's own detector for each image where its pixels equal ours, else ``mode='mask'`` with ours."""
    calls: dict[str, tuple[str, Any]] = {}
    for name, (mode, g) in py4dstem_geometry(geo).items():
        theirs = np.asarray(datacube.get_virtual_image(mode, g, return_mask=True), bool)
        differ = int(np.count_nonzero(theirs != geo.masks[name].astype(bool)))
        rule = "r^2 < R^2" if mode == "circle" else "ri^2 < r^2 < ro^2"
        if differ:
            report.notes.append(f"py4DSTEM {name}: its {mode} rule ({rule}) differs from ours (inner <= r < outer) "
                                f"on {differ} pixels; images below use mode='mask' with our mask")
            calls[name] = ("mask", geo.masks[name].astype(bool))
        else:
            report.notes.append(f"py4DSTEM {name}: mode={mode!r} (rule {rule}) selects exactly our pixels")
            calls[name] = (mode, g)
    return calls


def run_py4dstem(path: Path, dataset: str, geo: Geometry, repeat: int, report: Report) -> np.ndarray:
    """Load into a DataCube, virtual images, CoM per frame; returns the in-memory cube for the numpy reference."""
    import py4DSTEM
    from py4DSTEM.process.utils import get_CoM

    def load() -> np.ndarray:
        with h5py.File(path, "r") as f:
            return f[dataset][()]

    seconds, cube = best_of(1, load)
    datacube = py4DSTEM.DataCube(data=cube)
    report.timings.append(Timing("py4DSTEM", "load h5py -> DataCube (RAM)", seconds))
    calls = py4dstem_calls(datacube, geo, report)

    def images() -> Images:
        return {name: np.asarray(datacube.get_virtual_image(mode, g, verbose=False, returncalc=True).data)
                for name, (mode, g) in calls.items()}

    seconds, out = best_of(repeat, images)
    report.timings.append(Timing("py4DSTEM", "3 virtual images", seconds, "one pass over RAM per image"))
    masked = not geo.com_mask.all()
    seconds, com = best_of(1, lambda: _py4dstem_com(cube, get_CoM, geo.com_mask if masked else None))
    report.timings.append(Timing("py4DSTEM", "CoM (get_CoM per frame)", seconds,
                                 "frame * our CoM mask" if masked else "whole frame"))
    dark = ~np.isfinite(com).all(axis=-1)
    out["com_y"] = np.where(dark, 0.0, com[..., 0] - geo.cal.centre_y)
    out["com_x"] = np.where(dark, 0.0, com[..., 1] - geo.cal.centre_x)
    report.notes.append("py4DSTEM CoM: get_CoM has no mask argument" + (", so it gets frame * our CoM mask" if masked
                        else "") + "; it gives absolute (qx, qy) = (row, col), converted to shifts from our "
                        f"centre; {int(dark.sum())} frames without counts (NaN there) set to 0 as ours")
    report.results["py4DSTEM"] = out
    return cube


def _py4dstem_com(cube: np.ndarray, get_com: Callable[[np.ndarray], tuple[float, float]],
                  mask: np.ndarray | None) -> np.ndarray:
    """py4DSTEM's CoM of every frame: the loop a py4DSTEM user writes."""
    out = np.empty((*cube.shape[:2], 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        for iy in range(cube.shape[0]):
            for ix in range(cube.shape[1]):
                frame = cube[iy, ix] if mask is None else cube[iy, ix] * mask
                out[iy, ix] = get_com(frame)
    return out


# -- numpy -------------------------------------------------------------------------------------------------
def numpy_reference(cube: np.ndarray, geo: Geometry) -> Images:
    """The whole cube at once in exact integer arithmetic (no BLAS, no blocking): masked uint64 sums for the
    images; for the CoM the first moments of the masked frames' row and column profiles."""
    out = {name: cube[..., geo.masks[name].astype(bool)].sum(axis=-1, dtype=np.uint64).astype(np.float64)
           for name in IMAGES}
    framed = cube if geo.com_mask.all() else cube * geo.com_mask  # uint16 * bool stays uint16: exact
    rows = framed.sum(axis=3, dtype=np.uint64)  # (scan_y, scan_x, det_y): the profile along det_y
    cols = framed.sum(axis=2, dtype=np.uint64)
    total = rows.sum(axis=-1)
    lit = total > 0
    safe = np.where(lit, total, 1).astype(np.float64)
    moment_y = rows @ np.arange(cube.shape[2], dtype=np.uint64)
    moment_x = cols @ np.arange(cube.shape[3], dtype=np.uint64)
    out["com_y"] = np.where(lit, moment_y / safe - geo.cal.centre_y, 0.0)
    out["com_x"] = np.where(lit, moment_x / safe - geo.cal.centre_x, 0.0)
    out["mean"] = cube.sum(axis=(0, 1), dtype=np.uint64) / float(cube.shape[0] * cube.shape[1])
    return out


# -- tables ------------------------------------------------------------------------------------------------
def print_speed(report: Report) -> None:
    ours = next(t.seconds for t in report.timings if t.tool == "stempress" and t.what.startswith("1 pass"))
    print(f"\n{'tool':18s} {'what':32s} {'seconds':>8s} {'GB/s':>7s} {'ours x':>7s}  note")
    for t in report.timings:
        gbs = report.nbytes / t.seconds / 1e9
        ratio = "" if t.tool == "stempress" else f"{t.seconds / ours:7.2f}"
        print(f"{t.tool:18s} {t.what:32s} {t.seconds:8.3f} {gbs:7.2f} {ratio:>7s}  {t.note}")
    print("(GB/s: dense bytes of the whole cube / seconds, also for steps that make no full pass; "
          "ours x: their seconds / our pass's seconds)")


def scale_of(name: str, reference: np.ndarray, det_shape: tuple[int, int]) -> float:
    """What a difference is measured against: an image's largest value, or for CoM the largest detector
    coordinate (the moments are absolute positions before the centre is subtracted, so rounding scales so)."""
    if name in COM:
        return float(max(det_shape))
    return max(float(np.max(np.abs(reference))), 1.0)


def compare(name: str, got: np.ndarray, ours: np.ndarray, ref: np.ndarray, det_shape: tuple[int, int]) -> tuple:
    scale = scale_of(name, ref, det_shape)
    d_ours = float(np.max(np.abs(np.asarray(got, np.float64) - ours)))
    d_ref = float(np.max(np.abs(np.asarray(got, np.float64) - ref)))
    ok = bool(np.all(np.isfinite(got))) and max(d_ours, d_ref) <= RTOL * scale
    return d_ours, d_ours / scale, d_ref, d_ref / scale, RTOL * scale, ok


def print_equality(report: Report, det_shape: tuple[int, int]) -> None:
    ours, ref = report.results["stempress"], report.results["numpy"]
    print(f"\n{'image':6s} {'tool':16s} {'max|d| ours':>12s} {'rel':>9s} {'max|d| numpy':>12s} {'rel':>9s} "
          f"{'tol':>9s}  check")
    for name in (*IMAGES, *COM, "mean"):
        for tool, images in report.results.items():
            if tool == "numpy" or name not in images:
                continue
            d_o, r_o, d_r, r_r, tol, ok = compare(name, images[name], ours[name], ref[name], det_shape)
            report.failed |= not ok
            print(f"{name:6s} {tool:16s} {d_o:12.3g} {r_o:9.2g} {d_r:12.3g} {r_r:9.2g} {tol:9.2g}  "
                  f"{'PASS' if ok else 'FAIL'}")
    print(f"(tol = {RTOL:g} x scale; scale = the numpy image's max, or for CoM the detector size in px)")


# -- main --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cube_file(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """The user's file, or a synthetic one in a temporary directory removed afterwards."""
    if args.file is not None:
        with open_source(args.file, dataset=args.dataset) as source:
            yield Path(args.file), source.dataset_path
        return
    spec = args.spec or f"synthetic:diffraction?scan={args.scan}x{args.scan}&det={args.det}x{args.det}"
    with tempfile.TemporaryDirectory(prefix="stempress-ext-", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "cube.h5"
        t0 = time.perf_counter()
        dataset = write_cube(spec, path)
        print(f"wrote {spec} to {path} in {time.perf_counter() - t0:.1f} s", flush=True)
        yield path, dataset


def describe(geo: Geometry, report: Report) -> None:
    """Print the geometry every tool gets; our masks must be plain 0/1 (LiberTEM gets them as they are)."""
    cal = geo.cal
    for name in IMAGES:
        m = geo.masks[name]
        if not np.array_equal(m, m.astype(bool)):
            report.failed = True
            report.notes.append(f"{name}: our mask is not 0/1; the comparison assumes binary detectors")
    radii = ", ".join(f"{d.name} {d.radii_px(cal)[0]:.2f}..{d.radii_px(cal)[1]:.2f} px "
                      f"({int(geo.masks[d.name].sum())} px)" for d in geo.detectors.detectors)
    print(f"calibration: centre ({cal.centre_y:.3f}, {cal.centre_x:.3f}) px, BF radius {cal.bf_radius_px:.3f} px; "
          f"detectors {radii}; CoM mask r < {geo.com_radius:.2f} px ({int(geo.com_mask.sum())} px)", flush=True)
    report.notes.insert(0, "LiberTEM gets our detector masks as arrays: identical pixels by construction")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, default=128, help="scan size of the synthetic cube (square)")
    parser.add_argument("--det", type=int, default=128, help="detector size of the synthetic cube (square)")
    parser.add_argument("--spec", help="any synthetic:... spec instead of --scan/--det")
    parser.add_argument("--file", type=Path, help="an existing dense HDF5 cube instead of a synthetic one")
    parser.add_argument("--dataset", help="dataset path inside --file (default: auto-detected)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool; the best counts")
    parser.add_argument("--executors", nargs="*", default=["inline", "dask"], choices=["inline", "dask"],
                        help="LiberTEM executors to run ('dask' = the default Context's worker processes)")
    parser.add_argument("--tmpdir", help="where the synthetic file goes (default: the system tempdir)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    with cube_file(args) as (path, dataset):
        with h5py.File(path, "r") as f:
            dset = f[dataset]
            shape, dtype = tuple(dset.shape), dset.dtype
            layout = "contiguous" if dset.chunks is None else f"chunks {dset.chunks}, {dset.compression}"
        report = Report(nbytes=int(np.prod(shape)) * dtype.itemsize)
        print(f"{path}:{dataset} {shape} {dtype}, {layout}, {report.nbytes / 2**20:.0f} MiB; "
              f"best of {args.repeat}", flush=True)
        warm_page_cache(path)
        geo, report.results["stempress"] = run_ours(path, dataset, args.repeat, report)
        describe(geo, report)
        for executor in args.executors:
            run_libertem(path, dataset, geo, executor, args.repeat, report)
        cube = run_py4dstem(path, dataset, geo, args.repeat, report)
        seconds, report.results["numpy"] = best_of(1, lambda: numpy_reference(cube, geo))
        report.timings.append(Timing("numpy", "direct, whole cube in RAM", seconds,
                                     "the reference: exact uint64 sums, not tuned"))
    print_speed(report)
    print_equality(report, shape[2:])
    print()
    for note in dict.fromkeys(report.notes):  # once each, in order
        print(f"note: {note}")
    print("\nFAIL: see the rows marked FAIL and the notes above" if report.failed else
          "\nPASS: every image of every tool is within tolerance of ours and of numpy")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
