"""Throughput of the default reducer set (BF, ADF, HAADF, centre of mass, mean pattern) beside plain numpy.

    python benchmarks/reduce_throughput.py               # 64 x 64 scan, 256 x 256 uint16 (512 MiB) in memory
    python benchmarks/reduce_throughput.py --scan 32

Both compute the same images from the same in-memory cube in one run: ours through stempress's one-pass engine
(one matrix product per block for every linear reducer), the alternative as a straightforward numpy
implementation (a masked sum per detector, moment sums for the centre of mass, a sum for the mean pattern), block
by block. Prints GB/s (1e9 bytes of dense input per second) of each, the ratio, and the largest difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stempress.data.base import ArraySource, iter_blocks
from stempress.reduce import default_reducers
from stempress.store.reducing import calibrate, run_reducers


def numpy_reference(source: ArraySource, masks: dict[str, np.ndarray], centre: tuple[float, float],
                    com_mask: np.ndarray) -> dict:
    """The same images the obvious way, block by block (the CoM over the same mask as ours)."""
    det_y, det_x = source.shape[2:]
    yy, xx = np.mgrid[:det_y, :det_x]
    images = {name: np.zeros(source.shape[:2]) for name in masks}
    com_y, com_x = np.zeros(source.shape[:2]), np.zeros(source.shape[:2])
    pattern = np.zeros((det_y, det_x))
    for block in iter_blocks(source):
        data = block.data.astype(np.float64)
        rows = slice(block.start, block.stop)
        for name, mask in masks.items():
            images[name][rows] = (data * mask).sum(axis=(2, 3))
        inside = data * com_mask
        total = inside.sum(axis=(2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            com_y[rows] = np.where(total > 0, (inside * yy).sum(axis=(2, 3)) / total - centre[0], 0)
            com_x[rows] = np.where(total > 0, (inside * xx).sum(axis=(2, 3)) / total - centre[1], 0)
        pattern += data.sum(axis=(0, 1))
    return {"images": images, "com_y": com_y, "com_x": com_x, "mean": pattern / np.prod(source.shape[:2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, default=64)
    parser.add_argument("--det", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: args.det, : args.det]
    r = np.hypot(yy - args.det / 2, xx - args.det / 2)
    lam = np.where(r < args.det / 8, 40.0, 0.3 * np.exp(-r / (args.det / 6)))
    cube = rng.poisson(lam, size=(args.scan, args.scan, args.det, args.det)).astype(np.uint16)
    source = ArraySource(cube, name="poisson")
    nbytes = cube.nbytes
    cal = calibrate(source)
    reducers = default_reducers(cal)

    ours_s, ref_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = run_reducers(source, reducers)
        ours_s.append(time.perf_counter() - t0)
    masks = {name: ours_mask for name, ours_mask in _masks(reducers, cal, cube.shape[2:]).items()}
    # our default CoM keeps the pixels within its mask radius (r < R) of the centre: the reference does the same
    com_mask = np.hypot(yy - cal.centre_y, xx - cal.centre_x) < float(ours["com"]["mask_radius_px"])
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ref = numpy_reference(source, masks, (cal.centre_y, cal.centre_x), com_mask)
        ref_s.append(time.perf_counter() - t0)

    worst = max(float(np.max(np.abs(ours["virtual"][name] - ref["images"][name]))) for name in masks)
    worst = max(worst, float(np.max(np.abs(ours["com"]["com_y"] - ref["com_y"]))),
                float(np.max(np.abs(ours["com"]["com_x"] - ref["com_x"]))),
                float(np.max(np.abs(ours["mean_pattern"]["mean"] - ref["mean"]))))
    ours_gbs, ref_gbs = nbytes / min(ours_s) / 1e9, nbytes / min(ref_s) / 1e9
    print(f"cube {cube.shape} uint16, {nbytes / 2**20:.0f} MiB in memory; best of {args.repeat}")
    print(f"stempress default reducers: {ours_gbs:.2f} GB/s")
    print(f"plain numpy, same images:   {ref_gbs:.2f} GB/s")
    print(f"ratio: {ours_gbs / ref_gbs:.1f}x; largest difference {worst:.3g}")


def _masks(reducers, cal, det_shape) -> dict[str, np.ndarray]:
    """The virtual detectors' masks as the reducer built them, so both sides integrate the same pixels."""
    from stempress.reduce.imaging import VirtualDetectors

    for reducer in reducers:
        if isinstance(reducer, VirtualDetectors):
            return reducer.masks(det_shape, cal)
    raise SystemExit("the default reducer set has no virtual detectors")


if __name__ == "__main__":
    main()
