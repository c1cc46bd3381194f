"""Electron counting accuracy on synthetic integrating-detector frames whose true electrons are known.

    python benchmarks/counting_accuracy.py                     # the default grid: 120 rows, prints its run time
    python benchmarks/counting_accuracy.py --noise 0,4,14 --doses 20 --sharing 0 --csv counting.csv

Data: ``synthetic:diffraction`` cubes in integrating mode (``--gain`` ADU per electron, ``--offset`` ADU, Gaussian
read noise of ``--noise`` ADU), counted with a dark of ``--offset`` and the true gain. The true electrons are
the counting-mode twin of each cube (``stempress.events.counting.true_counts``: the same Poisson draws before any
detector effect). The library's integrating generator puts every electron's charge into one pixel (no charge
sharing), where the cluster method has nothing to merge and can only lose electrons that land next to each other.
So rows with ``sharing > 0`` use this script's own detector model instead (``charge_shared_adu``): each true
electron lands uniformly inside its pixel and spreads its charge as a Gaussian cloud of ``sharing`` pixels (sigma)
over the 3x3 pixels around it; the truth is the same.

Grid: dose (electrons per pattern) x charge sharing x read noise x threshold x method. Thresholds: ``0.5e`` and
``0.25e`` are fractions of an electron (``gain / 2``, ``gain / 4`` ADU); ``5sigma`` is five read-noise sigmas
(``threshold_unit="sigma"``; 0 ADU without noise). Methods: ``pixel`` rounds each hit pixel to electrons, so any
threshold below half an electron acts as half an electron there; ``cluster`` makes each 4-connected cluster of
hit pixels one electron at its centroid, so a low threshold lets it collect a charge-shared electron whose
pieces are each below half an electron. Doses: 5 e/pattern is sparse (a few hundredths of an electron per pixel in
the bright-field disk), 50 is crowded (about a quarter), where neighbouring electrons merge.

Columns (``stempress.events.counting.counting_accuracy``): total error % (signed), per-frame count RMS error
(electrons), electrons counted at their true pixel %, within 1 px % (8-neighbourhood, greedy matching, each
counted electron used once), false positives and missed electrons per frame (at the 1-px tolerance).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

from stempress.data.open import open_source
from stempress.events.counting import CountingParams, count_frames, counting_accuracy, true_counts

THRESHOLDS = ("0.5e", "0.25e", "5sigma")
METHODS = ("pixel", "cluster")
_ADU_MAX = np.iinfo(np.uint16).max
COLUMNS = ("dose", "sharing_px", "read_noise_adu", "threshold", "threshold_adu", "method", "true_per_frame",
           "total_error_percent", "frame_rms", "right_pixel_percent", "within_1px_percent", "false_per_frame",
           "missed_per_frame")


def _numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _spec(args: argparse.Namespace, dose: float, noise: float) -> str:
    return (f"synthetic:diffraction?scan={args.scan}&det={args.det}&mode=integrating&gain={args.gain:g}"
            f"&offset={args.offset:g}&read_noise={noise:g}&dose={dose:g}&dtype=uint16&seed={args.seed}")


def _pixel_fractions(u: np.ndarray, spread: float) -> np.ndarray:
    """Share of a Gaussian cloud centred at ``u`` (pixel units from the pixel centre) in pixels -1, 0, +1."""
    edges = np.array([-1.5, -0.5, 0.5, 1.5])
    cdf = ndtr((edges[None, :] - u[:, None]) / spread)
    return np.diff(cdf, axis=1)


def charge_shared_adu(truth: np.ndarray, gain: float, offset: float, read_noise: float, spread: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Integrating uint16 frames for known electrons whose charge spreads over neighbouring pixels.

    Each electron lands uniformly inside its pixel; its ``gain`` ADU are shared over the 3x3 pixels around it
    as a Gaussian cloud of sigma ``spread`` pixels (renormalised to the 3x3, charge past the detector edge is
    lost); then ``offset`` and Gaussian read noise are added and the ADU rounded and clipped like an ADC.
    """
    *lead, h, w = truth.shape
    frames = truth.reshape(-1, h, w)
    f, y, x = np.nonzero(frames)
    n = frames[f, y, x].astype(np.int64)
    f, y, x = np.repeat(f, n), np.repeat(y, n), np.repeat(x, n)
    wy = _pixel_fractions(rng.uniform(-0.5, 0.5, f.size), spread)
    wx = _pixel_fractions(rng.uniform(-0.5, 0.5, f.size), spread)
    share = wy[:, :, None] * wx[:, None, :]
    share *= gain / share.sum(axis=(1, 2), keepdims=True)
    padded = np.zeros((frames.shape[0], h + 2, w + 2))
    for dy in range(3):
        for dx in range(3):
            np.add.at(padded, (f, y + dy, x + dx), share[:, dy, dx])
    adu = padded[:, 1:-1, 1:-1] + offset + rng.standard_normal((frames.shape[0], h, w)) * read_noise
    return np.clip(np.rint(adu), 0, _ADU_MAX).astype(np.uint16).reshape(*lead, h, w)


def _frames(args: argparse.Namespace, dose: float, spread: float, noise: float,
            truth: np.ndarray) -> np.ndarray:
    """ADU frames: the library's generator without charge sharing, this script's model with it."""
    if spread == 0:
        with open_source(_spec(args, dose, noise)) as src:
            return src.read_rows(0, src.shape[0])
    rng = np.random.default_rng([args.seed, int(dose), int(spread * 1000), int(noise * 1000)])
    return charge_shared_adu(truth, args.gain, args.offset, noise, spread, rng)


def _params(args: argparse.Namespace, threshold: str, method: str, noise: float) -> CountingParams:
    common = {"dark": args.offset, "gain": args.gain, "method": method}
    if threshold == "5sigma":
        return CountingParams(threshold=5.0, threshold_unit="sigma", read_noise=noise, **common)
    return CountingParams(threshold=float(threshold.removesuffix("e")) * args.gain, **common)


def rows(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One result per grid point, doses outermost (each dose's true electrons are generated once)."""
    for dose in _numbers(args.doses):
        with open_source(_spec(args, dose, 0.0)) as src, true_counts(src) as twin:
            truth = twin.read_rows(0, twin.shape[0])
        per_frame = truth.sum() / (truth.shape[0] * truth.shape[1])
        for spread in _numbers(args.sharing):
            for noise in _numbers(args.noise):
                adu = _frames(args, dose, spread, noise, truth)
                for threshold in THRESHOLDS:
                    for method in METHODS:
                        params = _params(args, threshold, method, noise)
                        acc = counting_accuracy(count_frames(adu, params), truth)
                        yield {
                            "dose": dose, "sharing_px": spread, "read_noise_adu": noise, "threshold": threshold,
                            "threshold_adu": float(params.resolved(adu.shape[-2:])[2].max()), "method": method,
                            "true_per_frame": per_frame, "total_error_percent": acc["total_error_percent"],
                            "frame_rms": acc["frame_rms"], "right_pixel_percent": 100 * acc["right_pixel_fraction"],
                            "within_1px_percent": 100 * acc["within_1px_fraction"],
                            "false_per_frame": acc["false_per_frame"], "missed_per_frame": acc["missed_per_frame"],
                        }


_HEADER = (f"{'dose':>5} {'share':>5} {'noise':>5} {'threshold':>14} {'method':>7} {'total err %':>11} "
           f"{'frame RMS':>9} {'right px %':>10} {'<=1 px %':>8} {'FP/frame':>8} {'missed/frame':>12}")


def _line(r: dict[str, Any]) -> str:
    threshold = f"{r['threshold']} ({r['threshold_adu']:g})"
    return (f"{r['dose']:>5g} {r['sharing_px']:>5g} {r['read_noise_adu']:>5g} {threshold:>14} {r['method']:>7} "
            f"{r['total_error_percent']:>+11.2f} {r['frame_rms']:>9.2f} {r['right_pixel_percent']:>10.1f} "
            f"{r['within_1px_percent']:>8.1f} {r['false_per_frame']:>8.2f} {r['missed_per_frame']:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", default="16x16", help="scan shape (frames = its product)")
    parser.add_argument("--det", default="128x128", help="detector shape")
    parser.add_argument("--doses", default="5,50", help="electrons per pattern, comma-separated")
    parser.add_argument("--noise", default="0,2,4,8,14", help="read noise sigmas in ADU, comma-separated")
    parser.add_argument("--sharing", default="0,0.3", help="charge-cloud sigmas in pixels (0: no sharing)")
    parser.add_argument("--gain", type=float, default=40.0, help="ADU per electron")
    parser.add_argument("--offset", type=float, default=100.0, help="dark level in ADU")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"scan {args.scan}, detector {args.det}, gain {args.gain:g} ADU/e, offset {args.offset:g} ADU; threshold "
          "in ADU above dark in brackets; share = charge-cloud sigma (px)")
    print(_HEADER)
    results, group = [], None
    for r in rows(args):
        if (r["dose"], r["sharing_px"]) != group:
            group = (r["dose"], r["sharing_px"])
            print(f"-- dose {r['dose']:g} e/pattern ({r['true_per_frame']:.1f} true e/frame), "
                  f"charge sharing {r['sharing_px']:g} px")
        print(_line(r), flush=True)
        results.append(r)
    if args.csv is not None:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(results)
        print(f"wrote {args.csv}")
    print(f"{len(results)} rows in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
