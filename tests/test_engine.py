"""The engine: one read of a source feeds every sink, on any executor, with identical results."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stempress.data.base import ArraySource, Block
from stempress.data.open import SourceSpec, open_source, spec_of
from stempress.data.stream import BlockStream
from stempress.engine import block_rows, run
from stempress.errors import StempressError
from stempress.exec import InlineExecutor, ThreadExecutor, make_executor
from stempress.reduce import MeanPattern
from stempress.sinks.protocol import MergeableSink, RunInfo
from stempress.store.reducing import run_reducers


class FrameTotals:
    """A toy mergeable sink, as a contributor would add one: the total counts of every frame."""

    name = "totals"

    def open(self, info: RunInfo) -> None:
        self.start, stop = info.row_range
        self.totals = np.zeros((stop - self.start, info.shape[1]), np.int64)

    def consume(self, block: Block) -> None:
        self.totals[block.start - self.start:block.stop - self.start] = block.data.sum(axis=(2, 3))

    def partial(self, rows: tuple[int, int]) -> FrameTotals:
        return FrameTotals()

    def merge(self, other: FrameTotals) -> None:
        self.totals[other.start - self.start:other.start - self.start + len(other.totals)] = other.totals

    def finish(self) -> np.ndarray:
        return self.totals


class Recorder:
    """A sink that only streams (not mergeable): records the rows it saw, in order."""

    name = "recorder"
    row_multiple = 4

    def open(self, info: RunInfo) -> None:
        self.rows: list[tuple[int, int]] = []
        self.aborted = False

    def consume(self, block: Block) -> None:
        self.rows.append((block.start, block.stop))

    def finish(self) -> list[tuple[int, int]]:
        return self.rows

    def abort(self) -> None:
        self.aborted = True


class CountingSource(ArraySource):
    """An in-memory cube that counts the rows read from it."""

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.rows_read = getattr(self, "rows_read", 0) + (stop - start)
        return super().read_rows(start, stop)


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(3).poisson(1.5, (13, 5, 16, 16)).astype(np.uint16)


def test_a_toy_sink_gives_the_same_result_on_every_executor(cube):
    expected = cube.sum(axis=(2, 3))
    assert isinstance(FrameTotals(), MergeableSink)
    for executor in (InlineExecutor(), ThreadExecutor(2), ThreadExecutor(3)):
        with executor:
            (totals,) = run(ArraySource(cube), [FrameTotals()], executor=executor, rows=2)
        np.testing.assert_array_equal(totals, expected)


def test_every_sink_sees_each_row_once_from_one_read(cube):
    source = CountingSource(cube)
    recorder = Recorder()
    totals, rows, results = run(source, [FrameTotals(), recorder, _reducer_sink()], executor=ThreadExecutor(2))
    assert source.rows_read == cube.shape[0]  # three sinks, one read
    assert rows[0][0] == 0 and rows[-1][1] == cube.shape[0]
    assert all(a[1] == b[0] and a[0] % 4 == 0 for a, b in itertools.pairwise(rows))
    np.testing.assert_array_equal(totals, cube.sum(axis=(2, 3)))
    np.testing.assert_array_equal(results["mean_pattern"]["mean"], run_reducers(cube, [MeanPattern()])
                                  ["mean_pattern"]["mean"])


def _reducer_sink():
    from stempress.sinks.reduce import ReducerSink

    return ReducerSink([MeanPattern()])


def test_worker_processes_reopen_the_file_themselves(tmp_path, cube):
    np.save(tmp_path / "cube.npy", cube)
    with open_source(tmp_path / "cube.npy") as source:
        assert spec_of(source) == SourceSpec(str(tmp_path / "cube.npy"))
        with make_executor("processes", 2) as pool:
            (totals,) = run(source, [FrameTotals()], executor=pool)
    np.testing.assert_array_equal(totals, cube.sum(axis=(2, 3)))


def test_a_failing_sink_aborts_every_sink_and_raises(cube):
    class Broken(Recorder):
        name = "broken"

        def consume(self, block: Block) -> None:
            raise RuntimeError("disk on fire")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(ArraySource(cube), [recorder, Broken()], rows=4)
    assert recorder.aborted


def test_a_stream_is_regrouped_to_whole_rows_of_what_sinks_need(cube):
    blocks = [Block(r, cube[r:r + 3]) for r in range(0, cube.shape[0], 3)]
    stream = BlockStream(blocks, cube.shape, cube.dtype)
    recorder = Recorder()
    totals, rows = run(stream, [FrameTotals(), recorder])
    np.testing.assert_array_equal(totals, cube.sum(axis=(2, 3)))
    assert all(start % 4 == 0 for start, _ in rows) and rows[-1][1] == cube.shape[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stream_feeds_each_sink_at_its_own_pace_without_copying_rows(cube, workers):
    """Sinks taking any rows get each block as it arrives (a live preview fills row by row); a sink of whole chunk
    rows gets them joined, as views of the rows' buffer; progress counts what went through every sink."""
    log: list[tuple[str, int, int]] = []
    joined: list[np.ndarray] = []

    class Rows(Recorder):
        name, row_multiple = "rows", 1

        def consume(self, block: Block) -> None:
            log.append(("rows", block.start, block.stop))

    class Chunks(Recorder):
        name = "chunks"

        def consume(self, block: Block) -> None:
            log.append(("chunks", block.start, block.stop))
            joined.append(block.data)

    buffer = cube.copy()  # one buffer, as a live receiver's rows are views of one slab
    stream = BlockStream([Block(r, buffer[r:r + 1]) for r in range(cube.shape[0])], cube.shape, cube.dtype)
    done: list[int] = []
    with ThreadExecutor(workers) as pool:
        totals, _, _ = run(stream, [FrameTotals(), Chunks(), Rows()], executor=pool,
                           progress=lambda d, _total: done.append(d))
    np.testing.assert_array_equal(totals, cube.sum(axis=(2, 3)))  # offloaded per row on 2 workers, merged
    expected = []
    for r in range(cube.shape[0]):
        expected.append(("rows", r, r + 1))
        if (r + 1) % 4 == 0 or r + 1 == cube.shape[0]:
            expected.append(("chunks", r + 1 - ((r + 1) % 4 or 4), r + 1))
    assert log == expected
    assert all(np.shares_memory(d, buffer) for d in joined)
    row = cube[0].nbytes
    assert done[-1] == cube.nbytes and done == sorted(done)
    if workers == 1:
        assert done == [4 * row, 8 * row, 12 * row, 13 * row]  # rows count once the chunk row is written too
    else:  # the slower of the reducers' merged partials and the chunk rows
        assert all(d % row == 0 for d in done)


def test_block_rows_is_one_rule_for_every_sink():
    assert block_rows((100, 10, 64, 64), np.uint16, multiple=4, budget=10 * 10 * 64 * 64 * 2) == 8
    assert block_rows((100, 10, 64, 64), np.uint16, multiple=4, rows=5) == 8
    assert block_rows((6, 10, 64, 64), np.uint16, multiple=4) == 6
    with pytest.raises(StempressError, match="at least 1"):
        block_rows((6, 10, 64, 64), np.uint16, rows=0)


def test_unknown_executor_and_no_sinks_are_one_line_errors(cube):
    with pytest.raises(StempressError, match="unknown executor 'gpu'; choose one of inline, threads"):
        make_executor("gpu")
    with pytest.raises(StempressError, match="no sinks given; give at least one sink"):
        run(ArraySource(cube), [])


class _Refuses:
    """A sink that stops the run at its second block (as verify's check sinks do at the first problem)."""

    name = "refuses"

    def open(self, info: RunInfo) -> None:
        self.seen = 0

    def consume(self, block: Block) -> None:
        self.seen += 1
        if self.seen == 2:
            raise StempressError("stop here")

    def finish(self) -> None:
        return None


def test_a_stopped_run_closes_its_blocks_before_returning() -> None:
    """A sink that raises leaves the source's generator closed by the engine, in this thread, not suspended for the
    garbage collector to finalize in some other thread later (a decoder pool's shutdown there once deadlocked a
    thread start)."""
    cube = np.arange(6 * 2 * 3 * 3, dtype=np.uint16).reshape(6, 2, 3, 3)
    closed: list[str] = []

    def blocks(name: str):
        try:
            for r in range(cube.shape[0]):
                yield Block(r, cube[r:r + 1])
        finally:
            closed.append(name)

    with pytest.raises(StempressError, match="stop here") as raised:
        run(BlockStream(blocks("stream"), cube.shape, cube.dtype), [_Refuses()])
    assert closed == ["stream"] and raised.value is not None  # the traceback is still held: no GC helped
