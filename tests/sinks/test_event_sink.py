"""The events sink's entropy-coded output from a stream of scan rows (as ``stempress live`` feeds it) is the file
``write_entropy_events`` writes from the same counts, byte for byte, though the sink takes the model's first pass
from the blocks as they pass; and its tally, taken from the events, is the dense counts'."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from stempress.data.base import ArraySource, Block
from stempress.data.entropy import EntropyCodedSource
from stempress.data.entropy_file import open_entropy
from stempress.data.events import events_from_block
from stempress.data.stream import BlockStream
from stempress.engine import run
from stempress.errors import StempressError
from stempress.events.counting import CountTally
from stempress.events.entropy_file import write_entropy_events
from stempress.exec.local import ThreadExecutor
from stempress.exec.processes import ProcessExecutor
from stempress.sinks.events import EventSink, stream_coder


def _coded(path: Path) -> dict[str, bytes]:
    """The codec's datasets (the record under metadata/ aside)."""
    with h5py.File(path, "r") as f:
        return {name: f[name][()].tobytes() for name in ("model/packed", "chunks/index", "chunks/words",
                                                           "chunks/escapes", "chunks/crc")}


def test_a_streamed_scan_codes_as_the_counts_do(tmp_path: Path) -> None:
    # more positions than the model samples (8192): every other one is sampled, across the rows' boundaries;
    # every third row's pattern is the others' mirrored, so the model groups the positions (two groups)
    rng = np.random.default_rng(3)
    lam = np.array([[0.02, 0.3], [0.3, 4.0]])
    cube = rng.poisson(np.where(np.arange(90)[:, None, None, None] % 3 == 0, lam[::-1, ::-1], lam),
                       (90, 92, 2, 2)).astype(np.uint16)
    valid = np.ones((90, 92), bool)
    valid[4, 7] = False  # a missing frame holds no events: its fill value is never seen
    stream = BlockStream((Block(r, cube[r:r + 1], valid[r:r + 1]) for r in range(90)), cube.shape, cube.dtype)
    report, = run(stream, [EventSink(tmp_path / "live.h5", fmt="entropy")])
    counts = cube.copy()
    counts[4, 7] = 0
    write_entropy_events(ArraySource(counts), tmp_path / "count.h5", record={})
    assert _coded(tmp_path / "live.h5") == _coded(tmp_path / "count.h5")
    with EntropyCodedSource(tmp_path / "live.h5") as coded:
        assert coded.metadata["n_groups"] == 2
    assert report.n_electrons == int(counts.sum()) and report.n_events == np.count_nonzero(counts)


def test_the_tally_of_events_is_the_tally_of_their_counts() -> None:
    cube = np.random.default_rng(4).poisson(0.7, (3, 4, 5, 6)).astype(np.uint16)
    cube[1, 2, 3, 4] = 900
    dense, sparse = CountTally((5, 6)), CountTally((5, 6))
    for r in range(3):
        dense.add(cube[r:r + 1])
        sparse.add_events(events_from_block(Block(r, cube[r:r + 1])))
    assert (sparse.n_events, sparse.n_electrons, sparse.max_count) == (dense.n_events, dense.n_electrons, 900)
    assert sparse.pattern.dtype == np.uint64 and np.array_equal(sparse.pattern, dense.pattern)


def test_a_live_stream_is_coded_as_it_comes_with_a_model_of_its_first_rows(tmp_path: Path) -> None:
    # the receiver's accounting in the metadata marks a live stream: chunks (3 rows) are coded as their rows come,
    # under a model of the first 8 rows; the events are exactly the counts all the same, and counts the first rows
    # never saw (a pixel dark there, a value beyond any table) escape, not fail
    rng = np.random.default_rng(5)
    cube = rng.poisson(np.where(np.arange(20)[:, None, None, None] < 8, 0.3, 1.5), (20, 6, 4, 4)).astype(np.uint16)
    cube[:8, :, 0, 0] = 0
    cube[15, 2, 0, 0] = 60000
    valid = np.ones((20, 6), bool)
    valid[9, 1] = False
    sink = EventSink(tmp_path / "live.h5", fmt="entropy", chunk_rows=3)
    submitted = []

    def blocks():  # what the sink had coded before each block
        for r in range(0, 20, 2):
            submitted.append(sink._stream.coded_rows if r else 0)
            yield Block(r, cube[r:r + 2], valid[r:r + 2])

    stream = BlockStream(blocks(), cube.shape, cube.dtype, metadata={"frames": {"received": 119}})
    with ThreadExecutor(2) as pool:
        report, = run(stream, [sink], executor=pool)
    assert submitted == [0, 0, 0, 0, 6, 9, 12, 12, 15, 18]  # none before the 8 rows of the fit, then as they come
    counts = cube.copy()
    counts[9, 1] = 0
    with open_entropy(tmp_path / "live.h5") as coded:
        assert np.array_equal(coded.read_rows(0, 20), counts)
        assert coded.metadata["provenance"]["entropy_model"]["name"] == "prefix"
        assert coded.metadata["provenance"]["entropy_model"]["fitted_rows"] == 8
        assert coded.metadata["provenance"]["frames"]["missing_positions"] == [9 * 6 + 1]
    with h5py.File(tmp_path / "live.h5", "r") as f:
        assert f["chunks/index"][:, 0].tolist() == [0, 3, 6, 9, 12, 15, 18, 20]
    assert report.n_electrons == int(counts.sum()) and report.n_events == np.count_nonzero(counts)
    assert not list(tmp_path.glob("*partial*"))  # nothing staged, nothing left



def test_a_received_scan_holds_the_events_that_counting_its_frames_gives(tmp_path: Path) -> None:
    # end to end: serve (DECTRIS) -> live receiver -> ingest's entropy events, coded during the scan under the
    # first rows' model; the file decodes to the counts `count_to_file` writes (whole-scan model) from the frames
    from stempress.events.counting import CountingParams
    from stempress.ingest import ingest
    from stempress.live import LiveSource
    from stempress.live.serve import serve
    from stempress.store.count import count_to_file
    from stempress.store.verify import verify

    cube = np.random.default_rng(6).poisson(40.0, (12, 5, 6, 4)).astype(np.uint16)
    params = CountingParams(dark=0.0, gain=1.0, threshold=45.0)
    ready, port, served = threading.Event(), [], {}
    thread = threading.Thread(target=lambda: served.update(log=serve(
        ArraySource(cube), "dectris", ready=lambda p: (port.append(p), ready.set()), timeout=10)), daemon=True)
    thread.start()
    assert ready.wait(30) and port
    live = LiveSource(f"dectris://127.0.0.1:{port[0]}", cube.shape[:2], timeout=10)
    ingest(live, events=tmp_path / "live.h5", event_format="entropy", counting=params)
    thread.join(30)
    count_to_file(ArraySource(cube), tmp_path / "count.h5", params, fmt="entropy")
    with open_entropy(tmp_path / "live.h5") as received, open_entropy(tmp_path / "count.h5") as counted:
        assert np.array_equal(received.read_rows(0, 12), counted.read_rows(0, 12))
        assert received.read_rows(0, 12).any()
        assert received.metadata["provenance"]["entropy_model"]["name"] == "prefix"
        assert "entropy_model" not in counted.metadata["provenance"]
        assert verify(tmp_path / "live.h5", against=counted).ok  # its CRCs, and the counts against the other file


def test_a_live_stream_that_fails_after_its_first_chunks_leaves_no_file(tmp_path: Path) -> None:
    cube = np.random.default_rng(7).poisson(0.5, (12, 3, 2, 2)).astype(np.uint16)

    def blocks():
        for r in range(10):  # chunks are coded by now: the file is open when the source fails
            yield Block(r, cube[r:r + 1])
        raise StempressError("the detector went away")

    stream = BlockStream(blocks(), cube.shape, cube.dtype, metadata={"frames": {}})
    with ThreadExecutor(2) as pool, pytest.raises(StempressError, match="went away"):
        run(stream, [EventSink(tmp_path / "live.h5", fmt="entropy", chunk_rows=2)], executor=pool)
    assert list(tmp_path.iterdir()) == []


# -- a live stream's chunks coded on a worker process (``coder``, ``stream_coder``) -----------------------------------

@pytest.fixture(scope="module")
def coder():
    """One worker process for the module's tests, as ``stempress live`` owns one for its pass."""
    with stream_coder(True, cores=2) as executor:
        assert executor is not None
        executor.start()
        yield executor


def _worker_up(sink: EventSink, row: int = 0) -> None:
    """Wait until the sink's worker has run its first task (until then chunks are coded in this process)."""
    sink._stream._starter.join()
    sink._stream._started[0].result(timeout=60)


def _live_cube() -> np.ndarray:
    rng = np.random.default_rng(8)
    cube = rng.poisson(np.where(np.arange(20)[:, None, None, None] < 8, 0.3, 1.5), (20, 6, 4, 4)).astype(np.uint16)
    cube[15, 2, 0, 0] = 60000  # beyond the first rows' tables: escaped
    return cube


def _stream_to(out: Path, cube: np.ndarray, coder=None, *, each=None) -> tuple[list[bool], EventSink]:
    """``cube`` streamed in blocks of two rows into the entropy events ``out`` (chunks of 3 rows), ``each(sink, row)``
    called before each block; whether the chunks were going to a worker before each block, and the sink."""
    sink = EventSink(out, fmt="entropy", chunk_rows=3, coder=coder)
    on_worker: list[bool] = []

    def blocks():
        for r in range(0, cube.shape[0], 2):
            on_worker.append(sink._stream.on_worker)
            if each is not None:
                each(sink, r)
            yield Block(r, cube[r:r + 2])

    sink.report, = run(BlockStream(blocks(), cube.shape, cube.dtype, metadata={"frames": {}}), [sink])
    return on_worker, sink


def test_chunks_coded_on_a_worker_process_make_the_file_this_process_codes(tmp_path: Path, coder) -> None:
    cube = _live_cube()
    _stream_to(tmp_path / "inline.h5", cube)
    on_worker, sink = _stream_to(tmp_path / "worker.h5", cube, coder, each=_worker_up)
    assert on_worker[5:] == [True] * 5  # from the model (8 rows in) on, every chunk went to the worker
    assert sink._stream._coder is None  # none was coded here
    assert _coded(tmp_path / "worker.h5") == _coded(tmp_path / "inline.h5")
    with open_entropy(tmp_path / "worker.h5") as coded:
        assert np.array_equal(coded.read_rows(0, 20), cube)
    assert sink.report.n_electrons == int(cube.sum())


def test_a_worker_that_dies_mid_stream_leaves_its_chunks_to_this_process(tmp_path: Path, coder) -> None:
    # a scan cannot be sent again: the chunks in the dead worker's arena are coded here, the next go to a new one
    cube = _live_cube()
    _stream_to(tmp_path / "inline.h5", cube)

    def kill(sink, row: int) -> None:
        _worker_up(sink)
        if row == 10:  # every chunk so far taken back, then the worker stopped: rows 9-11 wait in their slot
            sink._stream._take(wait=True)
            os.kill(coder.pids()[0], signal.SIGSTOP)
        if row == 12:
            assert sink._stream._pool.pending
            os.kill(coder.pids()[0], signal.SIGKILL)

    on_worker, sink = _stream_to(tmp_path / "worker.h5", cube, coder, each=kill)
    assert on_worker[6] and sink._stream._coder is not None  # a chunk the worker had was coded here
    assert _coded(tmp_path / "worker.h5") == _coded(tmp_path / "inline.h5")


def test_a_stream_does_not_wait_for_its_worker_to_start(tmp_path: Path, coder) -> None:
    # the worker stopped before its first task: every chunk is coded here, none waits for it
    cube = _live_cube()
    _stream_to(tmp_path / "inline.h5", cube)
    coder.start()  # a worker running (the test before may have killed one)
    os.kill(coder.pids()[0], signal.SIGSTOP)
    try:
        on_worker, sink = _stream_to(tmp_path / "worker.h5", cube, coder)
    finally:
        os.kill(coder.pids()[0], signal.SIGCONT)
    assert not any(on_worker) and sink._stream._coder is not None
    assert _coded(tmp_path / "worker.h5") == _coded(tmp_path / "inline.h5")


def test_a_worker_that_cannot_start_leaves_the_chunks_to_this_process(tmp_path: Path) -> None:
    class NoProcesses(ProcessExecutor):
        def submit(self, fn, *args):
            raise OSError("fork: resource temporarily unavailable")

    cube = _live_cube()
    _stream_to(tmp_path / "inline.h5", cube)
    on_worker, _ = _stream_to(tmp_path / "worker.h5", cube, NoProcesses(1))
    assert not any(on_worker)
    assert _coded(tmp_path / "worker.h5") == _coded(tmp_path / "inline.h5")


def test_a_stream_aborted_on_a_worker_leaves_no_file_no_arena_and_no_worker(tmp_path: Path) -> None:
    cube = _live_cube()
    seen: dict[str, object] = {}

    def fail(sink, row: int) -> None:
        _worker_up(sink)
        if row == 14:
            seen.update(pids=sink.coder.pids(), arena=sink._stream._pool.arena.shm.name)
            raise StempressError("the detector went away")

    with stream_coder(True, cores=2) as executor, pytest.raises(StempressError, match="went away"):
        _stream_to(tmp_path / "live.h5", cube, executor, each=fail)
    assert not list(tmp_path.iterdir())
    assert not Path("/dev/shm", str(seen["arena"])).exists()
    assert len(seen["pids"]) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pids"][0], 0)


def test_one_core_or_no_entropy_events_start_no_coder_process() -> None:
    for wanted, cores in ((True, 1), (False, 2)):
        with stream_coder(wanted, cores=cores) as executor:
            assert executor is None
