"""compress: bit-exact round trips through plain h5py, the EMD layout other readers open, and crash safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (plain readers need the plugin filters registered)
import numpy as np
import pytest
from rsciio.emd import file_reader as rsciio_emd_reader

from prismatic_file import Q_STEP_PER_A, R_STEP_A, write_prismatic
from real_data import real_file
from stempress.codecs.catalog import get_codec
from stempress.codecs.chunk_codec import direct_chunk_reason
from stempress.cores import resolve_workers
from stempress.data.base import ArraySource, Dataset4D
from stempress.data.calibration import Calibration
from stempress.data.checksums import CHECKSUM_GROUP
from stempress.data.emd import CODEC_ATTR
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.store import DEFAULT_CODEC, EMD_DATA_PATH, PLAIN_DATA_PATH, compress, verify
from stempress.store.compress import direct_codecs

CODECS = ["gzip_6", "blosc_zstd", "bitshuffle_lz4", "zstd_3", "lzf"]
EXAMPLE = "py4DSTEM_size2x3x4x5.h5"


def whole(source: Dataset4D) -> np.ndarray:
    return source.read_rows(0, source.shape[0])


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def assert_bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(bits(got), bits(want))


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".partial"))


def open_spec(spec: str) -> Dataset4D:
    """A source by short name: synthetic specs as they are, real files from the shared folder (or skip)."""
    if spec.startswith("synthetic:"):
        return open_source(spec)
    name, _, scan = spec.partition("@")
    shape = tuple(int(v) for v in scan.split("x")) if scan else None
    return open_source(real_file(name), scan_shape=shape)  # type: ignore[arg-type]


SOURCES = ["synthetic:smoke/4D_Diff", EXAMPLE, "smoke_test.emd", "001_4x2_6bit.mib@4x2",
           "002_4x2_6bit_roi128.mib@4x2"]


@pytest.mark.parametrize("spec", SOURCES)
@pytest.mark.parametrize("codec", CODECS)
def test_plain_h5py_reads_back_the_source_bit_for_bit(tmp_path, spec, codec):
    with open_spec(spec) as source:
        out = tmp_path / "cube.h5"
        report = compress(source, out, codec=codec, chunks=(2, 3, 64, 48), workers=2)
        with h5py.File(out, "r") as f:
            stored = f[EMD_DATA_PATH]
            assert_bit_exact(stored[()], whole(source))
            assert stored.chunks == tuple(min(c, n) for c, n in zip((2, 3, 64, 48), source.shape, strict=True))
            assert CHECKSUM_GROUP in f
        assert report.codec == codec and report.path == out and report.workers == 2
        assert report.raw_bytes == whole(source).nbytes and report.file_bytes == out.stat().st_size
        assert report.direct == (direct_chunk_reason(get_codec(codec), source.dtype) is None)
        assert codec != "lzf" or not report.direct  # lzf has no chunk codec: the filter-pipeline fallback
        assert (report.fallback_reason is None) == report.direct
        assert partials(tmp_path) == []


def test_fallback_codec_says_why_and_still_stores_checksums(tmp_path):
    source = open_source("synthetic:smoke/4D_Diff")
    report = compress(source, tmp_path / "lzf.h5", codec="lzf")
    assert not report.direct and "lzf" in report.fallback_reason and "filter pipeline" in report.summary()
    assert verify(report.path, against=source).checksums


def test_plain_layout_puts_the_cube_at_the_study_path(tmp_path):
    source = open_source("synthetic:smoke/4D_Diff")
    report = compress(source, tmp_path / "plain.h5", layout="plain")
    assert report.dataset_path == PLAIN_DATA_PATH
    with h5py.File(report.path, "r") as f:
        assert_bit_exact(f[PLAIN_DATA_PATH][()], whole(source))
        assert "emd_group_type" not in f.attrs
        assert f[PLAIN_DATA_PATH].parent.attrs["R_pixel_size"] == source.metadata["R_pixel_size"]
    again = open_source(report.path)
    assert again.metadata["format"] == "emd-study"
    custom = compress(source, tmp_path / "custom.h5", layout="plain", dataset_path="entry/cube")
    with h5py.File(custom.path, "r") as f:
        assert_bit_exact(f["/entry/cube"][()], whole(source))


def _walk(f: h5py.File) -> dict[str, h5py.HLObject]:
    items: dict[str, h5py.HLObject] = {"/": f}

    def add(name: str, obj: h5py.HLObject) -> None:  # visititems stops at the first non-None return
        items["/" + name] = obj

    f.visititems(add)
    return items


def _type(obj: h5py.HLObject, key: str | None = None) -> tuple:
    """HDF5 type class, and for strings whether variable-length and the character set: what readers decode by."""
    tid = h5py.h5a.open(obj.id, key.encode()).get_type() if key else obj.id.get_type()
    if isinstance(tid, h5py.h5t.TypeStringID):
        return ("string", tid.is_variable_str(), tid.get_cset())
    return (type(tid).__name__, tid.dtype.kind)


def test_emd_layout_mirrors_the_py4dstem_example_object_for_object(tmp_path):
    example = real_file(EXAMPLE)
    with open_source(example) as source:
        out = compress(source, tmp_path / "ours.h5", codec="blosc_zstd").path
    ours_only = {CODEC_ATTR, "stempress_metadata"}
    with h5py.File(example, "r") as want_f, h5py.File(out, "r") as got_f:
        want, got = _walk(want_f), _walk(got_f)
        assert set(got) - set(want) == {"/stempress", "/stempress/checksums"} | {
            p for p in got if p.startswith(f"/{CHECKSUM_GROUP}/")}
        assert set(want) <= set(got)
        for path, w in want.items():
            g = got[path]
            assert type(g) is type(w), path
            assert set(w.attrs) <= set(g.attrs) and set(g.attrs) - set(w.attrs) <= ours_only, path
            for key in w.attrs:
                assert _type(g, key) == _type(w, key), (path, key)
                if key not in ("UUID", "authoring_program"):
                    assert np.array_equal(np.asarray(g.attrs[key]), np.asarray(w.attrs[key])), (path, key)
            if isinstance(w, h5py.Dataset):
                assert _type(g) == _type(w) and g.shape == w.shape, path
                assert np.array_equal(np.asarray(g[()]), np.asarray(w[()])), path
        assert got_f.attrs["authoring_program"] == "stempress"
        assert got_f.attrs["UUID"] != want_f.attrs["UUID"]


def test_emd_layout_reads_back_with_the_same_calibration(tmp_path):
    with open_source(real_file(EXAMPLE)) as source:
        report = compress(source, tmp_path / "cube.emd")
        original = source.metadata
    with open_source(report.path) as again:
        assert again.metadata["format"] == "emd-emdfile"
        assert again.metadata["calibration"] == original["calibration"]
        assert again.metadata["dims"] == original["dims"]


def test_synthetic_and_uncalibrated_sources_get_calibration_or_pixels(tmp_path):
    synthetic = open_source("synthetic:smoke/4D_Diff")
    cal = open_source(compress(synthetic, tmp_path / "syn.h5").path).metadata["calibration"]
    assert cal["R_pixel_size"] == synthetic.metadata["R_pixel_size"] and cal["R_pixel_units"] == "nm"
    assert cal["Q_pixel_size"] == synthetic.metadata["Q_pixel_size"] and cal["Q_pixel_units"] == "mrad"
    bare = ArraySource(np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5))
    again = open_source(compress(bare, tmp_path / "bare.h5").path)
    assert again.metadata["calibration"] == {"Q_pixel_size": 1.0, "R_pixel_size": 1.0, "Q_pixel_units": "pixels",
                                             "R_pixel_units": "pixels", "QR_flip": False}
    assert [d["values"] for d in again.metadata["dims"]] == [[0.0, 1.0]] * 4


def test_calibration_rejects_what_is_not_a_pixel_size():
    assert Calibration.from_metadata({"R_pixel_size": 0, "R_pixel_units": "nm"}).r_units == "pixels"
    assert Calibration.from_metadata({"R_pixel_size": float("nan")}).r_pixel_size == 1.0
    assert Calibration.from_metadata({"R_pixel_size": True}).r_pixel_size == 1.0
    cal = Calibration.from_metadata({"calibration": {"R_pixel_size": 2, "QR_rotation_degrees": 3.5, "_x": 1}})
    assert cal.r_pixel_size == 2.0 and cal.r_units == "pixels" and cal.extra == {"QR_rotation_degrees": 3.5}
    assert cal.centre_y is None and cal.checked((8, 6)).centre_x == 2.5  # no detector shape, no centre yet


def test_the_archive_stores_the_one_calibration_angles_in_mrad(tmp_path):
    """The archive's EMD calibration is the reducers' calibration: a source's rad become mrad, extras kept."""
    cube = np.arange(2 * 3 * 4 * 4, dtype=np.uint16).reshape(2, 3, 4, 4)
    md = {"calibration": {"Q_pixel_size": 0.5e-3, "Q_pixel_units": "rad", "R_pixel_size": 2.0,
                          "R_pixel_units": "A", "QR_rotation_degrees": 3.5}}
    report = compress(ArraySource(cube, metadata=md), tmp_path / "cal.emd", codec="gzip_6")
    with open_source(report.path) as again:
        stored = again.metadata["calibration"]
        assert (stored["Q_pixel_size"], stored["Q_pixel_units"]) == (pytest.approx(0.5), "mrad")
        assert (stored["R_pixel_size"], stored["R_pixel_units"], stored["QR_rotation_degrees"]) == (2.0, "A", 3.5)
        assert Calibration.from_metadata(again.metadata, (4, 4)) == Calibration.from_metadata(md, (4, 4))


@pytest.mark.parametrize("spec", ["synthetic:smoke/4D_Diff", EXAMPLE])
def test_rosettasciio_opens_our_emd_file_with_data_and_axes(tmp_path, spec):
    with open_spec(spec) as source:
        report = compress(source, tmp_path / "cube.emd", codec="bitshuffle_lz4")
        signals = rsciio_emd_reader(str(report.path))
        assert len(signals) == 1
        assert_bit_exact(np.asarray(signals[0]["data"]), whole(source))
        cal = Calibration.from_metadata(source.metadata)
    axes = signals[0]["axes"]
    assert [a["name"] for a in axes] == ["Rx", "Ry", "Qx", "Qy"]
    assert [a["scale"] for a in axes] == pytest.approx([cal.r_pixel_size] * 2 + [cal.q_pixel_size] * 2)
    assert [a["size"] for a in axes] == list(source.shape)



def test_prismatic_and_arina_calibration_survive_into_the_emd_file(tmp_path):
    """Converted files keep the calibration their source implied: Prismatic's 5 A / 0.0184 A^-1 and ARINA's
    0.8696 mrad, with the beam energy, in the EMD calibration every reader sees (RosettaSciIO's axes here)."""
    prismatic = write_prismatic(tmp_path / "si100.h5", np.random.default_rng(2).random((4, 3, 8, 6), np.float32))
    cases = [(prismatic, (R_STEP_A, Q_STEP_PER_A), ("Å", "1 / Å")),
             (real_file("test_00_master.h5"), (0.13915206, 0.1 / 0.115), ("nm", "mrad"))]
    for path, (r, q), units in cases:
        with open_source(path) as source:
            report = compress(source, tmp_path / f"{path.stem}.emd", codec="gzip_6")
        axes = rsciio_emd_reader(str(report.path))[0]["axes"]
        assert [a["scale"] for a in axes] == pytest.approx([r, r, q, q], rel=1e-6), path.name
        assert [a["units"] for a in axes] == [units[0]] * 2 + [units[1]] * 2, path.name
        with open_source(report.path) as again:
            cal = again.metadata["calibration"]
        assert (cal["R_pixel_size"], cal["Q_pixel_size"]) == pytest.approx((r, q), rel=1e-6)
    assert cal["beam_energy_eV"] == 300e3 and cal["camera_length_m"] == 0.115  # ARINA's, carried along

def test_refuses_to_overwrite_without_force_and_replaces_with_it(tmp_path):
    out = tmp_path / "cube.h5"
    out.write_bytes(b"precious")
    source = open_source("synthetic:smoke/4D_Diff")
    with pytest.raises(StempressError) as err:
        compress(source, out)
    message = str(err.value)
    assert str(out) in message and "--force" in message and "\n" not in message
    assert out.read_bytes() == b"precious"
    compress(source, out, force=True)
    assert verify(out, against=source).ok


@pytest.mark.parametrize(("codec", "words"), [("gzip_66", "unknown codec"), ("sparse_csr", "not an HDF5 filter"),
                                              ("uint8_overflow", DEFAULT_CODEC)])
def test_bad_codecs_are_one_line_errors_and_write_nothing(tmp_path, codec, words):
    with pytest.raises(StempressError, match=words):
        compress(open_source("synthetic:smoke/4D_Diff"), tmp_path / "x.h5", codec=codec)
    assert list(tmp_path.iterdir()) == []


def test_bad_layout_chunks_and_workers_are_refused(tmp_path):
    source = open_source("synthetic:smoke/4D_Diff")
    with pytest.raises(StempressError, match="layout"):
        compress(source, tmp_path / "x.h5", layout="zarr")
    with pytest.raises(StempressError, match="chunk"):
        compress(source, tmp_path / "x.h5", chunks="tiny")
    with pytest.raises(StempressError, match="workers"):
        compress(source, tmp_path / "x.h5", workers=0)
    assert list(tmp_path.iterdir()) == []
    assert resolve_workers(None) == len(os.sched_getaffinity(0))


class FailingSource(ArraySource):
    """Raises ``error`` when asked for rows at or past ``fail_at``: a crash or Ctrl-C in the middle of a write."""

    def __init__(self, array: np.ndarray, fail_at: int, error: BaseException) -> None:
        super().__init__(array)
        self.fail_at, self.error = fail_at, error

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if stop > self.fail_at:
            raise self.error
        return super().read_rows(start, stop)


@pytest.mark.parametrize("codec", ["blosc_zstd", "lzf"])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("disk on fire")])
def test_an_error_or_ctrl_c_mid_write_leaves_no_output_and_no_partial(tmp_path, codec, error):
    array = np.arange(8 * 4 * 16 * 16, dtype=np.uint16).reshape(8, 4, 16, 16)
    source = FailingSource(array, fail_at=5, error=error)
    with pytest.raises(type(error)):
        compress(source, tmp_path / "cube.h5", codec=codec, chunks=(2, 2, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_raw_bytes_up_to_the_total(tmp_path):
    source = open_source("synthetic:smoke/4D_Diff")
    calls: list[tuple[int, int]] = []
    compress(source, tmp_path / "cube.h5", chunks=(2, 8, 64, 64), progress=lambda d, t: calls.append((d, t)))
    total = whole(source).nbytes
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_auto_benchmarks_the_source_and_reports_its_choice(tmp_path):
    from stempress.bench.recommend import compress_auto

    source = open_source("synthetic:smoke/4D_Diff")
    with pytest.raises(StempressError, match="compress_auto"):  # the store does not benchmark: one layer too low
        compress(source, tmp_path / "auto.h5", codec="auto")
    report = compress_auto(source, tmp_path / "auto.h5")
    assert report.codec in direct_codecs() and report.direct
    assert report.chosen_why and "Measured on" in report.chosen_why
    assert verify(report.path, against=source).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.h5"]  # the benchmark's scratch folder is gone


def _dead_pid() -> int:
    """The id of a process that has exited (and was reaped), so no live writer has it."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_stale_partials_of_the_same_output_are_removed_but_live_and_foreign_ones_stay(tmp_path):
    from stempress.atomic import HOST_TAG

    out = tmp_path / "cube.h5"
    stale = tmp_path / f".cube.h5.{_dead_pid()}-{HOST_TAG}.abcd1234.partial"
    live = tmp_path / f".cube.h5.{os.getpid()}-{HOST_TAG}.live_123.partial"  # a write in progress (this process)
    elsewhere = tmp_path / f".cube.h5.{_dead_pid()}-0badf00d.abcd1234.partial"  # another host: cannot tell
    other = tmp_path / f".cube.h5.x.h5.{_dead_pid()}-{HOST_TAG}.abcd1234.partial"  # output named cube.h5.x.h5
    for path in (stale, live, elsewhere, other):
        path.write_bytes(b"half a file")
    report = compress(open_source("synthetic:smoke/4D_Diff"), out)
    assert report.removed_partials == (stale,)
    assert not stale.exists() and live.exists() and elsewhere.exists() and other.exists()


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stempress.data.open import open_source
    from stempress.store import compress
    source = open_source(sys.argv[1])
    print("start", flush=True)
    report = compress(source, Path(sys.argv[2]), codec="gzip_6", chunks=(4, 8, 64, 64), workers=2, force=True)
    print(report.seconds, flush=True)
""")


class Killable:
    """A compress in a child process of a 16 MiB cube that gzip-6 takes about a second to write on 2 cores."""

    def __init__(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(7)
        self.source_path = tmp_path / "source.npy"
        np.save(self.source_path, rng.poisson(0.4, size=(32, 64, 64, 64)).astype(np.uint16))
        self.work = tmp_path / "out"
        self.work.mkdir()
        self.out = self.work / "cube.h5"
        self.script = tmp_path / "run.py"
        self.script.write_text(KILL_SCRIPT)

    def start(self) -> subprocess.Popen[str]:
        """Started, with the source opened: the next thing the child does is compress."""
        proc = subprocess.Popen([sys.executable, str(self.script), str(self.source_path), str(self.out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
        return proc

    def interrupt(self, delay: float, sig: signal.Signals) -> bool:
        """Send ``sig`` after ``delay`` seconds; True when the compress had finished anyway."""
        proc = self.start()
        time.sleep(delay)
        proc.send_signal(sig)
        proc.communicate(timeout=30)
        return proc.returncode == 0

    def leftovers(self) -> list[Path]:
        return sorted(p for p in self.work.iterdir() if p != self.out)


def test_sigkill_at_random_moments_leaves_no_output_or_a_complete_one(tmp_path):
    """Kill compress at random moments: OUT is absent or verifies, and the only leftovers are hidden partials
    (``.cube.h5.PID-HOST.XXXXXXXX.partial``), which the next compress of the same OUT removes."""
    job = Killable(tmp_path)
    out = job.out
    first = job.start()
    duration = float(first.communicate(timeout=120)[0])
    assert first.returncode == 0
    source = open_source(job.source_path)
    assert verify(out, against=source).ok
    picker = random.Random(11)
    outcomes = []
    for trial in range(5):
        if trial % 2 == 0:
            out.unlink(missing_ok=True)  # half the trials write a new OUT, half replace a complete one
        had_output = out.exists()
        finished = job.interrupt(picker.uniform(0.02, 1.3 * duration), signal.SIGKILL)
        outcomes.append(finished)
        if out.exists():
            report = verify(out, against=source)
            assert report.ok, report.summary()
        else:
            assert not had_output and not finished
        for leftover in job.leftovers():
            assert leftover.name.startswith(".cube.h5.") and leftover.name.endswith(".partial")
    assert not all(outcomes), "no kill landed during a write; the cube is too small for this machine"
    report = compress(source, out, force=True, chunks=(4, 8, 64, 64))
    assert job.leftovers() == []
    # a kill before the partial was created (or after the rename) leaves nothing to clean
    assert len(report.removed_partials) <= sum(not ok for ok in outcomes)


def test_ctrl_c_in_the_middle_leaves_no_output_and_no_partial(tmp_path):
    job = Killable(tmp_path)
    finished = job.interrupt(0.3, signal.SIGINT)
    if finished:  # a machine fast enough to finish first: then the output must be complete
        assert verify(job.out, against=open_source(job.source_path)).ok
    else:
        assert not job.out.exists()
    assert job.leftovers() == []


def test_entropy_poisson_on_the_callers_worker_processes_writes_what_one_process_writes(tmp_path):
    from stempress.exec.processes import ProcessExecutor

    rng = np.random.default_rng(3)
    counts = rng.poisson(0.05, size=(12, 6, 32, 32)).astype(np.uint8)
    one = compress(ArraySource(counts), tmp_path / "one.h5", codec="entropy_poisson", chunks=(2, 6, 32, 32),
                   workers=1)
    with ProcessExecutor(2) as executor:
        two = compress(ArraySource(counts), tmp_path / "two.h5", codec="entropy_poisson", chunks=(2, 6, 32, 32),
                       executor=executor)
        assert executor.pids()  # the caller's processes coded it (a pool of our own would be closed by now)
    assert (one.workers, two.workers) == (1, 2)
    with h5py.File(one.path, "r") as a, h5py.File(two.path, "r") as b:
        assert b["chunks/index"].shape[0] - 1 == 6  # six coded chunks to share out
        for name in ("chunks/words", "chunks/escapes", "chunks/index", "chunks/crc", "model/packed"):
            assert np.array_equal(a[name][...], b[name][...]), name
    report = verify(two.path, against=ArraySource(counts), workers=2)
    assert report.ok and report.compared and "of 6/6 coded chunks" in report.checks
