"""Every reducer gives the same bits from dense frames and from electron events (in memory, a stempy file, a
LiberTEM raw_csr set), for blocks of 1, 7 and all scan rows, for partitions and for a stream of event blocks.

Why exact equality everywhere, floats included: an event source hands the engine the same dense blocks (same
dtype, same values) as the cube, and the engine's arithmetic per position does not depend on the blocking
(chunks aligned to scan rows; counts summed exactly), so any difference is a bug, not rounding.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import stempress
from stempress.data.base import ArraySource, Block, Dataset4D
from stempress.events import (
    EventReader,
    Events,
    EventsSource,
    RawCsrSource,
    StempySource,
    dense_from_events,
    iter_events,
    write_raw_csr,
    write_stempy,
)
from stempress.exec import ThreadExecutor
from stempress.reduce.calibration import Calibration
from stempress.reduce.diffraction import BraggPeaks, RadialProfile
from stempress.reduce.imaging import (
    CenterOfMass,
    Mask,
    MaxPattern,
    MeanPattern,
    VirtualDetectors,
    abf,
    default_detectors,
)
from stempress.reduce.protocol import Reducer
from stempress.store.reducing import run_reducers

DET = (24, 26)
CAL = Calibration(11.3, 12.6, 3.2, det_shape=DET)
HOT = (1, 24)  # a hot pixel beyond the default CoM mask (3 BF radii = 9.6 px)
EVENT_KINDS = ("events", "stempy", "raw_csr")


def _cube(seed: int = 7) -> np.ndarray:
    """Counted frames (uint8, counts of a few): a BF disk, four Bragg spots that drift with the scan, a faint
    background, a hot pixel, and one empty frame."""
    rng = np.random.default_rng(seed)
    sy, sx = 9, 10
    yy, xx = np.indices(DET, dtype=np.float64)
    r = np.hypot(yy - CAL.centre_y, xx - CAL.centre_x)
    lam = np.broadcast_to(np.where(r < CAL.bf_radius_px, 3.0, 0.03), (sy, sx, *DET)).copy()
    shift = np.stack(np.meshgrid(np.linspace(-1, 1, sy), np.linspace(-1, 1, sx), indexing="ij"), -1)
    for dy, dx in ((7.5, 0.0), (-7.5, 0.0), (0.0, 8.0), (0.0, -8.0)):
        cy = CAL.centre_y + dy + shift[..., 0, None, None]
        cx = CAL.centre_x + dx + shift[..., 1, None, None]
        lam += 6.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
    cube = rng.poisson(lam).astype(np.uint8)
    cube[..., HOT[0], HOT[1]] += 9
    cube[4, 5] = 0
    return cube


def _sets(cal: Calibration) -> dict[str, list[Reducer]]:
    """Reducer sets run in one pass each: integer weights (the engine's exact float32 path) and float weights
    (float64 path). Every concrete reducer class of the package must appear here."""
    weighted = Mask("weighted", np.linspace(0.0, 2.0, DET[0] * DET[1]).reshape(DET))
    return {
        "integer": [MeanPattern(), MaxPattern(),
                    VirtualDetectors([*default_detectors(cal), abf()], calibration=cal),
                    CenterOfMass(calibration=cal), CenterOfMass(mask_radius=None, calibration=cal, name="com_all"),
                    RadialProfile(8, calibration=cal), BraggPeaks(threshold=2.0, max_peaks=6),
                    BraggPeaks(threshold=0.3, relative=True, name="bragg_relative")],
        "float": [VirtualDetectors([weighted], calibration=cal, name="weighted"),
                  RadialProfile(5, max_radius=7.5, calibration=cal, name="radial_float")],
    }


def _package_reducers() -> set[type]:
    """Every concrete ``Reducer`` subclass defined anywhere in stempress (all modules imported first)."""
    for info in pkgutil.walk_packages(stempress.__path__, "stempress."):
        if not info.name.endswith("__main__"):  # running the CLI is not importing it
            importlib.import_module(info.name)
    found, todo = set(), [Reducer]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("stempress.") and not inspect.isabstract(sub):
                found.add(sub)
    return found


def _assert_identical(want: dict, got: dict) -> None:
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].keys() == got[name].keys(), name
        for key, a in want[name].items():
            b = got[name][key]
            assert a.dtype == b.dtype and a.shape == b.shape, f"{name}/{key}"
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{name}/{key} differs"


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    return _cube()


@pytest.fixture(scope="module")
def sources(cube, tmp_path_factory) -> dict[str, Dataset4D]:
    dense = ArraySource(cube, name="counted")
    folder = tmp_path_factory.mktemp("events")
    out = {"dense": dense, "events": EventsSource(Events.from_source(dense, rows=4)),
           "stempy": StempySource(write_stempy(dense, folder / "cube.h5", rows=4)),
           "raw_csr": RawCsrSource(write_raw_csr(dense, folder / "cube.toml", rows=4))}
    yield out
    out["stempy"].close()
    out["raw_csr"].close()


@pytest.fixture(scope="module")
def reference(sources) -> dict[str, dict]:
    """The dense cube reduced in one block: what every other way of feeding the reducers must give."""
    return {key: run_reducers(sources["dense"], reducers, rows=sources["dense"].shape[0], calibration=CAL)
            for key, reducers in _sets(CAL).items()}


def test_every_reducer_in_the_package_is_covered_here():
    covered = {type(r) for reducers in _sets(CAL).values() for r in reducers}
    missing = _package_reducers() - covered
    assert not missing, (f"reducers {sorted(c.__qualname__ for c in missing)} are not checked on event input; "
                         "add them to _sets() in this file")


def test_the_event_sources_really_are_events_of_the_same_cube(cube, sources):
    for kind in EVENT_KINDS:
        source = sources[kind]
        assert isinstance(source, EventReader), kind
        assert source.shape == cube.shape and source.dtype == cube.dtype, kind
        block = source.read_events(2, 5)
        assert block.n_electrons == int(cube[2:5].sum()), kind
        assert np.array_equal(dense_from_events(block), cube[2:5]), kind


def test_the_reference_results_are_not_trivial(reference, cube):
    out = reference["integer"]
    assert out["bragg"]["count"].min() == 0 and out["bragg"]["count"].max() >= 4  # the empty frame has none
    assert np.array_equal(out["max_pattern"]["max"], cube.max(axis=(0, 1)))
    assert np.isfinite(out["com"]["rotation_deg"])
    assert not np.array_equal(out["com_all"]["com_x"], out["com"]["com_x"])  # the masks differ (hot pixel)
    assert out["radial"]["profile"].max() > 0 and out["virtual"]["BF"].max() > 0


@pytest.mark.parametrize("rows", [1, 7, None])
@pytest.mark.parametrize("kind", ["dense", *EVENT_KINDS])
def test_event_input_gives_the_dense_results_bit_for_bit(sources, reference, kind, rows):
    for key, reducers in _sets(CAL).items():
        _assert_identical(reference[key], run_reducers(sources[kind], reducers, rows=rows, calibration=CAL))


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_event_input_in_partitions_gives_the_dense_results(sources, reference, kind):
    for key, reducers in _sets(CAL).items():
        with ThreadExecutor(3) as pool:
            _assert_identical(reference[key], run_reducers(sources[kind], reducers, rows=2, calibration=CAL,
                                                           executor=pool))


def test_a_stream_of_event_blocks_gives_the_dense_results(sources, reference):
    """A live receiver hands over events block by block (here: 4 rows, the last block short)."""
    for key, reducers in _sets(CAL).items():
        blocks = (Block(b.start, dense_from_events(b)) for b in iter_events(sources["stempy"], rows=4))
        _assert_identical(reference[key], run_reducers(blocks, reducers, shape=sources["stempy"].shape,
                                                       calibration=CAL))
