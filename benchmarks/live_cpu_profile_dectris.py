"""CPU time per frame, stage by stage, of ``stempress live``'s DECTRIS receive path (96x96 uint16, as
``benchmarks/live_throughput.py --modes dectris`` sends it), and of the sender, ``stempress serve --as dectris``.

    python benchmarks/live_cpu_profile_dectris.py                    # v1 (bs16-lz4<) and v2 (bslz4), sum + CoM
    python benchmarks/live_cpu_profile_dectris.py --modes dectris --outputs default   # default reducers, no archive
    python benchmarks/live_cpu_profile_dectris.py --modes dectris --outputs events    # + entropy-coded events
    python benchmarks/live_cpu_profile_dectris.py --sender           # serve's own CPU per frame, to a drain

Receive: a sender process PUSHes pre-built messages (``live.dectris.image_parts`` / ``live.dectris2.image_message``
of ``live_throughput``'s 256 Poisson frames, numbered per send) as fast as ZeroMQ takes them (its CPU is not
counted); this process receives them with ``acquire.receive`` as ``stempress live`` does (``--outputs sum-com``:
the mean pattern and CoM into a reduced file, what the LiberTEM-live comparison runs; ``default``: the default
reducers; ``events``: the default reducers and the frames as entropy-coded events, ``live_throughput``'s DECTRIS
outputs (issue #14); one worker). Each stage is timed with ``time.thread_time`` (CPU of the thread running it); stages
marked ``of which`` are inside the unindented stage above them. The first ``--warmup-rows`` are not counted, except
by the ``finish`` stages, what runs once the scan has ended (on a stream the events are coded chunk by chunk during
the scan, in ``events (per block)``, with a model fitted on the first rows: only the last chunk is left), whose CPU
is divided by all the frames received (and added so to the process total). The events' chunks are coded in one
worker process, as ``stempress live`` codes them (``sinks.events.stream_coder``): the table shows this process's
"arena copy" (a chunk into the worker's shared memory) and "coded chunks taken", and below it the worker's own
CPU per frame (from /proc) and both processes' sum; ``--coder inline`` codes them in this process ("entropy
coding"), the way before the worker. The receive itself (ZeroMQ receive, image decode) runs in ``live``'s receiving
process: its CPU per frame over the whole stream (sent back at its end) is printed below the table, and all three
processes' sum; ``--thread`` runs the receiver in a thread here, its stages timed one by one as before.

Receiving process (2026-12-07 08:40-08:50 UTC, 2 cores, load ~1, ``--outputs events``, runs taken in turn with
main = 9f4ee9f): this process 74-90 -> 40-58 us/frame (the receive, ~35 of it, leaves the GIL), the receiving
process 47-58 (more than the thread's receive: it keeps up, so it wakes up for fewer frames at a time, and the
frames cross cores), all processes 128-145 -> 138-170. ``live_throughput.py --modes dectris`` on this 2-core machine
with the sender on it: 5,230-5,670 frames/s (main) vs 5,170-5,570 (here): no longer GIL-bound but CPU-bound there.

Sender (``--sender``): ``live.serve.serve`` in a process of its own at full speed, this process draining the
socket (``recv_multipart``, nothing else); prints serve's process CPU per frame and the frames/s reached. If serve
alone cannot outrun both receivers, ``live_throughput`` measures the sender, not them.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_cpu_profile import (  # noqa: F401 - timed_iter for stages to come
    CHILD,
    STAGES,
    THREAD,
    Warmup,
    instrument_ring,
    page_faults,
    print_stages,
    receiver_cpu,
    spawn_sender,
    timed,
    timed_iter,
)
from live_throughput import MODES, SCAN_X, SUM_COM, TARGETS, RepeatedFrames, base_frames

ENCODING = {"dectris": "bs16-lz4<", "dectris2": "bslz4"}
ORDER = ["message -> event", "  of which: zmq receive", "  of which: CBOR loads", "  of which: image decode",
         "queue put", "queue get", "ring get (parent)", "accounting + row assembly", "regroup/join rows", "reducers",
         "events (per block)", "  of which: event extraction", "  of which: tally", "  of which: staging write",
         "  of which: model sampling", "  of which: arena copy", "  of which: coded chunks taken",
         "finish: events", "  of which: model fit", "  of which: entropy coding", "  of which: HDF5 write"]
#: Stages that run once the scan has ended, over every frame (warm-up rows included).
FINISH = ("finish: events", "  of which: model fit", "  of which: entropy coding", "  of which: HDF5 write")


def _sender(protocol: str, n_frames: int, ports: Any) -> None:
    """Child: PUSH ``n_frames`` pre-encoded images (cycling the base frames) to the first receiver, then the end."""
    import zmq

    from stempress.live import dectris, dectris2

    base = base_frames("dectris")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ports.put(port)
    if protocol == "dectris":
        config = {"x_pixels_in_detector": base.shape[2], "y_pixels_in_detector": base.shape[1], "nimages": 1,
                  "ntrigger": n_frames}
        sock.send_multipart(dectris.header_parts(1, config))
        built = [dectris.image_parts(0, f, ENCODING[protocol]) for f in base]
        for i in range(n_frames):
            parts = built[i % len(built)]
            head = parts[0].replace(b'"frame": 0,', b'"frame": %d,' % i)
            sock.send_multipart([head, *parts[1:]])
        sock.send_multipart(dectris.end_parts(1))
    else:
        sock.send(dectris2.start_message(1, "u", base.shape[1:], base.dtype, n_frames))
        for i in range(n_frames):  # CBOR numbers vary in length: encode each (the sender's CPU is not counted)
            sock.send(dectris2.image_message(i, base[i % len(base)], ENCODING[protocol], 1, "u"))
        sock.send(dectris2.end_message(1, "u"))
    sock.close(linger=120_000)
    ctx.term()


FAULTS: dict[str, float] = {}
#: The coder's worker process: its CPU seconds after the warm-up rows, per mode (none: coded in this process).
WORKER: dict[str, float] = {}


def worker_cpu(executor: Any) -> float:
    """CPU seconds (user + system) of ``executor``'s worker processes so far, from /proc."""
    import os

    total = 0.0
    for pid in executor.pids() if executor is not None else ():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


class CoderWarmup(Warmup):
    """``Warmup`` that also takes the coder's worker CPU when the warm-up rows are through."""

    def __init__(self, rows: int, frame_bytes: int, coder: Any) -> None:
        super().__init__(rows, frame_bytes)
        self.coder, self.worker = coder, 0.0

    def __call__(self, done: int, total: int) -> None:
        before = self.frames
        super().__call__(done, total)
        if self.frames and not before:
            self.worker = worker_cpu(self.coder)


def instrument() -> None:
    """Wrap each stage of the DECTRIS receive path (the patched names are the ones the callers look up)."""
    from stempress.data import stream
    from stempress.live import accounting, dectris, dectris2, zmq_pull
    from stempress.sinks import reduce

    if hasattr(zmq_pull.PullReader, "_event"):  # the readers' shared loop (batching frames, where it does)
        zmq_pull.PullReader._next = timed("message -> event", zmq_pull.PullReader._next)
    else:
        dectris.DectrisReader._next = timed("message -> event", dectris.DectrisReader._next)
        dectris2.Dectris2Reader._next = timed("message -> event", dectris2.Dectris2Reader._next)
    if hasattr(zmq_pull.PullReader, "_parts"):  # the receive itself, also of the messages a batch takes
        zmq_pull.PullReader._parts = timed("  of which: zmq receive", zmq_pull.PullReader._parts)
    else:
        zmq_pull.PullReader._recv = timed("  of which: zmq receive", zmq_pull.PullReader._recv)
    dectris2.loads = timed("  of which: CBOR loads", dectris2.loads)
    try:  # every bitshuffle-LZ4 decode goes through bslz4.decode_into (v1 into the frame's slot)
        from stempress.codecs import bslz4

        bslz4.decode_into = timed("  of which: image decode", bslz4.decode_into)
    except ImportError:  # before it: each stream's decode
        dectris.decode_image = timed("  of which: image decode", dectris.decode_image)
        dectris2.decompress = timed("  of which: image decode", dectris2.decompress)
    instrument_ring()
    accounting.RowAssembler.add = timed("accounting + row assembly", accounting.RowAssembler.add)
    if hasattr(accounting.RowAssembler, "add_run"):  # a batch of consecutive frames placed at once
        accounting.RowAssembler.add_run = timed("accounting + row assembly", accounting.RowAssembler.add_run)
    stream.join = timed("regroup/join rows", stream.join)
    reduce.ReducerSink.consume = timed("reducers", reduce.ReducerSink.consume)
    instrument_events()


def instrument_events() -> None:
    """The events sink's stages: per block (events out of the counts, the tally, the staged raw_csr set) and at
    finish (the model fitted on every count, the chunks coded, the file written)."""
    from stempress.data import entropy
    from stempress.data.entropy_coder import ChunkCoder
    from stempress.events import libertem
    from stempress.events.counting import CountTally
    from stempress.sinks import events

    events.EventSink.consume = timed("events (per block)", events.EventSink.consume)
    events.events_from_block = timed("  of which: event extraction", events.events_from_block)
    CountTally.add = timed("  of which: tally", CountTally.add)
    if hasattr(CountTally, "add_events"):  # the tally from the events, not the dense counts
        CountTally.add_events = timed("  of which: tally", CountTally.add_events)
    libertem.RawCsrWriter.append = timed("  of which: staging write", libertem.RawCsrWriter.append)
    events.EventSink.finish = timed("finish: events", events.EventSink.finish)
    entropy.fit_source = timed("  of which: model fit", entropy.fit_source)
    try:  # the model's first pass taken from the blocks as they pass, the rest at finish
        from stempress.events.entropy_file import ModelFit

        ModelFit.sample = timed("  of which: model sampling", ModelFit.sample)
        ModelFit.model = timed("  of which: model fit", ModelFit.model)
    except ImportError:  # before it: the whole fit at finish
        pass
    ChunkCoder.encode = timed("  of which: entropy coding", ChunkCoder.encode)  # this process's coding only
    try:  # a live stream's chunks handed to the coder's worker process (its CPU: worker_cpu)
        from stempress.data.entropy_parallel import ChunkPool

        ChunkPool.put_encode = timed("  of which: arena copy", ChunkPool.put_encode)
        ChunkPool.take_encoded = timed("  of which: coded chunks taken", ChunkPool.take_encoded)
    except AttributeError:  # before it: coded in the consuming thread
        pass
    entropy.ChunkWriter.finish = timed("  of which: HDF5 write", entropy.ChunkWriter.finish)


def profile(protocol: str, rows: int, warmup_rows: int, outputs: str,
            coder: str = "process") -> tuple[dict[str, float], float, int]:
    """Stage CPU seconds, total process CPU seconds and frames counted, after ``warmup_rows``; ``coder``: where
    the events' chunks are coded (``process``: one worker process, as ``stempress live`` does; ``inline``: here)."""
    from stempress.acquire import receive
    from stempress.live import open_live
    from stempress.store.reducing import given_calibration

    try:
        from stempress.sinks.events import stream_coder
    except ImportError:  # before it: coded in this process
        stream_coder = None

    m = MODES["dectris"]
    n = (rows + warmup_rows) * SCAN_X
    sender, port = spawn_sender(_sender, protocol, n)
    STAGES.clear()
    wanted = outputs == "events" and coder == "process" and stream_coder is not None
    with tempfile.TemporaryDirectory(prefix="live-cpu-") as tmp, \
            (stream_coder(wanted) if stream_coder is not None else contextlib.nullcontext()) as executor:
        source = open_live(f"{protocol}://127.0.0.1:{port}", (rows + warmup_rows, SCAN_X), timeout=30, **THREAD)
        warm = CoderWarmup(warmup_rows, source.frame_bytes, executor)
        calibration = given_calibration(source, centre=(m.centre, m.centre), bf_radius=m.disk)
        targets = SUM_COM if outputs == "sum-com" else TARGETS
        events: dict[str, Any] = {}
        if outputs == "events":
            events.update(events=Path(tmp) / "e.h5", event_format="entropy")
        if executor is not None:
            events["event_coder"] = executor
        receive(source, reduce=targets, reduced=Path(tmp) / "r.h5", calibration=calibration, workers=1,
                progress=warm, **events)
        cpu = time.process_time() - warm.cpu
        if executor is not None:
            WORKER[protocol] = worker_cpu(executor) - warm.worker
        FAULTS[protocol] = (page_faults() - warm.faults) / max(1, n - warm.frames)
    sender.join(60)
    if source.account.received != n:
        raise SystemExit(f"{protocol}: received {source.account.received} of {n} frames ({source.account.ended})")
    CHILD[protocol] = receiver_cpu(source, n)
    # the finish stages' CPU as if spread over the counted frames at their per-frame rate over all frames
    scale = {k: (n - warm.frames) / n if k in FINISH else 1.0 for k in STAGES}
    stages = {k: (v - warm.stages.get(k, 0.0)) * scale[k] for k, v in STAGES.items()}
    cpu -= STAGES.get(FINISH[0], 0.0) * (1 - scale.get(FINISH[0], 1.0))
    return stages, cpu, n - warm.frames


def _serve_child(protocol: str, scan_y: int, ports: Any, results: Any) -> None:
    from stempress.live.serve import serve

    source = RepeatedFrames(base_frames("dectris"), scan_y, 16)
    t0 = time.process_time()
    log = serve(source, protocol, timeout=60, ready=ports.put, encoding=ENCODING[protocol])
    results.put((time.process_time() - t0, log.sent, log.seconds))


def sender_cost(protocol: str, rows: int) -> tuple[float, float]:
    """serve's process CPU per frame (microseconds) and the frames/s it reached, to a receiver that only drains."""
    import zmq

    ctx = mp.get_context("spawn")
    ports, results = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_serve_child, args=(protocol, rows, ports, results), daemon=True)
    child.start()
    port = ports.get(timeout=120)
    zctx = zmq.Context()
    sock = zctx.socket(zmq.PULL)
    sock.connect(f"tcp://127.0.0.1:{port}")
    n = rows * SCAN_X
    got = 0
    while got < n + 2:  # header, images, end
        sock.recv_multipart(copy=False)
        got += 1
    cpu, sent, seconds = results.get(timeout=120)
    child.join(30)
    sock.close(linger=0)
    zctx.term()
    return 1e6 * cpu / sent, sent / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help=f"scan rows of {SCAN_X} frames (default 64)")
    parser.add_argument("--warmup-rows", type=int, default=16, help="rows received first, not counted (default 16)")
    parser.add_argument("--modes", default="dectris,dectris2", help="dectris (v1) and/or dectris2, by commas")
    parser.add_argument("--outputs", choices=("sum-com", "default", "events"), default="sum-com",
                        help="sum-com: mean pattern + CoM (the LiberTEM-live comparison); default: default reducers; "
                        "events: default reducers + entropy-coded events (live_throughput's DECTRIS outputs)")
    parser.add_argument("--thread", action="store_true", help="the receiver in a thread of this process (its "
                        "receive stages timed one by one) instead of its own process")
    parser.add_argument("--coder", choices=("process", "inline"), default="process",
                        help="events: where the chunks are coded, one worker process (as stempress live does; its CPU "
                        "is printed below the table) or this process")
    parser.add_argument("--sender", action="store_true", help="only serve's own CPU per frame, to a drain")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.sender:
        for mode in modes:
            us, rate = sender_cost(mode, args.rows)
            print(f"serve --as {mode} ({ENCODING[mode]}, 96x96 uint16, {args.rows * SCAN_X} frames) to a drain: "
                  f"{us:.1f} us CPU per frame, {rate:,.0f} frames/s")
        return
    instrument()
    THREAD.update({"thread": True} if args.thread else {})
    results = {mode: profile(mode, args.rows, args.warmup_rows, args.outputs, args.coder) for mode in modes}
    names = sorted(dict.fromkeys(k for stages, _, _ in results.values() for k in stages), key=ORDER.index)
    print(f"CPU microseconds per frame, DECTRIS 96x96 uint16, {args.rows}x{SCAN_X} scan after {args.warmup_rows} "
          f"warm-up rows, {args.outputs} outputs, one worker:")
    print_stages(results, modes, names, FAULTS, CHILD)
    if WORKER:  # the coder's worker process: its CPU is off this process's GIL
        print("  " + f"{'coder worker process (its CPU)':<36}" + "".join(
            f"{1e6 * WORKER.get(m, 0.0) / results[m][2]:>10.1f}" for m in modes))
        print("  " + f"{'this + coder processes':<36}" + "".join(
            f"{1e6 * (results[m][1] + WORKER.get(m, 0.0)) / results[m][2]:>10.1f}" for m in modes))
    if WORKER and all(CHILD.get(m) for m in modes):
        print("  " + f"{'all three processes':<36}" + "".join(
            f"{1e6 * ((results[m][1] + WORKER.get(m, 0.0)) / results[m][2] + CHILD[m][1]):>10.1f}"  # type: ignore[index]
            for m in modes))


if __name__ == "__main__":
    main()
