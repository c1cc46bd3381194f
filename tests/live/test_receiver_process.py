"""The receiving process (``live.pump``) and its shared ring (``live.ring``): the ring holds the sender back when the
sinks are slow, without loss; the process and the ring go on every path (close, a failed stream, a failing reader,
the parent killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_live import _merlin_sender, _serve_in_thread

from stempress.data.base import ArraySource
from stempress.live import LiveSource, ring

SHM = Path("/dev/shm")
needs_dev_shm = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory is not listed under /dev/shm here")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie nobody reaped yet has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _until(condition, seconds: float = 20.0) -> bool:
    """Whether ``condition()`` holds within ``seconds`` (looked at every 20 ms): a generous bound, not a timing."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _cube(shape=(16, 32, 12, 10), seed=5) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, shape).astype(np.uint16)


def test_a_slow_consumer_fills_the_ring_and_holds_the_sender_back_without_losing_a_frame(monkeypatch):
    monkeypatch.setattr(ring, "MIN_BYTES", 64 * 1024)  # a ring of ~270 frames for a scan of 512
    cube = _cube()
    port, out = _serve_in_thread(ArraySource(cube, name="scan"), "dectris")
    live = LiveSource(f"dectris://127.0.0.1:{port}", cube.shape[:2], timeout=10, queue_bytes=1)
    capacity = live.receiver.capacity
    assert capacity == 64 * 1024
    got = []
    for block in live.blocks():
        time.sleep(0.01)  # sinks slower than the sender
        got.append(block.data.copy())
    out["thread"].join(30)
    assert np.array_equal(np.concatenate(got), cube)
    a = live.account
    assert (a.received, a.missing, a.duplicate, a.corrupt, a.ended) == (512, 0, 0, 0, "complete")
    peak = live.receiver.peak
    assert capacity // 2 < peak <= capacity  # it filled, and never past its bound


def test_the_ring_takes_its_start_again_while_the_parent_keeps_up_and_waits_when_full():
    from stempress.live.ring import Ring, RingBuffers, Stopped

    shared, stop = Ring(1 << 20), threading.Event()
    buffers = RingBuffers(stop)
    buffers.attach(shared)
    try:
        offsets = []
        for event in range(1, 20):
            taken = buffers.take((100_000,), np.uint8)
            offsets.append(shared.offset_of(taken))
            buffers.mark(offsets[-1], event)
            del taken  # the child lets it go ...
            shared.placed(event)  # ... and the parent has placed it: free again
        assert set(offsets) == {0}  # the same memory over and over, not every page of the ring in turn
        held = [buffers.take((200_000,), np.uint8) for _ in range(5)]  # 1,000,160 of 1,048,576 bytes
        for i, h in enumerate(held):
            h[:] = i
            buffers.mark(shared.offset_of(h), 100 + i)
        stop.set()
        with pytest.raises(Stopped):  # full: it would wait for the parent (here: told to stop)
            buffers.take((200_000,), np.uint8)
        assert all((h == i).all() for i, h in enumerate(held)) and shared.peak <= shared.capacity
        del held, h
    finally:
        shared.close()


def test_the_ring_is_sized_by_the_budget_within_the_free_shared_memory(tmp_path, monkeypatch):
    from stempress.errors import StempressError
    from stempress.live.ring import MIN_BYTES, ring_bytes

    free = 10 * MIN_BYTES
    monkeypatch.setattr(ring.shutil, "disk_usage", lambda path: type("Usage", (), {"free": free})())
    assert ring_bytes(1, 18_432, str(tmp_path)) == MIN_BYTES  # at least the smallest ring
    assert ring_bytes(3 * MIN_BYTES + 5, 18_432, str(tmp_path)) == 3 * MIN_BYTES  # the budget, whole lines
    assert ring_bytes(100 * MIN_BYTES, 18_432, str(tmp_path)) < free  # no more than is free there
    free = MIN_BYTES // 2
    with pytest.raises(StempressError, match="shared memory; free some"):
        ring_bytes(1, 18_432, str(tmp_path))


@needs_dev_shm
@pytest.mark.parametrize("read", [False, True])
def test_close_ends_the_receiving_process_and_unlinks_the_ring(read):
    cube = _cube((3, 4, 12, 10))
    port, _out = _serve_in_thread(ArraySource(cube, name="scan"), "dectris")
    live = LiveSource(f"dectris://127.0.0.1:{port}", cube.shape[:2], timeout=10)
    pid, name = live.receiver.pid, live.receiver.ring_name
    assert pid is not None and pid != os.getpid() and _running(pid) and (SHM / name).exists()
    if read:
        assert np.array_equal(np.concatenate([b.data for b in live.blocks()]), cube)  # closes at the end
    else:
        live.close()  # opened, never read
    assert not _running(pid) and not (SHM / name).exists()
    assert live.receiver.cpu is not None and live.receiver.cpu["thread_s"] > 0  # its CPU, sent back at the end


@needs_dev_shm
def test_a_stream_cut_short_ends_with_its_reason_and_leaves_no_process_or_ring():
    frames = np.random.default_rng(0).integers(0, 4000, (3, 8, 8)).astype(np.uint16)
    from stempress.data.mib import encode_frame
    from stempress.live.merlin import acquisition_header, mpx_message

    messages = [mpx_message(acquisition_header(12, 4, 12))] + [mpx_message(encode_frame(i + 1, f))
                                                                for i, f in enumerate(frames)]
    port = _merlin_sender([b"".join(messages)])
    live = LiveSource(f"merlin://127.0.0.1:{port}", (3, 4), timeout=5)
    pid, name = live.receiver.pid, live.receiver.ring_name
    blocks = list(live.blocks())
    assert len(blocks) == 3 and live.account.received == 3 and "closed the connection" in live.account.ended
    assert not _running(pid) and not (SHM / name).exists()


def test_a_receiver_closed_while_it_still_opens_the_stream_leaves_no_process():
    import socket

    from stempress.live.pump import ReaderSpec, Receiver

    server = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) and never sends a header
    try:
        receiver = Receiver(ReaderSpec("merlin", "127.0.0.1", server.getsockname()[1], 60.0), 1)
        pid = receiver.pid
        assert _until(lambda: _running(pid))
        receiver.close()  # the child waits up to 60 s for the header: it is ended, not waited for
        assert not _running(pid)
    finally:
        server.close()


def test_a_reader_that_fails_mid_stream_ends_it_with_the_reason(monkeypatch):
    from stempress.live.merlin import MerlinReader

    cube = _cube((3, 4, 12, 10))
    port, _out = _serve_in_thread(ArraySource(cube, name="scan"), "merlin")
    calls = {"n": 0}
    real = MerlinReader._next

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 1:  # after the first frame (read at open)
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(MerlinReader, "_next", failing)  # seen by the receiver run as a thread of this process
    live = LiveSource(f"merlin://127.0.0.1:{port}", cube.shape[:2], timeout=10, thread=True)
    list(live.blocks())
    assert live.account.ended == "receiver failed: boom"


_ORPHAN = textwrap.dedent("""
    import socket, sys, threading, time
    import numpy as np
    from stempress.data.mib import encode_frame
    from stempress.live import LiveSource
    from stempress.live.merlin import acquisition_header, mpx_message

    server = socket.create_server(("127.0.0.1", 0))
    def send():  # a header and one frame, then the port stays open: the receiver waits for more
        conn, _ = server.accept()
        conn.sendall(mpx_message(acquisition_header(4, 2, 12)) + mpx_message(encode_frame(1, np.ones((8, 8), "u2"))))
        time.sleep(600)
    if __name__ == "__main__":
        threading.Thread(target=send, daemon=True).start()
        live = LiveSource(f"merlin://127.0.0.1:{server.getsockname()[1]}", (2, 2), timeout=600)
        print(live.receiver.pid, live.receiver.ring_name, flush=True)
        time.sleep(600)
""")


@needs_dev_shm
def test_the_receiving_process_dies_with_its_parent_and_the_ring_goes_with_the_resource_tracker(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True)
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()
        pid, name = int(line.split()[0]), line.split()[1]
        assert _running(pid) and (SHM / name).exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        assert _until(lambda: not _running(pid))  # no orphan holding the connection
        assert _until(lambda: not (SHM / name).exists())  # unlinked by the resource tracker
    finally:
        parent.kill()
        parent.wait(30)
