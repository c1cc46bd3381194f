"""CPU time per frame, stage by stage, of ``stempress live``'s receive path (Merlin 256x256, 12-bit and 1-bit).

    python benchmarks/live_cpu_profile.py                 # both modes, 48 scan rows of 256 frames each
    python benchmarks/live_cpu_profile.py --rows 32 --modes 1bit

A sender process replays pre-built Merlin records over localhost as fast as TCP takes them (its own CPU is not
counted); this process receives them with ``acquire.receive`` (as ``stempress live`` does: default reducers into a
reduced file, a blosc_zstd archive, one worker, so every stage runs on this process's two threads). Each stage is
timed with ``time.thread_time`` (CPU of the thread that runs it, not wall time, so a loaded machine or a waiting
thread does not inflate it). Prints microseconds of CPU per frame per stage, the process's total CPU per frame and
the frames/s one core could take at that cost.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_throughput import DET, SCAN_X, TARGETS, base_frames

MODES = {"12bit": 12, "1bit": 1}
STAGES: dict[str, float] = defaultdict(float)


def _sender(mode: str, n_frames: int, ports: Any) -> None:
    """Child: serve ``n_frames`` Merlin records (cycling a few frames) to the first client, then close."""
    from stempress.data.mib import encode_frame
    from stempress.live.merlin import acquisition_header, mpx_message

    depth = MODES[mode]
    base = base_frames(mode)
    records = [encode_frame(1, f, counter_depth=depth) for f in base]
    server = socket.create_server(("127.0.0.1", 0))
    ports.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.sendall(mpx_message(acquisition_header(n_frames, SCAN_X, depth)))
    for i in range(n_frames):
        record = records[i % len(records)]
        conn.sendall(mpx_message(b"MQ1,%06d" % (i + 1) + record[10:]))
    conn.close()
    server.close()


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
    from stempress.live import accounting, merlin, receiver
    from stempress.sinks import archive, reduce

    merlin.MerlinReader._message = timed("socket read + MPX framing", merlin.MerlinReader._message)
    merlin.parse_frame_header = timed("MQ1 header parse", merlin.parse_frame_header)
    if hasattr(merlin.MerlinReader, "_same_format"):  # the fast path for frames shaped like the first
        merlin.MerlinReader._same_format = timed("MQ1 header parse", merlin.MerlinReader._same_format)
    merlin.decode_frame = timed("frame decode", merlin.decode_frame)
    receiver.ByteQueue.put = timed("queue put", receiver.ByteQueue.put)
    receiver.ByteQueue.get = timed("queue get", receiver.ByteQueue.get)
    accounting.RowAssembler.add = timed("accounting + row assembly", accounting.RowAssembler.add)
    stream.join = timed("regroup/join rows into chunk rows", stream.join)
    reduce.ReducerSink.consume = timed("reducers", reduce.ReducerSink.consume)
    parallel.ChunkEncoder.__call__ = timed("archive encode (blosc_zstd)", parallel.ChunkEncoder.__call__)
    archive.ArchiveSink._store = timed("archive write (HDF5 direct chunk)", archive.ArchiveSink._store)


def profile(mode: str, rows: int) -> tuple[dict[str, float], float, int]:
    """Stage CPU seconds, total process CPU seconds and frames received for one mode."""
    from stempress.acquire import receive
    from stempress.live import open_live
    from stempress.store.reducing import given_calibration

    n = rows * SCAN_X
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    sender = ctx.Process(target=_sender, args=(mode, n, ports), daemon=True)
    sender.start()
    port = ports.get(timeout=120)
    STAGES.clear()
    with tempfile.TemporaryDirectory(prefix="live-cpu-") as tmp:
        cpu0 = time.process_time()
        source = open_live(f"merlin://127.0.0.1:{port}", (rows, SCAN_X), timeout=30)
        centre = ((DET - 1) / 2, (DET - 1) / 2)
        calibration = given_calibration(source, centre=centre, bf_radius=30)
        receive(source, archive=Path(tmp) / "a.h5", codec="blosc_zstd", reduce=TARGETS,
                reduced=Path(tmp) / "r.h5", calibration=calibration, workers=1)
        cpu = time.process_time() - cpu0
    sender.join(30)
    if source.account.received != n:
        raise SystemExit(f"{mode}: received {source.account.received} of {n} frames ({source.account.ended})")
    return dict(STAGES), cpu, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48, help=f"scan rows of {SCAN_X} frames (default 48)")
    parser.add_argument("--modes", default="12bit,1bit", help="12bit and/or 1bit, separated by commas")
    args = parser.parse_args()
    instrument()
    modes = args.modes.split(",")
    results = {mode: profile(mode, args.rows) for mode in modes}
    names = list(dict.fromkeys(k for stages, _, _ in results.values() for k in stages))
    print(f"CPU microseconds per frame, Merlin {DET}x{DET}, {args.rows}x{SCAN_X} scan, default reducers + "
          "blosc_zstd archive, one worker:")
    print(f"  {'stage':<36}" + "".join(f"{m:>10}" for m in modes))
    for name in names:
        print(f"  {name:<36}" + "".join(f"{1e6 * results[m][0].get(name, 0.0) / results[m][2]:>10.1f}"
                                        for m in modes))
    staged = {m: sum(r[0].values()) for m, r in results.items()}
    print(f"  {'other (untimed)':<36}" + "".join(f"{1e6 * (results[m][1] - staged[m]) / results[m][2]:>10.1f}"
                                               for m in modes))
    print(f"  {'process total':<36}" + "".join(f"{1e6 * results[m][1] / results[m][2]:>10.1f}" for m in modes))
    print(f"  {'frames/s per core at that cost':<36}" + "".join(f"{results[m][2] / results[m][1]:>10,.0f}"
                                                               for m in modes))


if __name__ == "__main__":
    main()
