"""LiberTEM's Dask executor reducing a 4D file as a LiberTEM user scripts it: sum, a BF disk and an ADF ring, CoM.

Runs in a venv with LiberTEM and WITHOUT stempress (``benchmarks/requirements-external.txt``), alone or from
``benchmarks/scale_out.py --libertem PYTHON`` (issue 15's comparison), which gives it the centre and radii
stempress used and checks the results against stempress's::

    /work/venvs/peers/bin/python -I benchmarks/libertem_reduce.py cube.npy --centre 128 128 --bf 31.5 \\
        --adf 34.6 94.5 --com-r 94.5 --workers 1,2 --out libertem.npz

For each worker count N: ``Context.make_with("dask", cpus=N)`` (a LocalCluster of N worker processes; its
start is timed apart), ``ctx.load("npy" | "hdf5", ...)`` (timed apart, as stempress's ``open_source`` is), then
``--repeat`` times one ``run_udf`` with ``SumUDF`` (the mean pattern, once divided by the frame count),
``ApplyMasksUDF`` with ``circular`` (BF) and ``ring`` (ADF) masks, and ``CoMUDF.with_params(cy, cx, r)``.

Radii are LiberTEM's: a pixel is in ``circular(..., R)`` when r <= R and in ``ring(..., R, Ri)`` when
Ri < r <= R (r: distance of the pixel's index from the centre). Prints one JSON object on stdout (everything
else goes to stderr): LiberTEM's version and, per worker count, the start, load and run_udf seconds; with
``--out`` also writes the images, the mean pattern, CoM shifts and the masks used to an ``.npz`` (keys
``<N>/bf`` ... and ``bf_mask``, ``adf_mask``, ``com_mask``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a 4D .npy file, or an HDF5 file with --dataset")
    parser.add_argument("--dataset", help="the 4D dataset's path inside an HDF5 file")
    parser.add_argument("--centre", type=float, nargs=2, metavar=("CY", "CX"), required=True,
                        help="beam centre in detector pixels (row, column)")
    parser.add_argument("--bf", type=float, required=True, help="BF disk radius (px; r <= R)")
    parser.add_argument("--adf", type=float, nargs=2, metavar=("INNER", "OUTER"), required=True,
                        help="ADF ring radii (px; inner < r <= outer)")
    parser.add_argument("--com-r", type=float, default=float("inf"), help="CoM mask radius (px; r <= R)")
    parser.add_argument("--workers", default="1,2", help="Dask worker processes to try, comma separated")
    parser.add_argument("--repeat", type=int, default=2, help="run_udf calls per worker count; the fastest counts")
    parser.add_argument("--out", type=Path, help="write the results and masks to this .npz")
    return parser.parse_args()


def run(args: argparse.Namespace) -> tuple[dict, dict[str, np.ndarray]]:
    """Every worker count's timings, and the arrays for --out."""
    import libertem
    from libertem.api import Context
    from libertem.masks import circular, ring
    from libertem.udf.com import CoMUDF
    from libertem.udf.masks import ApplyMasksUDF
    from libertem.udf.sum import SumUDF

    cy, cx = args.centre
    inner, outer = args.adf
    report: dict = {"libertem": libertem.__version__, "path": str(args.path), "runs": []}
    arrays: dict[str, np.ndarray] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        started = time.perf_counter()
        with Context.make_with("dask", cpus=workers) as ctx:
            start_s = time.perf_counter() - started
            started = time.perf_counter()
            if args.dataset:
                ds = ctx.load("hdf5", path=str(args.path), ds_path=args.dataset)
            else:
                ds = ctx.load("npy", path=str(args.path))
            load_s = time.perf_counter() - started
            det_y, det_x = tuple(ds.shape.sig)
            masks = [functools.partial(circular, cx, cy, det_x, det_y, args.bf),
                     functools.partial(ring, cx, cy, det_x, det_y, outer, inner)]
            seconds = []
            for _ in range(args.repeat):
                udfs = [SumUDF(), ApplyMasksUDF(mask_factories=masks), CoMUDF.with_params(cy=cy, cx=cx, r=args.com_r)]
                started = time.perf_counter()
                total, images, com = ctx.run_udf(dataset=ds, udf=udfs)
                seconds.append(time.perf_counter() - started)
            frames = int(np.prod(tuple(ds.shape.nav)))
        report["runs"].append({"workers": workers, "start_s": start_s, "load_s": load_s, "run_udf_s": seconds,
                               "best_s": min(seconds)})
        intensity = np.asarray(images["intensity"].data)
        shifts = np.asarray(com["raw_shifts"].data)
        arrays.update({f"{workers}/bf": intensity[..., 0], f"{workers}/adf": intensity[..., 1],
                       f"{workers}/com_y": shifts[..., 0], f"{workers}/com_x": shifts[..., 1],
                       f"{workers}/mean": np.asarray(total["intensity"].data, np.float64) / frames})
    arrays["bf_mask"] = np.asarray(masks[0](), bool)
    arrays["adf_mask"] = np.asarray(masks[1](), bool)
    arrays["com_mask"] = np.asarray(circular(cx, cy, det_x, det_y, args.com_r), bool)
    return report, arrays


def main() -> None:
    args = parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
        report, arrays = run(args)
        if args.out is not None:
            np.savez(args.out, **arrays)
            report["out"] = str(args.out)
    print(json.dumps(report))


if __name__ == "__main__":  # LiberTEM's rule: its Dask workers are spawned processes
    main()
