"""Events (pixel, count per scan position) give every integer cube back bit for bit, block by block."""

from __future__ import annotations

import numpy as np
import pytest

from real_data import real_file
from stempress.data.base import ArraySource, Block, Dataset4D, iter_blocks
from stempress.data.open import open_source
from stempress.data.suites import suite
from stempress.errors import StempressError
from stempress.events import (
    EventBlock,
    Events,
    EventsSource,
    dense_from_events,
    events_from_block,
    events_from_hits,
    iter_events,
)

BLOCK_ROWS = (1, 7, None)  # one row, an uneven split, everything at once


def crafted(dtype: str, seed: int = 0) -> np.ndarray:
    """9 scan rows (7 does not divide them) with an empty frame, a full frame and the dtype's maximum."""
    rng = np.random.default_rng(seed)
    cube = rng.poisson(0.4, size=(9, 3, 5, 6)).astype(dtype)
    cube[2, 1] = 0  # empty frame
    cube[4, 0] = rng.integers(1, 4, size=(5, 6))  # every pixel hit
    cube[8, 2, 4, 5] = np.iinfo(dtype).max
    cube[0, 0, 0, 0] = 3
    return cube


def reassemble(blocks: list[EventBlock], shape: tuple[int, ...]) -> np.ndarray:
    assert [b.start for b in blocks] == sorted(b.start for b in blocks)
    assert sum(b.shape[0] for b in blocks) == shape[0]
    return np.concatenate([dense_from_events(b) for b in blocks])


def rows_for(rows: int | None, source: Dataset4D) -> int:
    return rows or source.shape[0]


class RecordingSource(ArraySource):
    """Remembers every row range read, to prove readers stay within one block."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.reads: list[tuple[int, int]] = []

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.reads.append((start, stop))
        return super().read_rows(start, stop)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"])
@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_round_trip_is_bit_exact(dtype: str, rows: int | None) -> None:
    cube = crafted(dtype)
    source = RecordingSource(cube)
    step = rows_for(rows, source)
    blocks = list(iter_events(source, step))
    assert all(stop - start <= step for start, stop in source.reads)  # never more than one block read
    back = reassemble(blocks, cube.shape)
    assert back.dtype == cube.dtype
    np.testing.assert_array_equal(back, cube)
    events = Events.from_blocks(blocks, cube.shape, cube.dtype)
    assert events.n_events == np.count_nonzero(cube)
    assert events.n_electrons == int(cube.sum(dtype=np.uint64))
    assert events.max_count == int(np.iinfo(dtype).max)


def test_block_layout_is_csr() -> None:
    cube = crafted("uint16")
    block = events_from_block(Block(3, cube[3:6]))
    assert block.start == 3 and block.stop == 6 and block.shape == (3, 3, 5, 6)
    assert block.indptr.dtype == np.int64 and block.indptr.size == 3 * 3 + 1 and block.indptr[0] == 0
    assert block.indices.dtype == np.uint32 and block.counts.dtype == np.uint8  # max here is 3
    assert block.counts.min() > 0
    flat = cube[3:6].reshape(9, 30)
    for p in range(9):
        pixels = block.indices[block.indptr[p] : block.indptr[p + 1]]
        assert np.all(np.diff(pixels.astype(np.int64)) > 0)  # ascending, unique
        np.testing.assert_array_equal(pixels, np.flatnonzero(flat[p]))
        np.testing.assert_array_equal(block.counts[block.indptr[p] : block.indptr[p + 1]], flat[p][pixels])
    # full frame at scan (4, 0): all 30 pixels listed
    assert block.indptr[4] - block.indptr[3] == 30
    # empty frame at scan (2, 1) is outside this block; the one at position 0 of a zero block has none
    empty = events_from_block(Block(2, cube[2:3]))
    assert empty.indptr[2] == empty.indptr[1]


def test_counts_take_the_smallest_unsigned_dtype() -> None:
    cube = np.zeros((1, 2, 2, 2), np.int32)
    cube[0, 0, 0, 0] = 255
    assert events_from_block(Block(0, cube)).counts.dtype == np.uint8
    cube[0, 1, 1, 1] = 256
    block = events_from_block(Block(0, cube))
    assert block.counts.dtype == np.uint16 and block.dtype == np.int32
    assert dense_from_events(block).dtype == np.int32


def test_events_source_reads_like_a_dense_file() -> None:
    cube = crafted("uint16", seed=3)
    events = Events.from_source(ArraySource(cube), rows=4)
    source = EventsSource(events, name="crafted")
    assert isinstance(source, Dataset4D)
    assert source.shape == cube.shape and source.dtype == cube.dtype and source.max_count == 65535
    for rows in (1, 7, 9):
        np.testing.assert_array_equal(np.concatenate([b.data for b in iter_blocks(source, rows)]), cube)
    part = source.read_events(2, 5)
    assert part.start == 2 and part.shape == (3, *cube.shape[1:])
    np.testing.assert_array_equal(dense_from_events(part), cube[2:5])
    with pytest.raises(ValueError):
        source.read_rows(5, 10)


@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_synthetic_integer_cubes_round_trip(rows: int | None) -> None:
    for source in [s for s in suite("smoke") if s.dtype.kind != "f"] + suite("counted"):
        cube = source.read_rows(0, source.shape[0])
        events = Events.from_source(ArraySource(cube), rows_for(rows, source))
        assert events.n_events == np.count_nonzero(cube), source.name
        back = np.concatenate([b.data for b in iter_blocks(EventsSource(events), rows_for(rows, source))])
        assert back.dtype == cube.dtype
        np.testing.assert_array_equal(back, cube)


def test_counted_cube_is_much_smaller_as_events() -> None:
    (source,) = suite("counted")
    events = Events.from_source(source)
    dense = source.shape[0] * source.shape[1] * source.shape[2] * source.shape[3]
    assert events.counts.dtype == np.uint8
    assert events.nbytes * 10 < dense  # ~1 % of pixels hit: 5 bytes each, plus 8 per position


@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_real_merlin_round_trip(rows: int | None) -> None:
    path = real_file("001_4x2_6bit.mib")
    with open_source(path, scan_shape=(2, 4)) as source:
        cube = source.read_rows(0, 2)
        blocks = list(iter_events(source, rows_for(rows, source)))
    np.testing.assert_array_equal(reassemble(blocks, cube.shape), cube)
    assert max(b.max_count for b in blocks) == cube.max()


def test_float_is_refused_before_reading() -> None:
    class Exploding(ArraySource):
        def read_rows(self, start: int, stop: int) -> np.ndarray:
            raise AssertionError("read before the dtype was checked")

    whole = np.ones((2, 2, 3, 3), np.float32)  # whole numbers, still refused: documented policy
    with pytest.raises(StempressError, match=r"float32 data are not electron counts.*count electrons first") as exc:
        iter_events(Exploding(whole, name="binned"))
    assert "\n" not in str(exc.value) and "binned" in str(exc.value)


def test_float_nan_and_negative_blocks_are_refused_with_where() -> None:
    nan = np.zeros((2, 2, 3, 3), np.float64)
    nan[1, 0, 2, 1] = np.nan
    with pytest.raises(StempressError, match=r"NaN at scan \(6, 0\) pixel \(2, 1\).*lossless HDF5 codec"):
        events_from_block(Block(5, nan))
    negative = np.zeros((2, 2, 3, 3), np.int16)
    negative[0, 1, 1, 2] = -4
    with pytest.raises(StempressError, match=r"negative value -4 at scan \(0, 1\) pixel \(1, 2\) in int16") as exc:
        list(iter_events(ArraySource(negative)))
    assert "\n" not in str(exc.value)


def test_binned_smoke_cubes_are_refused() -> None:
    for source in suite("smoke"):
        if source.dtype.kind == "f":
            with pytest.raises(StempressError, match="not electron counts"):
                Events.from_source(source)


def test_dense_from_events_checks_dtype_and_shape() -> None:
    cube = np.zeros((1, 1, 2, 2), np.uint16)
    cube[0, 0, 1, 1] = 300
    block = events_from_block(Block(0, cube))
    with pytest.raises(StempressError, match="counts up to 300 do not fit uint8"):
        dense_from_events(block, dtype=np.uint8)
    np.testing.assert_array_equal(dense_from_events(block, (1, 4), np.uint32), cube.reshape(1, 4))
    with pytest.raises(ValueError):
        dense_from_events(block, (1, 1, 3, 2))


def test_events_from_hits_sums_repeats_and_drops_zeros() -> None:
    block = events_from_hits(0, (1, 2, 2, 3), np.uint16, positions=[1, 0, 1, 1, 0], pixels=[5, 2, 5, 0, 4],
                             counts=np.array([2, 1, 3, 0, 0], np.uint16))
    expected = np.zeros((1, 2, 2, 3), np.uint16)
    expected[0, 0].flat[2] = 1
    expected[0, 1].flat[5] = 5
    np.testing.assert_array_equal(dense_from_events(block), expected)
    assert block.n_events == 2  # the zero counts are gone
    bare = events_from_hits(0, (1, 1, 1, 4), np.uint8, positions=[0, 0, 0], pixels=[3, 3, 3])
    assert bare.counts.tolist() == [3] and bare.indices.tolist() == [3]
    with pytest.raises(StempressError, match="pixel index 4 outside a 1x4 frame"):
        events_from_hits(0, (1, 1, 1, 4), np.uint8, positions=[0], pixels=[4])
