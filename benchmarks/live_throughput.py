"""The highest frame rate ``stempress live`` takes from ``stempress serve`` with zero loss, on this machine.

    python benchmarks/live_throughput.py                      # hold each rate 60 s (the issue's protocol)
    python benchmarks/live_throughput.py --hold 5 --start 500  # a quick look

For each mode (Merlin 256x256 12-bit, uint16, with the default reducers (BF, ADF, HAADF, CoM, mean pattern) and a
blosc_zstd archive; Merlin 256x256 1-bit, sent as Merlin's binary format does: one byte per pixel, counter depth 1,
or with ``--merlin-format raw`` bit-packed (8 KiB a frame), same reducers, the archive in ``stempress live``'s
default for a 1-bit stream, blosc_lz4_bitshuffle; ``--codec`` names one for every mode) the rate starts at
``--start`` frames/s and grows by ``--factor`` until a step fails. A step runs ``serve`` (in a process of its own,
replaying a few Poisson frames over a scan of ``rate * hold`` positions, so the sender reads nothing from disk) and
the real ``stempress live`` command (a subprocess) for ``--hold`` seconds. A step passes when the receiver reports 0
frames missing AND the sender kept its schedule (sent everything within ``TOLERANCE`` of ``frames / rate``): over
TCP nothing is lost, a receiver that falls behind holds the sender back instead, which a real detector would not
wait for. Prints every step and the highest rate that passed.

Sender and receiver share this machine's cores: on a small or busy machine the sender's own work lowers the numbers.
The DECTRIS target and the comparison with LiberTEM-live are not measured here.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DET = 256
SCAN_X = 256
#: Distinct frames replayed over the scan (one scan row, so the sender reads each row as a view, not a copy: its CPU
#: is not the receiver's to share; the rest repeats them).
BASE_FRAMES = SCAN_X
#: A step passes only if the sender needed at most this much longer than ``frames / rate``.
TOLERANCE = 1.02
TARGETS = ["bf", "adf", "haadf", "com", "mean_pattern"]  # reduce.imaging.default_reducers, by name
MODES = {"12bit": (np.uint16, 12), "1bit": (np.uint8, 1)}


class RepeatedFrames:
    """A ``Dataset4D`` of ``scan_y x SCAN_X`` positions whose frames cycle through a few stored ones: the sender
    replays a long scan at full rate without reading or generating data."""

    def __init__(self, base: np.ndarray, scan_y: int, depth: int) -> None:
        self.base = base
        self.shape = (scan_y, SCAN_X, *base.shape[1:])
        self.dtype = base.dtype
        self.name = f"repeated-{scan_y}x{SCAN_X}"
        self.metadata: dict[str, Any] = {"counter_depth": depth}

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if stop - start == 1 and self.base.shape[0] == SCAN_X:  # one row (as serve reads): the frames, no copy
            return self.base[None]
        index = (np.arange(start * SCAN_X, stop * SCAN_X) % self.base.shape[0])
        return self.base[index].reshape(stop - start, SCAN_X, *self.base.shape[1:])

    def close(self) -> None:
        """Nothing held."""


def base_frames(mode: str, n: int = BASE_FRAMES) -> np.ndarray:
    """``n`` Poisson frames with a bright disk (12-bit counts), or their 1-bit hits (0/1)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:DET, :DET]
    disk = (yy - DET / 2) ** 2 + (xx - DET / 2) ** 2 < 30**2
    frames = rng.poisson(np.where(disk, 20.0, 0.05), (n, DET, DET))
    dtype, depth = MODES[mode]
    return (frames > 0).astype(dtype) if depth == 1 else np.minimum(frames, 4095).astype(dtype)


def _serve(mode: str, scan_y: int, rate: float, ports: Any, results: Any, merlin_format: str | None = None) -> None:
    """Child process: serve the repeated scan at ``rate`` to the first receiver; report what was sent."""
    from stempress.live.serve import serve

    depth = MODES[mode][1]
    source = RepeatedFrames(base_frames(mode), scan_y, depth)
    log = serve(source, "merlin", rate=rate, timeout=120, ready=ports.put, merlin_format=merlin_format)
    results.put((log.sent, log.frames, log.seconds, log.ended))


@dataclass
class Step:
    rate: float
    frames: int
    missing: int
    send_seconds: float
    wall: float
    status: str

    @property
    def kept_pace(self) -> bool:
        return self.send_seconds <= TOLERANCE * self.frames / self.rate + 0.1

    @property
    def passed(self) -> bool:
        return self.missing == 0 and self.kept_pace and self.status == "ok"

    def line(self) -> str:
        return (f"  {self.rate:>9,.0f} frames/s x {self.frames:>8,} frames: missing {self.missing}, sent in "
                f"{self.send_seconds:6.1f} s (schedule {self.frames / self.rate:6.1f} s, "
                f"{self.frames / max(self.send_seconds, 1e-9):>9,.0f}/s) -> "
                + ("PASS" if self.passed else f"FAIL ({self.status if self.status != 'ok' else 'behind schedule'})"))


def run_step(mode: str, rate: float, hold: float, workdir: Path, workers: int | None, codec: str | None = None,
             merlin_format: str | None = None) -> Step:
    scan_y = max(2, math.ceil(rate * hold / SCAN_X))
    ctx = mp.get_context("spawn")
    ports, results = ctx.Queue(), ctx.Queue()
    sender = ctx.Process(target=_serve, args=(mode, scan_y, rate, ports, results, merlin_format), daemon=True)
    sender.start()
    port = ports.get(timeout=120)
    out = workdir / f"{mode}-{rate:.0f}"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "stempress", "live", f"merlin://127.0.0.1:{port}", "--scan-shape",
               f"{scan_y}x{SCAN_X}", "--archive", str(out / "a.h5"), *(["--codec", codec] if codec else []),
               *[a for t in TARGETS for a in ("--reduce", t)], "--reduced", str(out / "r.h5"),
               "--centre", f"{(DET - 1) / 2},{(DET - 1) / 2}", "--bf-radius", "30", "--timeout", "10",
               "--allow-missing", "--force", *(["--workers", str(workers)] if workers else [])]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=hold * 10 + 300)
    wall = time.monotonic() - started
    try:
        sent, frames, seconds, ended = results.get(timeout=60)
    except Exception:
        sent, frames, seconds, ended = 0, scan_y * SCAN_X, float("inf"), "the sender reported nothing"
    sender.join(30)
    shutil.rmtree(out, ignore_errors=True)
    found = re.search(r"frames: expected (\d+), received (\d+), missing (\d+)", done.stdout)
    status = "ok"
    if done.returncode != 0 or found is None:
        status = f"live exited {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:160]}"
    elif ended != "complete" or sent < frames:
        status = f"sender: {ended}"
    missing = int(found.group(3)) if found else scan_y * SCAN_X
    return Step(rate, scan_y * SCAN_X, missing, seconds, wall, status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each rate is held (default 60)")
    parser.add_argument("--start", type=float, default=500.0, help="first rate, frames/s")
    parser.add_argument("--factor", type=float, default=1.5, help="each step's rate over the last one's")
    parser.add_argument("--max-rate", type=float, default=100_000.0, help="stop stepping up here")
    parser.add_argument("--modes", default="12bit,1bit", help="12bit and/or 1bit, separated by commas")
    parser.add_argument("--workers", type=int, default=None, help="live --workers (default: all usable cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the outputs go (deleted after each step)")
    parser.add_argument("--codec", default=None, help="archive codec (default: live's own, blosc_zstd for 12-bit, "
                        "blosc_lz4_bitshuffle for 1-bit)")
    parser.add_argument("--merlin-format", choices=("binary", "raw"), default="binary",
                        help="frames as Merlin's binary (U08/U16) or raw (R64: 1-bit packed) format")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="live-throughput-", dir=args.workdir))
    best: dict[str, float | None] = {}
    try:
        for mode in args.modes.split(","):
            codec = args.codec or ("blosc_lz4_bitshuffle (1-bit default)" if mode == "1bit" else "blosc_zstd")
            print(f"Merlin {DET}x{DET} {mode} ({args.merlin_format}), default reducers + {codec} archive, hold "
                  f"{args.hold:g} s:", flush=True)
            rate, best[mode] = args.start, None
            while rate <= args.max_rate:
                step = run_step(mode, rate, args.hold, workdir, args.workers, args.codec, args.merlin_format)
                print(step.line(), flush=True)
                if not step.passed:
                    break
                best[mode] = rate
                rate *= args.factor
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"highest rate held {args.hold:g} s with zero loss ({mp.cpu_count()} cores, sender on the same machine):")
    for mode, rate in best.items():
        print(f"  {mode}: " + (f"{rate:,.0f} frames/s" if rate else f"none (below {args.start:,.0f} frames/s)"))


if __name__ == "__main__":
    main()
