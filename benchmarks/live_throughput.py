"""The highest frame rate ``stempress live`` takes from ``stempress serve`` with zero loss, on this machine, and
with ``--libertem-live PYTHON`` LiberTEM-live's beside it on the same stream.

    python benchmarks/live_throughput.py                      # hold each rate 60 s (the issue's protocol)
    python benchmarks/live_throughput.py --hold 5 --start 500  # a quick look
    python benchmarks/live_throughput.py --libertem-live /work/venvs/peers/bin/python --modes 12bit,dectris

For each mode (Merlin 256x256 12-bit, uint16, with the default reducers (BF, ADF, HAADF, CoM, mean pattern) and a
blosc_zstd archive; Merlin 256x256 1-bit, sent as Merlin's binary format does: one byte per pixel, counter depth 1,
or with ``--merlin-format raw`` bit-packed (8 KiB a frame), same reducers, the archive in ``stempress live``'s
default for a 1-bit stream, blosc_lz4_bitshuffle; DECTRIS 96x96 uint16, bitshuffle-LZ4 (``bs16-lz4<``) as ARINA
sends it, the same reducers and, as issue #14 names it, the electrons as entropy-coded events (``--events E.h5
--event-format entropy``: the frames are counts already, so nothing is thresholded; on a stream the entropy model is
fitted on the first scan rows and the events coded chunk by chunk as their rows arrive, so only the last chunk is
left when the scan ends; what is left counts in the results' lag below) instead of an archive; ``--codec`` names the
archive's codec of the Merlin modes) the rate starts at ``--start`` frames/s and grows by ``--factor`` until a step
fails. A step runs ``serve`` (in a process of its own, replaying a few Poisson frames over a scan of ``rate * hold``
positions, so the sender reads nothing from disk) and the real ``stempress live`` command (a subprocess) for
``--hold`` seconds. A step passes when the receiver reports 0 frames missing AND the sender kept its schedule (sent
everything within ``TOLERANCE`` of ``frames / rate``): over TCP nothing is lost, a receiver that falls behind holds
the sender back instead, which a real detector would not wait for; AND the receiver had every result at most
``LAG_SECONDS`` (or ``LAG_FRACTION`` of the hold) later after the last frame went out than at the first step (its
fixed finishing work), since buffers hide a slow receiver for a while (ZeroMQ queues ``RECEIVE_HWM`` messages at
each end; LiberTEM-live receives into shared memory, 2 GiB for DECTRIS). Our results count as there when ``stempress
live`` has exited (its final writes and teardown included), LiberTEM-live's when its script has saved them.

With ``--libertem-live PYTHON`` (a python of the peer venv of ``benchmarks/requirements-external.txt``, without
stempress) both tools do the same work on the same stream: ``stempress live --reduce mean_pattern --reduce com``
(no archive) and, in that venv, ``benchmarks/libertem_live_receive.py``: ``LiveContext``,
``ctx.make_connection(...).open(...)``, ``ctx.make_acquisition(...)``, ``ctx.run_udf(..., [SumUDF(), CoMUDF])``
as LiberTEM-live's users write it, the CoM centred on our centre over our CoM mask (the same pixels under its rule
``r <= R``). First a short scan goes to each tool at full speed and their sum patterns and CoM shifts must agree
(``RTOL`` of the scale; LiberTEM computes in float32; Merlin frames are flipped along det_y between the two, as
``benchmarks/check_live_interop.py`` says); only then is each stepped up as above, and the highest rate each held
is printed with ours/theirs. LiberTEM-live's context starts before it connects, so its start-up is not on the
sender's clock (ours neither); what it does between connecting and its first frame is, as for ours.

Sender and receiver share this machine's cores: on a small or busy machine the sender's own work lowers the numbers.
Each step also prints the cores the machine kept busy while it ran (``/proc/stat``, the median of 1-s samples) and
that over the rate: the CPU per frame of sender and receiver together. A step that fails with the cores nearly all
busy is bound by the machine; one that fails with a core's worth idle is bound by something else (a lock, a queue).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
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
#: A step passes only if the sender needed at most this much longer than ``frames / rate``...
TOLERANCE = 1.02
#: ... and the receiver had every result at most this much later after the last frame went out than at the first
#: step: seconds, or this fraction of the hold if longer (buffers absorb what a receiver cannot process for a while).
LAG_SECONDS, LAG_FRACTION = 2.0, 0.05
TARGETS = ["bf", "adf", "haadf", "com", "mean_pattern"]  # reduce.imaging.default_reducers, by name
#: What both tools compute when compared: LiberTEM's SumUDF and CoMUDF, our mean pattern (times the frames) and CoM.
SUM_COM = ["mean_pattern", "com"]
#: Sum patterns agree to this fraction of their maximum; CoM shifts to this many pixels (float32 against float64).
RTOL, COM_ATOL = 1e-6, 1e-3
#: Scan rows of the equality check (at full speed, before any rate is timed).
CHECK_ROWS = 4
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Mode:
    """One stream: detector protocol, square detector side, pixel type, counter depth, DECTRIS encoding."""

    protocol: str
    det: int
    dtype: type
    depth: int
    encoding: str = "bs16-lz4<"
    #: what is written besides the reducers: "archive" (the frames compressed) or "events" (entropy-coded events)
    written: str = "archive"

    @property
    def disk(self) -> float:
        """The bright disk's radius in pixels (30 on 256 pixels), also the receivers' BF radius."""
        return 30.0 * self.det / DET

    @property
    def centre(self) -> float:
        return (self.det - 1) / 2

    def describe(self) -> str:
        kind = "Merlin" if self.protocol == "merlin" else f"DECTRIS {self.encoding}"
        return f"{kind} {self.det}x{self.det} {self.depth}-bit {np.dtype(self.dtype).name}"


MODES = {"12bit": Mode("merlin", DET, np.uint16, 12), "1bit": Mode("merlin", DET, np.uint8, 1),
         "dectris": Mode("dectris", 96, np.uint16, 16, written="events")}


class RepeatedFrames:
    """A ``Dataset4D`` of ``scan_y x SCAN_X`` positions whose frames cycle through a few stored ones: the sender
    replays a long scan at full rate without reading or generating data."""

    def __init__(self, base: np.ndarray, scan_y: int, depth: int) -> None:
        self.base = base
        self.shape = (scan_y, SCAN_X, *base.shape[1:])
        self.dtype = base.dtype
        self.name = f"repeated-{scan_y}x{SCAN_X}"
        self.metadata: dict[str, Any] = {"counter_depth": depth}
        self.last_row_read = math.nan  # time.monotonic() when the sender took the last scan row

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if stop == self.shape[0]:
            self.last_row_read = time.monotonic()
        if stop - start == 1 and self.base.shape[0] == SCAN_X:  # one row (as serve reads): the frames, no copy
            return self.base[None]
        index = (np.arange(start * SCAN_X, stop * SCAN_X) % self.base.shape[0])
        return self.base[index].reshape(stop - start, SCAN_X, *self.base.shape[1:])

    def close(self) -> None:
        """Nothing held."""


def base_frames(mode: str, n: int = BASE_FRAMES) -> np.ndarray:
    """``n`` Poisson frames with a bright disk (counts clipped to the counter depth), or their 1-bit hits (0/1)."""
    m = MODES[mode]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:m.det, :m.det]
    disk = (yy - m.det / 2) ** 2 + (xx - m.det / 2) ** 2 < m.disk**2
    frames = rng.poisson(np.where(disk, 20.0, 0.05), (n, m.det, m.det))
    return (frames > 0).astype(m.dtype) if m.depth == 1 else np.minimum(frames, 2**m.depth - 1).astype(m.dtype)


def _serve(mode: str, scan_y: int, rate: float, ports: Any, results: Any, api: bool,
           merlin_format: str | None = None) -> None:
    """Child process: serve the repeated scan at ``rate`` to the first receiver; report what was sent. With
    ``api`` the detector's control interface answers too (LiberTEM-live asks it), its port told first."""
    from stempress.live.serve import serve

    m = MODES[mode]
    source = RepeatedFrames(base_frames(mode), scan_y, m.depth)
    log = serve(source, m.protocol, rate=rate, timeout=120, ready=ports.put, encoding=m.encoding,
                api_port=0 if api else None, api_ready=ports.put if api else None, merlin_format=merlin_format)
    last_send = source.last_row_read + ((SCAN_X - 1) / rate if rate > 0 else 0.0)  # its frames go at the rate
    results.put((log.sent, log.frames, log.seconds, log.ended, last_send))


@dataclass
class Step:
    rate: float
    frames: int
    missing: int
    send_seconds: float
    wall: float
    status: str
    lag: float  # seconds from the last frame sent to the receiver having every result
    hold: float
    first_lag: float | None = None  # the same at the tool's first step: its fixed finishing work
    busy: float | None = None  # cores the machine kept busy while the step ran (median of 1-s samples)

    @property
    def late(self) -> float:
        return self.lag - (self.lag if self.first_lag is None else self.first_lag)

    @property
    def kept_pace(self) -> bool:
        return self.rate <= 0 or self.send_seconds <= TOLERANCE * self.frames / self.rate + 0.1

    @property
    def kept_up(self) -> bool:
        return self.late <= max(LAG_SECONDS, LAG_FRACTION * self.hold)

    @property
    def passed(self) -> bool:
        return self.missing == 0 and self.kept_pace and self.kept_up and self.status == "ok"

    def why(self) -> str:
        if self.status != "ok":
            return self.status
        return "behind schedule" if not self.kept_pace else "results late" if not self.kept_up else "frames missing"

    def line(self) -> str:
        return (f"  {self.rate:>9,.0f} frames/s x {self.frames:>8,} frames: missing {self.missing}, sent in "
                f"{self.send_seconds:6.1f} s (schedule {self.frames / self.rate:6.1f} s, "
                f"{self.frames / max(self.send_seconds, 1e-9):>9,.0f}/s), results {self.lag:4.1f} s after "
                f"({self.late:+4.1f} s on the first step), "
                + (f"{self.busy:.2f} cores busy ({1e6 * self.busy * self.send_seconds / self.frames:,.0f} us CPU per "
                   "frame sent) " if self.busy and self.rate > 0 else "") + "-> "
                + ("PASS" if self.passed else f"FAIL ({self.why()})"))


class BusyCores:
    """Cores the whole machine keeps busy (``/proc/stat``: every process, the sender's and the receiver's included),
    sampled each second while a step runs; the median is the steady state, the start-up seconds of the receiver
    (imports) and its last writes being a few of the samples. Divided by the rate it is the CPU each frame costs
    sender and receiver together, what decides whether a higher rate can fit the machine's cores."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _jiffies() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None  # not Linux: no figure
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle + iowait

    def _sample(self) -> None:
        last, tick = self._jiffies(), time.monotonic()
        while last is not None and not self._stop.wait(self.every):
            now, at = self._jiffies(), time.monotonic()
            if now is None:
                return
            busy = (now[0] - last[0]) - (now[1] - last[1])
            self.samples.append(busy / (os.sysconf("SC_CLK_TCK") * (at - tick)))
            last, tick = now, at

    def __enter__(self) -> BusyCores:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:200]


class Stempress:
    """The real ``stempress live`` command; ``outputs`` 'default' (the default reducers + the mode's ``written``:
    an archive in ``codec``, None: live's own default, or entropy-coded events) or 'sum-com' (the mean pattern and
    the CoM only: LiberTEM's SumUDF and CoMUDF)."""

    name = "stempress"
    api = False

    def __init__(self, outputs: str = "default", workers: int | None = None, codec: str | None = None) -> None:
        self.outputs, self.workers, self.codec = outputs, workers, codec

    def command(self, mode: str, ports: tuple[int, int | None], scan_y: int, out: Path) -> list[str]:
        m = MODES[mode]
        targets = TARGETS if self.outputs == "default" else SUM_COM
        archive = ["--archive", str(out / "a.h5"), *(["--codec", self.codec] if self.codec else [])]
        events = ["--events", str(out / "e.h5"), "--event-format", "entropy"]
        written = (archive if m.written == "archive" else events) if self.outputs == "default" else []
        work = [*written, *[a for t in targets for a in ("--reduce", t)]]
        return [sys.executable, "-m", "stempress", "live", f"{m.protocol}://127.0.0.1:{ports[0]}", "--scan-shape",
                f"{scan_y}x{SCAN_X}", *work, "--reduced", str(out / "r.h5"), "--centre", f"{m.centre},{m.centre}",
                "--bf-radius", f"{m.disk:g}", "--timeout", "10", "--allow-missing", "--force",
                *(["--workers", str(self.workers)] if self.workers else [])]

    def outcome(self, done: subprocess.CompletedProcess, frames: int, exited: float) -> tuple[int, str, float]:
        """(frames missing, 'ok' or what went wrong, when every result was there: the command's exit, so its
        final writes and interpreter teardown count against it)."""
        found = re.search(r"frames: expected (\d+), received (\d+), missing (\d+)", done.stdout)
        if done.returncode != 0 or found is None:
            return frames, f"live exited {done.returncode}: {_last_line(done.stderr)[:160]}", exited
        return int(found.group(3)), "ok", exited

    def results(self, mode: str, out: Path) -> dict[str, np.ndarray]:
        """Sum pattern and CoM shifts, in our frames' orientation."""
        from stempress.reduce.output import read_reduced

        got, _ = read_reduced(out / "r.h5")
        mean, com = got["mean_pattern"], got["com"]
        frames = int(np.count_nonzero(np.isfinite(com["com_y"])))
        return {"sum": mean["mean"] * frames, "com_y": com["com_y"], "com_x": com["com_x"]}


class LiberTEMLive:
    """``benchmarks/libertem_live_receive.py`` in the peer venv: LiveContext + SumUDF + CoMUDF, passive mode."""

    api = True

    def __init__(self, python: Path) -> None:
        self.python = python
        self.name = "LiberTEM-live"
        self.versions: dict[str, str] = {}

    @staticmethod
    def flipped(mode: str) -> bool:
        """LiberTEM shows Merlin frames in the order a .mib stores their rows, stempress flipped along det_y."""
        return MODES[mode].protocol == "merlin"

    def com_geometry(self, mode: str) -> tuple[float, float, float]:
        """Our CoM's centre and mask, in LiberTEM's frame orientation and radius rule (``r <= R``; ours ``r < R``):
        the radius halfway between our farthest included and nearest excluded pixel selects the same pixels."""
        from stempress.data.calibration import radius_map
        from stempress.reduce import Calibration, CenterOfMass

        m = MODES[mode]
        cal = Calibration(centre_y=m.centre, centre_x=m.centre, bf_radius_px=m.disk, det_shape=(m.det, m.det))
        context = CenterOfMass().prepare((1, 1, m.det, m.det), np.dtype(m.dtype), cal)
        mask = context["weights"][:, 0].reshape(m.det, m.det).astype(bool)
        r = radius_map((m.det, m.det), cal)
        radius = float((r[mask].max() + r[~mask].min()) / 2) if not mask.all() else float(r.max() + 1)
        cy = m.det - 1 - m.centre if self.flipped(mode) else m.centre
        return cy, m.centre, radius

    def command(self, mode: str, ports: tuple[int, int | None], scan_y: int, out: Path) -> list[str]:
        cy, cx, r = self.com_geometry(mode)
        job = {"protocol": MODES[mode].protocol, "host": "127.0.0.1", "data_port": ports[0], "api_port": ports[1],
               "nav_shape": [scan_y, SCAN_X], "cy": cy, "cx": cx, "r": r, "out": str(out / "theirs.npz")}
        return [str(self.python), "-I", str(HERE / "libertem_live_receive.py"), json.dumps(job)]

    def outcome(self, done: subprocess.CompletedProcess, frames: int, exited: float) -> tuple[int, str, float]:
        """(frames missing, 'ok' or what went wrong, when its results were saved: before its context shuts down)."""
        try:
            said = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return frames, f"LiberTEM-live exited {done.returncode}: {_last_line(done.stderr)[:160]}", exited
        self.versions = said["versions"]
        return 0, "ok", float(said["saved_at"])  # run_udf returned: every position was processed

    def results(self, mode: str, out: Path) -> dict[str, np.ndarray]:
        """Sum pattern and CoM shifts turned into our frames' orientation."""
        got = np.load(out / "theirs.npz")
        total, shifts = got["sum"].astype(np.float64), got["shifts"].astype(np.float64)
        sign = -1.0 if self.flipped(mode) else 1.0
        return {"sum": total[::-1] if self.flipped(mode) else total, "com_y": sign * shifts[..., 0],
                "com_x": shifts[..., 1]}


Receiver = Stempress | LiberTEMLive


def run_step(mode: str, rate: float, hold: float, workdir: Path, receiver: Receiver,
             scan_y: int | None = None, keep: bool = False, merlin_format: str | None = None) -> tuple[Step, Path]:
    """One step: ``serve`` at ``rate`` (0: as fast as the receiver takes) and ``receiver`` on it, Merlin frames in
    ``merlin_format``. Returns the step and its output folder (deleted unless ``keep``)."""
    scan_y = scan_y or max(2, math.ceil(rate * hold / SCAN_X))
    ctx = mp.get_context("spawn")
    ports, results = ctx.Queue(), ctx.Queue()
    sender = ctx.Process(target=_serve, args=(mode, scan_y, rate, ports, results, receiver.api,
                                                      merlin_format), daemon=True)
    sender.start()
    api_port = ports.get(timeout=120) if receiver.api else None
    port = ports.get(timeout=120)
    out = workdir / f"{mode}-{receiver.name}-{rate:.0f}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with BusyCores() as busy:
        done = subprocess.run(receiver.command(mode, (port, api_port), scan_y, out), capture_output=True,
                              text=True, timeout=hold * 10 + 300)
    exited = time.monotonic()
    try:
        sent, frames, seconds, ended, last_send = results.get(timeout=60)
    except Exception:
        sent, frames, seconds, ended, last_send = 0, scan_y * SCAN_X, math.inf, "the sender reported nothing", 0.0
    sender.join(30)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    missing, status, finished = receiver.outcome(done, scan_y * SCAN_X, exited)
    if status == "ok" and (ended != "complete" or sent < frames):
        status = f"sender: {ended}"
    return Step(rate, scan_y * SCAN_X, missing, seconds, exited - started, status, max(0.0, finished - last_send),
                hold, busy=busy.median), out


def check_equal(mode: str, tools: list[Receiver], workdir: Path, merlin_format: str | None = None) -> bool:
    """Every tool receives the same short scan at full speed; their sums and CoM shifts must agree."""
    got = {}
    for tool in tools:
        step, out = run_step(mode, 0.0, 0.0, workdir, tool, scan_y=CHECK_ROWS, keep=True, merlin_format=merlin_format)
        if step.status != "ok" or step.missing:
            print(f"  check: {tool.name} did not receive the check scan: {step.status}, missing {step.missing}")
            return False
        got[tool.name] = tool.results(mode, out)
        shutil.rmtree(out, ignore_errors=True)
    (a_name, a), (b_name, b) = list(got.items())[:2]
    scale = max(float(np.abs(a["sum"]).max()), 1.0)
    d_sum = float(np.abs(a["sum"] - b["sum"]).max()) / scale
    d_com = max(float(np.abs(a[k] - b[k]).max()) for k in ("com_y", "com_x"))
    same = d_sum <= RTOL and d_com <= COM_ATOL and a["sum"].shape == b["sum"].shape
    print(f"  check ({CHECK_ROWS}x{SCAN_X} frames at full speed): {a_name} vs {b_name}: sum pattern differs by "
          f"{d_sum:.1e} of its maximum (<= {RTOL:g}), CoM by {d_com:.1e} px (<= {COM_ATOL:g}) -> "
          + ("EQUAL" if same else "DIFFERENT"), flush=True)
    return same


def step_up(mode: str, receiver: Receiver, args: argparse.Namespace, workdir: Path) -> float | None:
    """Raise the rate by ``--factor`` from ``--start`` until a step fails; the highest rate that passed."""
    rate, best, first_lag = args.start, None, None
    while rate <= args.max_rate:
        step, _ = run_step(mode, rate, args.hold, workdir, receiver, merlin_format=args.merlin_format)
        step.first_lag = first_lag = step.lag if first_lag is None else first_lag
        print(f"  {receiver.name:<13}" + step.line()[2:], flush=True)
        if not step.passed:
            break
        best = rate
        rate *= args.factor
    return best


def _rate(rate: float | None, start: float) -> str:
    return f"{rate:,.0f} frames/s" if rate else f"none (below {start:,.0f} frames/s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each rate is held (default 60)")
    parser.add_argument("--start", type=float, default=500.0, help="first rate, frames/s")
    parser.add_argument("--factor", type=float, default=1.5, help="each step's rate over the last one's")
    parser.add_argument("--max-rate", type=float, default=100_000.0, help="stop stepping up here")
    parser.add_argument("--modes", default=None, help=f"of {', '.join(MODES)}, separated by commas (default: "
                        "12bit,1bit; with --libertem-live 12bit,dectris)")
    parser.add_argument("--workers", type=int, default=None, help="live --workers (default: all usable cores)")
    parser.add_argument("--libertem-live", type=Path, default=None, metavar="PYTHON",
                        help="the peer venv's python: compare with LiberTEM-live (SumUDF + CoMUDF) on each stream")
    parser.add_argument("--workdir", type=Path, default=None, help="where the outputs go (deleted after each step)")
    parser.add_argument("--codec", default=None, help="archive codec of the Merlin modes (default: live's own, "
                        "blosc_zstd for 12-bit, blosc_lz4_bitshuffle for 1-bit)")
    parser.add_argument("--merlin-format", choices=("binary", "raw"), default="binary",
                        help="frames as Merlin's binary (U08/U16) or raw (R64: 1-bit packed) format")
    args = parser.parse_args()
    modes = (args.modes or ("12bit,dectris" if args.libertem_live else "12bit,1bit")).split(",")
    theirs = LiberTEMLive(args.libertem_live) if args.libertem_live else None
    ours = Stempress("sum-com" if theirs else "default", args.workers, args.codec)
    work = "sum + CoM (no archive, no events)" if theirs else "default reducers + {written}"
    workdir = Path(tempfile.mkdtemp(prefix="live-throughput-", dir=args.workdir))
    load = os.getloadavg()
    best: dict[str, dict[str, float | None]] = {}
    try:
        for mode in modes:
            form = f" ({args.merlin_format})" if MODES[mode].protocol == "merlin" else ""
            codec = args.codec or ("blosc_lz4_bitshuffle (1-bit default)" if mode == "1bit" else "blosc_zstd")
            written = f"{codec} archive" if MODES[mode].written == "archive" else "entropy-coded events"
            print(f"{MODES[mode].describe()}{form}, {work.format(written=written)}, hold {args.hold:g} s:", flush=True)
            if theirs and not check_equal(mode, [ours, theirs], workdir, args.merlin_format):
                print("the results differ: no rates are timed for this mode")
                return 1
            best[mode] = {tool.name: step_up(mode, tool, args, workdir) for tool in ([ours, theirs] if theirs
                                                                                     else [ours])}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    after = os.getloadavg()
    print(f"highest rate held {args.hold:g} s with zero loss ({mp.cpu_count()} cores, sender on the same machine; "
          f"load average {load[0]:.2f} at the start, {after[0]:.2f} at the end):")
    for mode, rates in best.items():
        if theirs:
            a, b = rates[ours.name], rates[theirs.name]
            ratio = f"{a / b:.2f}" if a and b else "n/a"
            print(f"  {MODES[mode].describe()}: stempress {_rate(a, args.start)}, LiberTEM-live "
                  f"{_rate(b, args.start)}: ours/theirs {ratio}")
        else:
            print(f"  {mode}: {_rate(rates[ours.name], args.start)}")
    if theirs and theirs.versions:
        print("peer venv:", ", ".join(f"{p} {v}" for p, v in theirs.versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
