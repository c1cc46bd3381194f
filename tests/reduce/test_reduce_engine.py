"""The reducer protocol and engine: one pass, any blocking, partitions that merge, streams that must be whole."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest

from stempress.data.base import ArraySource, Block
from stempress.data.suites import suite
from stempress.engine import partition_ranges
from stempress.errors import StempressError
from stempress.exec import ThreadExecutor
from stempress.reduce import (
    Annulus,
    Calibration,
    CenterOfMass,
    Mask,
    MaxPattern,
    MeanPattern,
    OutputSpec,
    Projection,
    Reducer,
    State,
    VirtualDetectors,
    default_reducers,
)
from stempress.reduce.engine import RowPass
from stempress.store.reducing import calibrate, run_reducers


class RowPeak(Reducer):
    """A non-linear test reducer: per-position maximum plus a single-valued total, through the generic base."""

    name = "row_peak"

    def outputs(self, shape, dtype):
        return {"peak": OutputSpec("position", "float64"), "total": OutputSpec("single", "float64")}

    def process(self, state: State, block: Block) -> None:
        state.buffers["peak"][state.local(block)] = block.data.max(axis=(2, 3))
        state.buffers["total"] += block.data.sum(dtype=np.float64)


def _source(name: str) -> ArraySource:
    suite_name = "counted" if name == "counted" else "smoke"
    src = next(s for s in suite(suite_name) if s.name == name)
    return ArraySource(src.read_rows(0, src.shape[0]), name=name, metadata=src.metadata)


@pytest.fixture(scope="module", params=["4D_Diff", "4D_Diff-2x2-binning", "counted"])
def source(request) -> ArraySource:
    return _source(request.param)


def _reducers(source: ArraySource) -> list[Reducer]:
    return [*default_reducers(calibrate(source, sample_rows=None)), MaxPattern(), RowPeak()]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert a[name][key].dtype == b[name][key].dtype
            assert np.array_equal(a[name][key], b[name][key]), f"{name}/{key} differs"


def test_results_do_not_depend_on_blocking_or_partitions(source):
    reducers = _reducers(source)
    whole = run_reducers(source, reducers)
    for rows in (1, 7):
        _assert_identical(whole, run_reducers(source, reducers, rows=rows))
    for workers in (2, 3):
        with ThreadExecutor(workers) as pool:
            _assert_identical(whole, run_reducers(source, reducers, rows=2, executor=pool))
    cube = source.array
    assert np.array_equal(whole["row_peak"]["peak"], cube.max(axis=(2, 3)))
    assert float(whole["row_peak"]["total"]) == float(cube.sum(dtype=np.float64))


def test_stream_of_blocks_in_any_order_equals_the_source():
    src = _source("4D_Diff")
    reducers = _reducers(src)
    blocks = [Block(r, src.read_rows(r, min(r + 3, src.shape[0]))) for r in range(0, src.shape[0], 3)]
    random.Random(1).shuffle(blocks)
    seen = []
    streamed = run_reducers(iter(blocks), reducers, shape=src.shape, metadata=src.metadata,
                            progress=lambda done, total: seen.append((done, total)))
    _assert_identical(run_reducers(src, reducers, rows=8), streamed)
    total = int(np.prod(src.shape)) * np.dtype(src.dtype).itemsize  # progress counts raw bytes
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_incomplete_duplicated_or_misshapen_streams_are_refused():
    src = _source("4D_Diff")
    reducers = [MeanPattern()]
    rows = [Block(r, src.read_rows(r, r + 1)) for r in range(src.shape[0])]
    with pytest.raises(StempressError, match="never arrived"):
        run_reducers(rows[:-1], reducers, shape=src.shape)
    with pytest.raises(StempressError, match="twice"):
        run_reducers([*rows, rows[2]], reducers, shape=src.shape)
    with pytest.raises(StempressError, match="expected"):
        run_reducers([Block(0, src.read_rows(0, 1)[..., :-1])], reducers, shape=src.shape)
    with pytest.raises(StempressError, match="shape="):
        run_reducers(rows, reducers)
    with pytest.raises(StempressError, match="outside"):
        run_reducers([Block(src.shape[0], src.read_rows(0, 1))], reducers, shape=src.shape)
    with pytest.raises(StempressError, match="distinct name"):
        run_reducers(src, [MeanPattern(), MeanPattern()])


def test_partition_states_hold_only_their_rows_and_merge_only_when_adjacent():
    src = _source("counted")
    reducer = CenterOfMass(calibration=Calibration.from_metadata(src.metadata, src.shape[2:]))  # the engine's
    a = reducer.start(src.shape, src.dtype, None, rows=(0, 10))
    b = reducer.start(src.shape, src.dtype, None, rows=(10, 32))
    c = reducer.start(src.shape, src.dtype, None, rows=(20, 32))
    assert a.buffers["com_y"].shape == (10, src.shape[1])  # memory follows the partition, not the cube
    reducer.process(a, Block(0, src.read_rows(0, 10)))
    reducer.process(b, Block(10, src.read_rows(10, 32)))
    merged = reducer.merge(b, a)  # either order
    assert merged.rows == (0, 32)
    whole = run_reducers(src, [CenterOfMass()])["com"]
    assert np.array_equal(reducer.finish(merged)["com_x"], whole["com_x"])
    with pytest.raises(ValueError, match="adjacent"):
        reducer.merge(a, c)
    with pytest.raises(ValueError, match="outside"):
        reducer.process(a, Block(9, src.read_rows(9, 11)))


def test_a_pass_travels_without_its_constants_and_merges_to_the_same_bits():
    """A worker's partial pass comes back as its buffers alone (not the masks, weights and work buffers), and
    the constants derived again where it lands give the same results."""
    src = _source("counted")
    calibration = calibrate(src, sample_rows=None)
    reducers = _reducers(src)
    passes = [RowPass(reducers, src.shape, src.dtype, calibration, r) for r in ((0, 12), (12, src.shape[0]))]
    for p in passes:
        p.process(Block(p.rows[0], src.read_rows(*p.rows)))
    constants = sum(a.nbytes for s in passes[0].states for a in s.context.values() if isinstance(a, np.ndarray))
    buffers = sum(a.nbytes for s in passes[0].states for a in s.buffers.values())
    shipped = [pickle.loads(pickle.dumps(p)) for p in passes]
    assert len(pickle.dumps(passes[0])) < buffers + constants // 2
    shipped[0].merge(shipped[1])
    _assert_identical(run_reducers(src, reducers, calibration=calibration), shipped[0].finish())


def test_a_pass_like_another_shares_its_constants_and_gives_the_same_bits():
    """A stream's partial per block shares the run's masks and weights (deriving them cost more than reducing a
    row); a reducer with its own ``start`` (Bragg peaks' NaN padding) still starts its own way."""
    from stempress.reduce.diffraction import BraggPeaks

    src = _source("counted")
    calibration = calibrate(src, sample_rows=None)
    reducers = [*_reducers(src), BraggPeaks(threshold=2.0)]
    template = RowPass(reducers, src.shape, src.dtype, calibration, (0, src.shape[0]))
    rows = (3, 5)
    alike = RowPass(reducers, src.shape, src.dtype, calibration, rows, like=template)
    alone = RowPass(reducers, src.shape, src.dtype, calibration, rows)
    assert all(a.context is t.context for a, t, r in zip(alike.states, template.states, reducers, strict=True)
               if not isinstance(r, BraggPeaks))
    assert alike.projection is not template.projection and alike.projection._buf is not template.projection._buf
    for p in (alike, alone):
        p.process(Block(rows[0], src.read_rows(*rows)))
    for a, b in zip(alone.states, alike.states, strict=True):  # a partial's buffers: finish needs the whole scan
        assert a.buffers.keys() == b.buffers.keys()
        assert all(np.array_equal(a.buffers[k], b.buffers[k], equal_nan=True) for k in a.buffers)
    other = RowPass(reducers[:2], src.shape, src.dtype, calibration, rows, like=template)  # not the same run
    assert other.states[0].context is not template.states[0].context


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_counts_give_the_bits_of_their_float64_copy_whatever_the_blocking(dtype):
    """1-bit and 12-bit-like counts (a few bright frames among them) through the default reducers: the float32
    window, the byte sums and the float64 fallback give exactly what the same cube as float64 gives, for any block
    size or worker count."""
    rng = np.random.default_rng(10)
    yy, xx = np.indices((48, 48))
    disk = (yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 25
    cube = rng.poisson(np.where(disk, 3.0, 0.1), size=(6, 40, 48, 48))
    cube = np.minimum(cube, 1) if dtype == np.uint8 else np.minimum(cube * 300, 4095)
    cube[2, 5] = 255 if dtype == np.uint8 else 65535  # a chunk of the byte path's floats; a float64 fallback
    cube = cube.astype(dtype)
    calibration = Calibration(centre_y=23.5, centre_x=23.5, bf_radius_px=5.0, det_shape=(48, 48))
    reducers = default_reducers(calibration)
    want = run_reducers(ArraySource(cube.astype(np.float64)), reducers, calibration=calibration)
    _assert_identical(want, run_reducers(ArraySource(cube), reducers, calibration=calibration, rows=1))
    with ThreadExecutor(2) as pool:
        _assert_identical(want, run_reducers(ArraySource(cube), reducers, calibration=calibration, rows=2,
                                             executor=pool))


def test_partition_ranges_cover_the_scan_without_empty_parts():
    assert partition_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert partition_ranges(2, 5) == [(0, 1), (1, 2)]
    assert partition_ranges(10, 3, multiple=4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(StempressError):
        partition_ranges(4, 0)


def test_a_reducer_returning_something_undeclared_is_caught():
    class Liar(RowPeak):
        name = "liar"

        def finish(self, state):
            return {"peak": state.buffers["peak"][:1], "total": state.buffers["total"]}

    with pytest.raises(ValueError, match="declared"):
        run_reducers(_source("counted"), [Liar()])


def test_projection_is_exact_for_bright_frames_and_large_integer_weights():
    rng = np.random.default_rng(3)
    cube = rng.integers(40000, 65535, size=(3, 5, 24, 20), dtype=np.uint16)  # ~3e7 counts/frame > 2**24
    yy, xx = np.indices((24, 20))
    weights = np.stack([np.ones(480), (yy * 1000 - xx * 7).ravel(), (yy % 2).ravel()], axis=1).astype(float)
    projection = Projection(weights, cube.dtype, cube.shape)
    assert projection.exact32
    acc = np.zeros(480)
    got = projection.apply(cube, [acc])
    want = np.einsum("abp,pk->abk", cube.reshape(3, 5, -1).astype(np.int64), weights.astype(np.int64))
    assert np.array_equal(got, want.astype(np.float64))
    assert np.array_equal(acc, cube.reshape(15, -1).sum(axis=0, dtype=np.int64).astype(np.float64))
    assert not projection.exact32  # switched to float64 after the first bright frame


def test_weights_inside_a_window_of_the_detector_multiply_only_there_with_the_same_bits():
    """A disk's weights (a CoM) touch a box of the detector only: the float32 product keeps to the box (a total over
    every pixel is the frame's sum apart), bright frames (over 2**24 counts, but not inside the box, or inside it
    too) still come out exact."""
    rng = np.random.default_rng(5)
    cube = rng.poisson(3.0, size=(2, 6, 24, 16)).astype(np.uint16)
    cube[1, :3] = rng.integers(60000, 65536, size=(3, 24, 16))  # bright everywhere: redone in float64
    yy, xx = np.indices((24, 16))
    disk = (yy - 12) ** 2 + (xx - 8) ** 2 < 16
    box = (yy >= 9) & (yy < 16) & (xx >= 5) & (xx < 12)
    # bright outside the box only (odd counts, so a float32 total over 2**24 would round): float32 over the box, the
    # frame total redone in float64
    cube[0, :3] = np.where(box, cube[0, :3], rng.integers(60000, 65536, size=(3, 24, 16)))
    # 15 * the disk: odd products whose sums pass 2**24 (and round) once the window's sum passes 2**24 / 18
    weights = np.stack([disk, disk * (yy * 100 - 1200), disk * (xx - 8), disk * 15], axis=-1).reshape(-1, 4)
    weights = weights.astype(float)
    want = np.einsum("abp,pk->abk", cube.reshape(2, 6, -1).astype(np.int64), weights.astype(np.int64))
    for extra in (np.empty((24 * 16, 0)), np.ones((24 * 16, 1)), 1.0 - disk.reshape(-1, 1)):  # + a total, HAADF
        w = np.c_[weights, extra]
        projection = Projection(w, cube.dtype, cube.shape)
        assert projection._columns.box == (9, 16, 5, 12)
        assert (projection._columns.background is None) == (extra.shape[1] == 0)
        assert np.array_equal(projection.apply(cube), np.einsum("abp,pk->abk", cube.reshape(2, 6, -1).astype(
            np.int64), w.astype(np.int64)).astype(np.float64))
    outside = Projection(weights, cube.dtype, cube.shape)
    assert np.array_equal(outside.apply(cube[:1]), want[:1].astype(np.float64))
    assert outside.exact32  # bright only outside the box: float32 still


def test_a_window_nearly_as_wide_as_the_detector_is_multiplied_in_place_over_whole_rows():
    """A wide window: its detector rows in the frames' float32 copy cost less than copying it out; the frame total is
    then the rows' sum plus the rows above and below, each checked against 2**24 (odd counts over it outside the
    rows are redone in float64); the bits are the exact integers'."""
    rng = np.random.default_rng(9)
    cube = rng.poisson(3.0, size=(2, 6, 40, 16)).astype(np.uint16)
    yy, xx = np.indices((40, 16))
    ellipse = ((yy - 21) / 3.5) ** 2 + ((xx - 8) / 7) ** 2 < 1
    rows = (yy >= 18) & (yy < 25)
    cube[0] = np.where(rows, cube[0], rng.integers(60000, 65536, size=(6, 40, 16)))
    cube[1, :2] = 65000
    weights = np.stack([ellipse, ellipse * (xx - 8), np.ones((40, 16))], axis=-1).reshape(-1, 3).astype(float)
    projection = Projection(weights, cube.dtype, cube.shape)
    assert projection._columns.box == (18, 25, 2, 15) and projection._columns.band == (True, True)
    want = np.einsum("abp,pk->abk", cube.reshape(2, 6, -1).astype(np.int64), weights.astype(np.int64))
    assert np.array_equal(projection.apply(cube), want.astype(np.float64))


def test_the_float32_pattern_sum_is_flushed_before_a_pixel_reaches_2_to_the_24():
    """Rows of 300 frames near the largest uint16 count: the pattern's float32 running sum would pass 2**24 after 256
    frames; it goes into the float64 sums before that, and the frames themselves stay on the float32 path."""
    cube = np.random.default_rng(6).integers(60000, 65536, size=(2, 300, 4, 4), dtype=np.uint16)
    cube[1, ::7] = 3
    weights = np.stack([np.ones(16), np.arange(16) % 4 == 1], axis=1).astype(float)
    projection = Projection(weights, cube.dtype, cube.shape)
    pattern = np.zeros(16)
    got = projection.apply(cube, [pattern])
    assert projection.exact32
    assert np.array_equal(pattern, cube.reshape(-1, 16).sum(axis=0, dtype=np.int64).astype(np.float64))
    want = np.einsum("abp,pk->abk", cube.reshape(2, 300, -1).astype(np.int64), weights.astype(np.int64))
    assert np.array_equal(got, want.astype(np.float64))


@pytest.mark.parametrize("top", [1, 15])
def test_sums_of_byte_counts_over_every_pixel_are_taken_on_the_bytes_with_the_same_bits(top):
    """1-bit (and other small 8-bit) counts: the frame totals and the pattern add up in the bytes themselves (no
    byte's sum passes 255: in groups, and flushed in time over rows of 300 frames); a chunk holding larger counts
    goes the float32 way; the bits are those of exact integer sums either way."""
    rng = np.random.default_rng(7)
    cube = np.minimum(rng.poisson(3.0 * top, size=(2, 300, 32, 32)), top).astype(np.uint8)
    cube[1, 32:35] = 100  # a chunk with counts too large for its bytes
    yy, xx = np.indices((32, 32))
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2 < 25).ravel()
    weights = np.stack([disk, 1 - disk, disk * (yy.ravel() - 16), np.ones(1024)], axis=1).astype(float)
    projection = Projection(weights, cube.dtype, cube.shape)
    assert projection._byte_top(cube[0, :16]) == top and projection._byte_top(cube[1, 32:48]) is None
    pattern = np.zeros(1024)
    got = projection.apply(cube, [pattern])
    assert projection.exact32
    want = np.einsum("abp,pk->abk", cube.reshape(2, 300, -1).astype(np.int64), weights.astype(np.int64))
    assert np.array_equal(got, want.astype(np.float64))
    assert np.array_equal(pattern, cube.reshape(-1, 1024).sum(axis=0, dtype=np.int64).astype(np.float64))


def test_weights_whose_digits_or_remainder_are_zero_need_no_column():
    """30 = 6 * 5 + 0: a large weight's low digit can be all zero, and a constant weight is all background."""
    cube = np.random.default_rng(8).poisson(2.0, size=(2, 5, 16, 16)).astype(np.uint16)
    weights = np.stack([np.where(np.arange(256) % 3 == 0, 30.0, 0.0), np.full(256, 30.0)], axis=1)
    projection = Projection(weights, cube.dtype, cube.shape)
    assert projection._columns.w32.shape[1] == 8  # the window's ones and one digit, padded
    want = np.einsum("abp,pk->abk", cube.reshape(2, 5, -1).astype(np.int64), weights.astype(np.int64))
    assert np.array_equal(projection.apply(cube), want.astype(np.float64))


def test_projection_uses_float32_exactly_for_counts_and_float64_otherwise():
    rng = np.random.default_rng(4)
    cube = rng.poisson(3.0, size=(4, 6, 16, 16)).astype(np.uint16)
    yy, xx = np.indices((16, 16))
    weights = np.stack([(yy < 8).ravel(), (yy - 8).ravel(), (xx - 8).ravel()], axis=1).astype(float)
    want = np.einsum("abp,pk->abk", cube.reshape(4, 6, -1).astype(np.int64), weights.astype(np.int64))
    fast = Projection(weights, cube.dtype, cube.shape)
    assert fast.exact32 and fast.work == np.float32
    assert np.array_equal(fast.apply(cube), want.astype(np.float64))
    soft = weights * 0.3
    slow = Projection(soft, cube.dtype, cube.shape)
    assert not slow.exact32
    np.testing.assert_allclose(slow.apply(cube), want * 0.3, rtol=1e-12, atol=1e-9)
    as_float = Projection(weights, np.dtype(np.float32), cube.shape)
    assert not as_float.exact32


def test_standalone_process_gives_the_same_bits_as_the_fused_pass():
    src = _source("4D_Diff")
    cal = calibrate(src, sample_rows=None)
    fused = run_reducers(src, default_reducers(cal), rows=3)
    alone = VirtualDetectors([Annulus("BF", 0, 1, "bf"), Mask("left", np.tri(64, 64, dtype=bool))],
                             calibration=cal)
    state = alone.start(src.shape, src.dtype)
    for r in range(0, src.shape[0], 5):
        alone.process(state, Block(r, src.read_rows(r, min(r + 5, src.shape[0]))))
    assert np.array_equal(alone.finish(state)["BF"], fused["virtual"]["BF"])


def test_engine_defaults_calibration_from_metadata_and_reports_params():
    src = _source("counted")
    reducers = _reducers(src)
    for reducer in reducers:
        json.dumps(reducer.params())
    meta = Calibration.from_metadata(src.metadata, src.shape[2:])
    # with no calibration given the engine uses the metadata's; radii in px need nothing more
    results = run_reducers(src.array, [VirtualDetectors([Annulus("disk", 0, 5)])])
    mask = VirtualDetectors([Annulus("disk", 0, 5)]).masks(src.shape[2:], meta)["disk"]
    want = np.einsum("abij,ij->ab", src.array.astype(np.int64), mask.astype(np.int64))
    assert np.array_equal(results["virtual"]["disk"], want.astype(np.float64))


def test_arbitrary_float_data_keeps_block_independent_bits_and_partitions_agree_to_rounding():
    rng = np.random.default_rng(5)
    cube = (rng.random((9, 11, 40, 40)) ** 3 * 100).astype(np.float32)  # values on no common grid
    reducers = default_reducers(Calibration(19.7, 20.2, 8.0, det_shape=(40, 40)))
    whole = run_reducers(cube, reducers)
    _assert_identical(whole, run_reducers(cube, reducers, rows=1))
    _assert_identical(whole, run_reducers(cube, reducers, rows=7))
    with ThreadExecutor(3) as pool:
        parts = run_reducers(cube, reducers, rows=2, executor=pool)
    for name in whole:
        for key in whole[name]:
            np.testing.assert_allclose(parts[name][key], whole[name][key], rtol=1e-13, atol=0)
    assert np.array_equal(parts["virtual"]["BF"], whole["virtual"]["BF"])  # per-position outputs never merge sums


def test_names_that_moved_up_a_layer_say_where_they_went():
    import stempress.store.reducing as reducing

    for name in ("run_reducers", "calibrate"):
        with pytest.raises(ImportError, match=f"moved to stempress.store.reducing: use .from stempress.store.reducing "
                                              f"import {name}."):
            exec(f"from stempress.reduce import {name}", {})
        assert callable(getattr(reducing, name))
