"""CPU time per frame, stage by stage, of ``stempress live``'s receive path (Merlin 256x256, 12-bit and 1-bit).

    python benchmarks/live_cpu_profile.py                 # both modes, 48 scan rows of 256 frames each
    python benchmarks/live_cpu_profile.py --rows 32 --modes 1bit --codec blosc_zstd
    python benchmarks/live_cpu_profile.py --sum-com       # what live_throughput.py --libertem-live compares
    python benchmarks/live_cpu_profile.py --sender        # the sender alone (serve --as merlin), to a draining client
    python benchmarks/live_cpu_profile.py --codec-table   # archive codecs on these frames: encode CPU and ratio

A sender process replays pre-built Merlin records over localhost as fast as TCP takes them (its own CPU is not
counted); this process receives them with ``acquire.receive`` (as ``stempress live`` does: default reducers into a
reduced file, the archive in the stream's default codec (blosc_zstd; blosc_lz4_bitshuffle for 1-bit) unless
``--codec``, one worker; the receive itself runs in ``live``'s receiving process, whose CPU per frame, sent back at
the end, is printed below the table: ``--thread`` runs it in a thread here instead, its stages timed one by one).
Each stage is timed with
``time.thread_time`` (CPU of the thread that runs it, not wall time, so a waiting thread does not inflate it; a
loaded machine still does, through contended caches and memory). The first ``--warmup-rows`` are received but not
counted: the row assembler's first slabs are fresh memory whose first touch (page faults) costs more than the copy
into it, a cost of the scan's first three slabs only (of 16 in a 256x256 scan). Prints microseconds of CPU per
frame per stage, the process's total CPU per frame, its page faults per frame (fresh memory touched) and the
frames/s one core could take at that cost.

Measured 2026-12-07 05:35-05:40 UTC (2 cores, LOADED: other helpers' tests running, load average 3-5, so CPU
times inflate; compare runs taken in turn), before = 7a3abd9 (a message at a time), after = the bulk Merlin receive
(frames received many per call into reused slots, headers checked at once, one event per batch, placed a row's
part at a time), two runs each: default reducers + archive, 12-bit 807/823 -> 762/758 us/frame (blosc_zstd's
encode 533-558 of it), of which the receive path (socket read through row assembly) 148/147 -> 88/86; 1-bit
226/208 -> 193/193, receive path 54/46 -> 25/26 (raw 1-bit: 42 -> 17); --sum-com, 12-bit 243/282 -> 159/174,
1-bit 184/201 -> 93/119; --sender (serve's own CPU, frames already due sent in one sendmsg): 12-bit 131/121 ->
98/109, 1-bit 51/79 -> 52/45, pushing 4,600-5,500 12-bit frames/s to a draining client either way (so at
load 3 the sender alone does not cap live_throughput.py's comparison near 3,000). Earlier (before = 50b3448):
12-bit 841 -> 774, 1-bit binary 628 -> 218 (the archive's 1-bit default, blosc_lz4_bitshuffle: encode 475 -> 62),
1-bit raw 653 -> 203. With --warmup-rows 0 the first two slabs' page faults add ~230 (12-bit) / ~50-70 (1-bit) us
per frame over the first 32 rows.

Receiving process (2026-12-07 08:47 UTC, 2 cores, load ~2.6, one run each, main = 9f4ee9f): 1-bit, this process
159.5 -> 124.6 us/frame (the socket read, framing and hand-over, ~17 here, leave it), the receiving process 36.7
(its wake-ups and messages cost more than the thread's receive: it keeps up and so takes fewer frames per call),
both together about the same as before (161 vs 160).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import resource
import socket
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_throughput import DET, SCAN_X, SUM_COM, TARGETS, base_frames

MODES = {"12bit": 12, "1bit": 1}
STAGES: dict[str, float] = defaultdict(float)
CODECS: dict[str, str] = {}
FAULTS: dict[str, float] = {}  # page faults per frame after the warm-up (fresh memory touched)
CHILD: dict[str, tuple[float, float] | None] = {}  # the receiving process's CPU per frame (``receiver_cpu``)
THREAD: dict[str, bool] = {}  # open_live's options: {"thread": True} with --thread
TABLE_CODECS = ("blosc_zstd,blosc_lz4,blosc_lz4_bitshuffle,blosc_zstd_bitshuffle,blosc_blosclz_bitshuffle,"
                "bitshuffle_lz4,bitshuffle_zstd,blosc2_lz4_bitshuffle,blosc2_zstd_bitshuffle,zstd_1")


def _sender(mode: str, n_frames: int, ports: Any, raw: bool = False) -> None:
    """Child: serve ``n_frames`` Merlin records (cycling a few frames; ``raw``: Merlin's R64 format, 1-bit packed)
    to the first client, then close."""
    from stempress.data.mib import encode_frame
    from stempress.live.merlin import acquisition_header, mpx_message

    depth = MODES[mode]
    base = base_frames(mode)
    records = [encode_frame(1, f, counter_depth=depth, raw=raw) for f in base]
    server = socket.create_server(("127.0.0.1", 0))
    ports.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.sendall(mpx_message(acquisition_header(n_frames, SCAN_X, depth)))
    for i in range(n_frames):
        record = records[i % len(records)]
        conn.sendall(mpx_message(b"MQ1,%06d" % (i + 1) + record[10:]))
    conn.close()
    server.close()


def spawn_sender(target: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``target(*args, ports, **kwargs)`` in a fresh process (its CPU is not this one's), and the port it listens on."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    sender = ctx.Process(target=target, args=(*args, ports), kwargs=kwargs, daemon=True)
    sender.start()
    return sender, ports.get(timeout=120)


def page_faults() -> int:
    """This process's page faults so far (minor and major)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def _serve_alone(mode: str, rows: int, results: Any) -> None:
    """Child: ``stempress serve``'s Merlin sender at full speed (live_throughput.py's repeated frames) to the first
    client; reports its own CPU (user, system) and frames sent."""
    from live_throughput import MODES as STREAMS
    from live_throughput import RepeatedFrames
    from stempress.live.serve import serve

    source = RepeatedFrames(base_frames(mode), rows, STREAMS[mode].depth)
    before = resource.getrusage(resource.RUSAGE_SELF)
    log = serve(source, "merlin", rate=0, timeout=60, ready=results.put)
    after = resource.getrusage(resource.RUSAGE_SELF)
    results.put((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, log.sent, log.seconds))


def sender_alone(modes: list[str], rows: int) -> None:
    """What the sender of live_throughput.py costs, to a client that only drains the socket: if it cannot push much
    more than a receiver takes, both tools of the comparison top out at the sender, not at themselves."""
    for mode in modes:
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        sender = ctx.Process(target=_serve_alone, args=(mode, rows, results), daemon=True)
        sender.start()
        buffer = bytearray(1 << 20)
        with socket.create_connection(("127.0.0.1", results.get(timeout=120))) as conn:
            while conn.recv_into(buffer):
                pass
        user, system, sent, seconds = results.get(timeout=60)
        sender.join(30)
        print(f"{mode}: serve --as merlin alone, {sent} frames: CPU {1e6 * (user + system) / sent:.1f} us/frame "
              f"(user {1e6 * user / sent:.1f}, system {1e6 * system / sent:.1f}), {sent / seconds:,.0f} frames/s "
              "to a client that only drains the socket")


def timed(name: str, fn: Any) -> Any:
    """``fn`` with its thread's CPU time added to ``STAGES[name]``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            STAGES[name] += time.thread_time() - t0
    return wrapper


def timed_iter(name: str, fn: Any) -> Any:
    """A generator function whose own steps (not its consumer's) are timed."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        it = iter(fn(*args, **kwargs))
        while True:
            t0 = time.thread_time()
            try:
                item = next(it)
            except StopIteration:
                STAGES[name] += time.thread_time() - t0
                return
            STAGES[name] += time.thread_time() - t0
            yield item
    return wrapper


def instrument() -> None:
    """Wrap each stage of the receive path (the patched names are the ones the callers look up)."""
    from stempress.codecs import parallel
    from stempress.data import stream
    from stempress.live import accounting, merlin
    from stempress.sinks import archive, reduce

    reader = merlin.MerlinReader
    bulk = hasattr(reader, "_receive")  # the bulk path (an older reader read every message with _message)
    for name, stage in (("_receive" if bulk else "_message", "socket read + MPX framing"),
                        *([("_exactly", "socket read + MPX framing"), ("_framed", "MQ1 header parse"),
                           ("_frames", "frame decode")] if bulk else []), ("_same_format", "MQ1 header parse")):
        setattr(reader, name, timed(stage, getattr(reader, name)))
    merlin.parse_frame_header = timed("MQ1 header parse", merlin.parse_frame_header)
    merlin.decode_frame = timed("frame decode", merlin.decode_frame)
    instrument_ring()
    accounting.RowAssembler.add = timed("accounting + row assembly", accounting.RowAssembler.add)
    if hasattr(accounting.RowAssembler, "add_run"):
        accounting.RowAssembler.add_run = timed("accounting + row assembly", accounting.RowAssembler.add_run)
    stream.join = timed("regroup/join rows into chunk rows", stream.join)
    reduce.ReducerSink.consume = timed("reducers", reduce.ReducerSink.consume)
    parallel.ChunkEncoder.__call__ = timed("archive encode", parallel.ChunkEncoder.__call__)
    archive.ArchiveSink._store = timed("archive write (HDF5 direct chunk)", archive.ArchiveSink._store)


def instrument_ring() -> None:
    """The hand-over between receiver and engine: the ring's events taken by the parent (``pump.Receiver.get``; the
    receive stages above it run in the receiving process, timed only with ``--thread``), or, before the ring, the
    byte queue's put and get."""
    from stempress.live import receiver

    try:
        from stempress.live import pump

        pump.Receiver.get = timed("ring get (parent)", pump.Receiver.get)
    except ImportError:
        receiver.ByteQueue.put = timed("queue put", receiver.ByteQueue.put)
        receiver.ByteQueue.get = timed("queue get", receiver.ByteQueue.get)


def receiver_cpu(source: Any, frames: int) -> tuple[float, float] | None:
    """The receiving process's CPU seconds per frame over the whole stream (warm-up included): its pump thread's
    and the whole process's (ZeroMQ's I/O thread too), as it sent them at the end; None for a receiver in this
    process (its stages are in the table)."""
    cpu = getattr(getattr(source, "receiver", None), "cpu", None)
    if not cpu or getattr(source.receiver, "pid", None) is None:
        return None
    return cpu["thread_s"] / frames, cpu["process_s"] / frames


class Warmup:
    """A progress callback that, once ``rows`` scan rows are through every sink, takes the stage times, the process
    CPU and the frames done so far, so they can be subtracted (the steady state without the cold start)."""

    def __init__(self, rows: int, frame_bytes: int) -> None:
        self.bytes, self.frame_bytes = rows * SCAN_X * frame_bytes, frame_bytes
        self.stages: dict[str, float] = {}
        self.cpu, self.frames = time.process_time(), 0
        self.faults = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.frames and self.bytes and done >= self.bytes:
            self.stages, self.cpu, self.frames = dict(STAGES), time.process_time(), done // self.frame_bytes
            self.faults = page_faults()


def profile(mode: str, rows: int, warmup_rows: int, codec: str | None,
            raw: bool = False, sum_com: bool = False) -> tuple[dict[str, float], float, int]:
    """Stage CPU seconds, total process CPU seconds and frames received for one mode, after ``warmup_rows``;
    ``sum_com``: only the mean pattern and the CoM, no archive (what live_throughput.py compares with
    LiberTEM-live)."""
    from stempress.acquire import receive
    from stempress.live import open_live
    from stempress.store.reducing import given_calibration

    n = (rows + warmup_rows) * SCAN_X
    sender, port = spawn_sender(_sender, mode, n, raw=raw)
    STAGES.clear()
    with tempfile.TemporaryDirectory(prefix="live-cpu-") as tmp:
        source = open_live(f"merlin://127.0.0.1:{port}", (rows + warmup_rows, SCAN_X), timeout=30, **THREAD)
        warm = Warmup(warmup_rows, source.frame_bytes)
        centre = ((DET - 1) / 2, (DET - 1) / 2)
        calibration = given_calibration(source, centre=centre, bf_radius=30)
        extra: dict[str, Any] = {} if codec is None else {"codec": codec}  # else the stream's default
        if not sum_com:
            extra["archive"] = Path(tmp) / "a.h5"
        report = receive(source, reduce=SUM_COM if sum_com else TARGETS, reduced=Path(tmp) / "r.h5",
                         calibration=calibration, workers=1, progress=warm, **extra)
        cpu = time.process_time() - warm.cpu
        FAULTS[mode] = (page_faults() - warm.faults) / max(1, n - warm.frames)
    sender.join(30)
    if source.account.received != n:
        raise SystemExit(f"{mode}: received {source.account.received} of {n} frames ({source.account.ended})")
    CHILD[mode] = receiver_cpu(source, n)
    CODECS[mode] = ("none (mean pattern + CoM only)" if report.archive is None else
                    f"{report.archive.codec.name} (ratio {report.raw_bytes / report.archive.file_bytes:.1f})")
    stages = {k: v - warm.stages.get(k, 0.0) for k, v in STAGES.items()}
    return stages, cpu, n - warm.frames


def codec_table(modes: list[str], names: list[str]) -> None:
    """Each codec's encode CPU per frame (one thread) and ratio on a default chunk (16x16x128x128) of frames like
    the benchmark's (all distinct), and that it decodes them bit-exactly."""
    import numpy as np

    from stempress.codecs.catalog import get_codec

    for mode in modes:
        frames = base_frames(mode, 256)  # distinct frames: a repeat inside a chunk would flatter some codecs
        chunk = np.ascontiguousarray(frames.reshape(16, 16, DET, DET)[:, :, :128, :128])
        print(f"{mode}: archive codecs on a 16x16x128x128 chunk (encode CPU per {DET}x{DET} frame, one thread):")
        for name in names:
            codec = get_codec(name).chunk_codec(chunk.dtype, threads=1)
            stored = codec.encode(chunk)
            assert np.array_equal(codec.decode(stored, chunk.shape, chunk.dtype), chunk), name
            best = float("inf")
            for _ in range(3):
                t0 = time.process_time()
                for _ in range(3):
                    codec.encode(chunk)
                best = min(best, (time.process_time() - t0) / 3)
            per_frame = best * (DET // 128) ** 2 / 256  # a frame is spread over 4 chunks of 256 frames each
            print(f"  {name:<26} {1e6 * per_frame:8.1f} us/frame   ratio {chunk.nbytes / len(stored):6.2f}")


def print_stages(results: dict[str, tuple[dict[str, float], float, int]], modes: list[str], names: list[str],
                 faults: dict[str, float], child: dict[str, tuple[float, float] | None] | None = None) -> None:
    """The table of ``profile`` results (stage CPU seconds, process CPU seconds, frames) per frame: each stage, the
    untimed rest (names starting with a space are parts of the stage above, not summed again), the process total,
    page faults and the frames/s one core takes at that cost; with ``child``, the receiving process's CPU per
    frame (its pump thread, its whole process) and both processes together."""
    def row(label: str, values: Any, fmt: str = ">10.1f") -> None:
        print(f"  {label:<36}" + "".join(f"{v:{fmt}}" for v in values))

    row("stage", modes, ">10")
    for name in names:
        row(name, (1e6 * results[m][0].get(name, 0.0) / results[m][2] for m in modes))
    staged = {m: sum(v for k, v in r[0].items() if not k.startswith(" ")) for m, r in results.items()}
    row("other (untimed)", (1e6 * (results[m][1] - staged[m]) / results[m][2] for m in modes))
    row("process total", (1e6 * results[m][1] / results[m][2] for m in modes))
    row("page faults per frame", (faults[m] for m in modes), ">10.2f")
    row("frames/s per core at that cost", (results[m][2] / results[m][1] for m in modes), ">10,.0f")
    if child and all(child.get(m) for m in modes):
        print("  receiving process (its own CPU, every frame of the stream, warm-up included):")
        row("  pump thread (receive + decode)", (1e6 * child[m][0] for m in modes))  # type: ignore[index]
        row("  process total (+ ZeroMQ I/O)", (1e6 * child[m][1] for m in modes))  # type: ignore[index]
        row("this + receiving process", (1e6 * (results[m][1] / results[m][2] + child[m][1])  # type: ignore[index]
                                         for m in modes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48, help=f"scan rows of {SCAN_X} frames (default 48)")
    parser.add_argument("--modes", default="12bit,1bit", help="12bit and/or 1bit, separated by commas")
    parser.add_argument("--warmup-rows", type=int, default=48, help="rows received first and not counted (default "
                        "48: the row assembler's three fresh slabs; 0 counts the cold start too)")
    parser.add_argument("--codec", default=None, help="archive codec (default: the stream's, as `stempress live` "
                        "picks it)")
    parser.add_argument("--merlin-format", choices=("binary", "raw"), default="binary",
                        help="frames as Merlin's binary (U08/U16) or raw (R64: 1-bit packed, 8 KiB a frame) format")
    parser.add_argument("--sum-com", action="store_true", help="only the mean pattern and the CoM, no archive: "
                        "the work live_throughput.py --libertem-live compares")
    parser.add_argument("--thread", action="store_true", help="the receiver in a thread of this process (its "
                        "receive stages timed one by one, as before the receiving process) instead of its own process")
    parser.add_argument("--sender", action="store_true", help="only time the sender (stempress serve --as merlin, "
                        "as live_throughput.py runs it) to a client that drains the socket")
    parser.add_argument("--codec-table", nargs="?", const=TABLE_CODECS, default=None, metavar="CODECS",
                        help="only compare archive codecs on the benchmark's frames (default list: a few fast ones)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.codec_table:
        codec_table(modes, args.codec_table.split(","))
        return
    if args.sender:
        sender_alone(modes, args.rows)
        return
    instrument()
    THREAD.update({"thread": True} if args.thread else {})
    raw = args.merlin_format == "raw"
    results = {mode: profile(mode, args.rows, args.warmup_rows, args.codec, raw, args.sum_com) for mode in modes}
    names = list(dict.fromkeys(k for stages, _, _ in results.values() for k in stages))
    print(f"CPU microseconds per frame, Merlin {DET}x{DET} ({args.merlin_format}), {args.rows}x{SCAN_X} scan after "
          f"{args.warmup_rows} warm-up rows, "
          f"{'mean pattern + CoM' if args.sum_com else 'default reducers + archive'}, one worker:")
    for mode in modes:
        print(f"  {mode} archive: {CODECS[mode]}")
    print_stages(results, modes, names, FAULTS, CHILD)

if __name__ == "__main__":
    main()
