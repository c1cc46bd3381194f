"""Electron counting of integrating frames: accuracy against the known Poisson counts, references, errors."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from stempress.cli import main
from stempress.data.base import ArraySource, iter_blocks
from stempress.data.open import open_source
from stempress.data.synthetic import SyntheticSource, SyntheticSpec
from stempress.errors import StempressError
from stempress.events import counting, write_stempy
from stempress.events.counting import (
    METHODS,
    CountedSource,
    CountingParams,
    count_frames,
    counting_accuracy,
    load_reference,
    read_counting_record,
    true_counts,
)
from stempress.store.count import count_to_file

GAIN, OFFSET = 40.0, 100.0


def _integrating(read_noise: float, dose: float = 300.0, offset: float = OFFSET) -> SyntheticSource:
    return open_source(f"synthetic:diffraction?scan=8x8&det=64x64&mode=integrating&gain={GAIN:g}"
                       f"&read_noise={read_noise:g}&dose={dose:g}&dtype=uint16&offset={offset:g}&seed=3")


def _params(**kw) -> CountingParams:
    base = {"dark": OFFSET, "gain": GAIN, "threshold": GAIN / 2}
    return CountingParams(**{**base, **kw})


def test_true_counts_share_the_random_stream() -> None:
    # without read noise the integrating ADU are exactly gain * counts + offset of the counting twin
    src = _integrating(0.0)
    adu = src.read_rows(0, 8).astype(np.int64)
    truth = true_counts(src).read_rows(0, 8).astype(np.int64)
    assert truth.sum() > 10_000
    np.testing.assert_array_equal(adu, truth * int(GAIN) + int(OFFSET))
    # with read noise the residual is Gaussian-sized, never a whole electron
    noisy = _integrating(2.0).read_rows(0, 8).astype(np.int64)
    assert np.abs(noisy - truth * int(GAIN) - int(OFFSET)).max() < GAIN / 2


def test_low_read_noise_recovers_counts_high_noise_degrades() -> None:
    results = {}
    for rn in (2.0, 14.0):
        src = _integrating(rn)
        results[rn] = counting_accuracy(CountedSource(src, _params()), true_counts(src))
    low, high = results[2.0], results[14.0]
    assert abs(low["total_error_percent"]) < 2.0
    assert low["exact_fraction"] > 0.999 and low["exact_fraction_hit"] > 0.99
    assert low["pixel_rms"] < 0.02
    assert abs(high["total_error_percent"]) > 10.0
    assert high["exact_fraction"] < low["exact_fraction"]
    assert high["pixel_rms"] > 5 * max(low["pixel_rms"], 0.01)


def test_sigma_threshold_equals_adu_threshold() -> None:
    src = _integrating(2.0)
    a = CountedSource(src, _params(threshold=10.0, threshold_unit="sigma", read_noise=2.0)).read_rows(0, 3)
    b = CountedSource(src, _params(threshold=20.0)).read_rows(0, 3)
    np.testing.assert_array_equal(a, b)
    per_pixel = np.full((64, 64), 2.0)
    c = CountedSource(src, _params(threshold=10.0, threshold_unit="sigma", read_noise=per_pixel)).read_rows(0, 3)
    np.testing.assert_array_equal(a, c)


def test_constant_dark_offset_changes_nothing_after_subtraction() -> None:
    plain = CountedSource(_integrating(2.0, offset=100.0), _params(dark=100.0)).read_rows(0, 8)
    shifted_src = _integrating(2.0, offset=600.0)
    shifted = CountedSource(shifted_src, _params(dark=600.0)).read_rows(0, 8)
    per_pixel = CountedSource(shifted_src, _params(dark=np.full((64, 64), 600.0))).read_rows(0, 8)
    np.testing.assert_array_equal(plain, shifted)
    np.testing.assert_array_equal(plain, per_pixel)
    # forgetting the dark turns every pixel into ~15 electrons: the reference is really applied
    assert CountedSource(shifted_src, _params(dark=0.0)).read_rows(0, 1).mean() > 10


def test_per_pixel_dark_and_gain_references() -> None:
    rng = np.random.default_rng(0)
    truth = rng.poisson(2.0, size=(4, 5, 16, 16)).astype(np.int64)
    dark = rng.uniform(50, 150, size=(16, 16))
    gain = rng.uniform(20, 60, size=(16, 16))
    adu = np.rint(truth * gain + dark + rng.normal(0, 1.0, truth.shape)).astype(np.uint16)
    counted = CountedSource(ArraySource(adu), CountingParams(dark=dark, gain=gain, threshold=10.0)).read_rows(0, 4)
    np.testing.assert_array_equal(counted, truth)
    # a scalar gain that is wrong for most pixels is measurably worse
    wrong = count_frames(adu, CountingParams(dark=dark, gain=40.0, threshold=10.0))
    acc = counting_accuracy(wrong, truth)
    assert acc["exact_fraction_hit"] < 0.8 and acc["pixel_rms"] > 0.3


def test_cluster_method_merges_charge_shared_electrons() -> None:
    frames = np.zeros((2, 1, 12, 12), np.float32)
    # frame 0: one electron split 60/40 over two pixels, one whole electron elsewhere
    frames[0, 0, 3, 3], frames[0, 0, 3, 4] = 0.6 * GAIN, 0.4 * GAIN
    frames[0, 0, 9, 9] = GAIN
    # frame 1: a diagonal pair (a cluster only with connectivity 2) and two electrons in one pixel
    frames[1, 0, 5, 5], frames[1, 0, 6, 6] = 0.5 * GAIN, 0.5 * GAIN
    frames[1, 0, 1, 10] = 2 * GAIN
    src = ArraySource(frames + OFFSET)
    thr = GAIN / 4
    threshold = CountedSource(src, _params(threshold=thr)).read_rows(0, 2)
    one = CountedSource(src, _params(threshold=thr, method="cluster")).read_rows(0, 2)
    diag = CountedSource(src, _params(threshold=thr, method="cluster", connectivity=2)).read_rows(0, 2)
    summed = CountedSource(src, _params(threshold=thr, method="cluster", cluster_count="sum")).read_rows(0, 2)
    assert threshold[0, 0, 3, 3] == 1 and threshold[0, 0, 3, 4] == 0  # per-pixel rounding splits badly
    assert one[0, 0, 3, 3] == 1 and one[0, 0].sum() == 2  # centroid at the heavier pixel
    assert one[1, 0].sum() == 3 and diag[1, 0].sum() == 2  # diagonal pair is one electron at connectivity 2
    assert summed[1, 0, 1, 10] == 2 and one[1, 0, 1, 10] == 1
    assert one.dtype == np.uint16


def test_blocks_and_metadata() -> None:
    src = _integrating(2.0)
    counted = CountedSource(src, _params(dark=np.full((64, 64), OFFSET), method="cluster", connectivity=2))
    assert counted.shape == src.shape and counted.dtype == np.uint16
    whole = counted.read_rows(0, 8)
    np.testing.assert_array_equal(np.concatenate([b.data for b in iter_blocks(counted, rows=3)]), whole)
    md = counted.metadata["counting"]
    assert "lossy with respect to ADC values" in md["lossy"]
    assert md["method"] == "cluster" and md["connectivity"] == 2 and md["gain"] == GAIN
    assert md["dark"]["per_pixel"] == [64, 64] and md["dark"]["mean"] == OFFSET
    assert md["threshold"] == GAIN / 2 and md["threshold_unit"] == "adu"
    assert counted.metadata["synthetic"] is True  # the source's metadata is kept
    json.dumps(counted.metadata)


@pytest.mark.parametrize("method", METHODS)
def test_counting_in_chunks_of_frames_changes_nothing(monkeypatch, method: str) -> None:
    frames = _integrating(4.0).read_rows(0, 8)
    whole = count_frames(frames, _params(method=method))
    assert whole.sum() > 1000
    monkeypatch.setattr(counting, "_CHUNK_PIXELS", 3 * 64 * 64)  # 3 frames a chunk; 64 frames leave a remainder
    np.testing.assert_array_equal(count_frames(frames, _params(method=method)), whole)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_nan_input_is_refused(bad: float) -> None:
    frames = np.full((2, 2, 8, 8), 50.0, np.float32)
    frames[1, 1, 3, 3] = bad
    counted = CountedSource(ArraySource(frames), _params())
    counted.read_rows(0, 1)  # the clean row is fine
    with pytest.raises(StempressError, match="rows \\[1, 2\\)"):
        counted.read_rows(1, 2)
    signed = np.full((1, 1, 8, 8), -3, np.int16)
    with pytest.raises(StempressError, match="negative"):
        count_frames(signed, _params())


@pytest.mark.parametrize("kw", [
    {"dark": np.zeros((64, 63))},
    {"gain": np.ones((32, 32))},
    {"gain": np.zeros((64, 64))},
    {"gain": np.full((64, 64), np.nan)},
    {"threshold_unit": "sigma", "read_noise": np.ones(64)},
])
def test_wrong_references_are_refused_before_reading(kw) -> None:
    with pytest.raises(StempressError, match="reference"):
        CountedSource(_integrating(2.0), _params(**kw))


@pytest.mark.parametrize("kw", [
    {"method": "fast"}, {"connectivity": 3}, {"threshold": -1.0}, {"threshold_unit": "e"},
    {"threshold_unit": "sigma"}, {"cluster_count": "all"},
])
def test_bad_params_are_refused(kw) -> None:
    with pytest.raises(StempressError):
        _params(**kw)


def test_accuracy_checks_shapes_and_truth_source() -> None:
    with pytest.raises(StempressError, match="shape"):
        counting_accuracy(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 5)))
    with pytest.raises(StempressError, match="synthetic"):
        true_counts(ArraySource(np.zeros((1, 1, 4, 4), np.uint16)))
    spec = SyntheticSpec(scan=(2, 2), det=(16, 16), dose=50.0, mode="counting")
    exact = counting_accuracy(SyntheticSource(spec), SyntheticSource(spec))
    assert exact["total_error_percent"] == 0 and exact["exact_fraction"] == 1.0 and exact["pixel_rms"] == 0


def test_accuracy_matches_electrons_within_one_pixel() -> None:
    truth = np.zeros((1, 2, 8, 8), np.uint16)
    truth[0, 0, 3, 3] = 1  # counted one pixel off: not at the right pixel, but within 1 px
    truth[0, 0, 6, 1] = 2  # one of two counted in place, the other missed
    truth[0, 1, 0, 0] = 1  # counted far away: one missed, one false
    counted = np.zeros_like(truth)
    counted[0, 0, 3, 4] = 1
    counted[0, 0, 6, 1] = 1
    counted[0, 1, 7, 7] = 1
    acc = counting_accuracy(counted, truth)
    assert acc["right_pixel_fraction"] == pytest.approx(1 / 4)
    assert acc["within_1px_fraction"] == pytest.approx(2 / 4)
    assert acc["false_per_frame"] == pytest.approx(1 / 2) and acc["missed_per_frame"] == pytest.approx(2 / 2)
    assert acc["frame_rms"] == pytest.approx(np.sqrt((1**2 + 0**2) / 2))  # frame 0: 2 of 3; frame 1: 1 of 1
    # a counted electron is matched once: two true electrons next to one counted one leave one missed
    pair = np.zeros((1, 1, 8, 8), np.uint16)
    pair[0, 0, 2, 2] = pair[0, 0, 2, 4] = 1
    one = np.zeros_like(pair)
    one[0, 0, 2, 3] = 1
    assert counting_accuracy(one, pair)["within_1px_fraction"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- counting to a file, and the command


def _adu(tmp_path: Path, rows: int = 6, nan_row: int | None = None) -> Path:
    """Integrating frames of a synthetic source saved as float32 .npy (a file source, as a user has)."""
    frames = _integrating(2.0).read_rows(0, rows).astype(np.float32)
    if nan_row is not None:
        frames[nan_row, 2, 10, 10] = np.nan
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    return path


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``stempress count ...`` in this process, through the entry point that turns errors into one line."""
    monkeypatch.setattr(sys, "argv", ["stempress", "count", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _listing(folder: Path) -> list[str]:
    """What a write left in ``folder``; a folder the failed write created is removed again, so it counts as empty."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("fmt, name", [("stempy", "ev.h5"), ("raw_csr", "ev.toml")])
def test_count_to_file_reads_back_as_counted_source(tmp_path: Path, fmt: str, name: str) -> None:
    src = ArraySource(np.load(_adu(tmp_path)), name="frames")
    params = _params(dark=np.full((64, 64), OFFSET), method="cluster", connectivity=2)
    expected = CountedSource(src, params).read_rows(0, src.shape[0])
    done: list[int] = []
    report = count_to_file(src, tmp_path / name, params, rows=4, progress=lambda d, t: done.append(d))
    assert report.format == fmt and done == [4, 6]
    with open_source(tmp_path / name) as back:
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back.read_rows(0, back.shape[0]), expected)
    assert report.n_electrons == expected.sum() and report.n_events == np.count_nonzero(expected)
    assert not [p for p in _listing(tmp_path) if p.endswith(".partial")]


def test_count_to_file_records_parameters_where_readers_look(tmp_path: Path) -> None:
    src = ArraySource(np.load(_adu(tmp_path)), name="frames")
    params = _params(dark=np.full((64, 64), OFFSET), threshold=5.0, threshold_unit="sigma", read_noise=2.0)
    count_to_file(src, tmp_path / "ev.h5", params, inputs={"dark": "dark.npy"})
    count_to_file(src, tmp_path / "ev.toml", params, inputs={"dark": "dark.npy"})
    for name in ("ev.h5", "ev.toml"):
        record = read_counting_record(tmp_path / name)
        assert record["method"] == "pixel" and record["threshold"] == 5.0 and record["threshold_unit"] == "sigma"
        assert record["read_noise"] == 2.0 and record["gain"] == GAIN
        assert record["dark"] == {"per_pixel": [64, 64], "mean": OFFSET, "min": OFFSET, "max": OFFSET}
        assert record["inputs"] == {"dark": "dark.npy"} and record["source_shape"] == [6, 8, 64, 64]
        assert "lossy with respect to ADC values" in record["lossy"]
        assert record["electrons"] == CountedSource(src, params).read_rows(0, 6).sum()
    # LiberTEM reads only [params] and [raw_csr]; they are untouched, the record is its own table
    conf = tomllib.loads((tmp_path / "ev.toml").read_text())
    assert conf["params"]["filetype"] == "raw_csr" and conf["raw_csr"]["data_dtype"] == "<u2"
    assert set(conf) == {"params", "raw_csr", "stempress"}
    # stempy loads metadata/ (attributes and sub-groups) into SparseArray.metadata; the dtype is still there
    with h5py.File(tmp_path / "ev.h5", "r") as f:
        assert int(f.attrs["version"]) == 3 and f["metadata/stempress"].attrs["dtype"] == "uint16"
        assert f["metadata/stempress/counting"].attrs["method"] == "pixel"
    with pytest.raises(StempressError, match="no counting record"):
        read_counting_record(_plain_stempy(tmp_path))


def _plain_stempy(tmp_path: Path) -> Path:
    return write_stempy(ArraySource(np.ones((1, 1, 4, 4), np.uint8)), tmp_path / "plain.h5")


def test_count_command_writes_and_force_replaces(tmp_path: Path, monkeypatch, capsys) -> None:
    frames = _adu(tmp_path)
    np.save(tmp_path / "dark.npy", np.full((64, 64), OFFSET))
    out = tmp_path / "ev.h5"
    args = [frames, "--out", out, "--dark", tmp_path / "dark.npy", "--gain", "40", "--threshold", 20]
    code, stdout, err = _cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "lossy with respect to ADC values" in stdout
    expected = CountedSource(ArraySource(np.load(frames)), _params()).read_rows(0, 6)
    with open_source(out) as back:
        np.testing.assert_array_equal(back.read_rows(0, 6), expected)
    record = read_counting_record(out)
    assert record["inputs"]["dark"] == str(tmp_path / "dark.npy") and record["inputs"]["gain"] == "40"
    before = out.read_bytes()
    code, _, err = _cli(monkeypatch, capsys, *args[:-1], 60)
    assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    code, _, err = _cli(monkeypatch, capsys, *args[:-1], 60, "--force", "--method", "cluster")
    assert code == 0, err
    record = read_counting_record(out)
    assert record["threshold"] == 60 and record["method"] == "cluster"
    assert _listing(tmp_path) == ["dark.npy", "ev.h5", "frames.npy"]


def test_count_command_help_says_lossy(monkeypatch, capsys) -> None:
    code, stdout, _ = _cli(monkeypatch, capsys, "--help")
    assert code == 0
    text = " ".join(stdout.replace("│", " ").split())
    assert "Lossy with respect to ADC values" in text
    assert "sub-threshold signal" in text and "overlapping electrons" in text and "amplitudes" in text


@pytest.mark.parametrize("extra, words, nan_row", [
    (["--dark", "missing.npy"], ["dark reference", "no such file"], None),
    (["--dark", "{bad_dark}"], ["dark reference has shape (63, 64)", "(64, 64)"], None),
    (["--gain", "{zero_gain}"], ["gain reference has values <= 0"], None),
    (["--gain", "0"], ["gain reference has values <= 0"], None),
    (["--gain", "{h5}:/nothing"], ["no dataset"], None),
    (["--threshold", "-1"], ["threshold -1.0 must be", ">= 0"], None),
    (["--threshold-unit", "sigma"], ["needs the read noise", "--read-noise", "--threshold-unit adu"], None),
    (["--method", "blob"], ["counting method 'blob' is unknown"], None),
    (["--format", "raw_csr"], ["must be a .toml"], None),
    (["--out", "{tmp}/ev.toml", "--format", "stempy"], ["not .toml"], None),
    ([], ["NaN or infinite values", "rows [0, 6)"], 3),
])
def test_count_command_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys, extra, words,
                                                                nan_row) -> None:
    frames = _adu(tmp_path, nan_row=nan_row)
    np.save(tmp_path / "bad_dark.npy", np.zeros((63, 64)))
    zero_gain = np.full((64, 64), GAIN)
    zero_gain[5, 5] = 0
    np.save(tmp_path / "zero_gain.npy", zero_gain)
    with h5py.File(tmp_path / "refs.h5", "w") as f:
        f["gain"] = np.full((64, 64), GAIN)
    fill = {"bad_dark": tmp_path / "bad_dark.npy", "zero_gain": tmp_path / "zero_gain.npy", "h5": tmp_path / "refs.h5",
            "tmp": tmp_path}
    before = _listing(tmp_path)
    args = [frames, "--out", tmp_path / "out" / "ev.h5", "--dark", OFFSET, "--gain", GAIN, "--threshold", 20,
            *(e.format(**fill) for e in extra)]
    code, _, err = _cli(monkeypatch, capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), err
    for word in words:
        assert word in lines[0]
    assert _listing(tmp_path) == before or _listing(tmp_path / "out") == []


def test_count_command_names_raw_csr_when_counts_are_too_high_for_stempy(tmp_path: Path, monkeypatch, capsys) -> None:
    np.save(tmp_path / "bright.npy", np.full((2, 3, 8, 8), 300, np.uint16))  # 300 electrons per pixel at gain 1
    args = [tmp_path / "bright.npy", "--gain", 1, "--threshold", 0.5]
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", tmp_path / "out" / "ev.h5")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "up to 300 electrons" in lines[0] and "--format raw_csr" in lines[0], err
    assert _listing(tmp_path / "out") == []
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", tmp_path / "out" / "ev.toml")
    assert code == 0, err
    with open_source(tmp_path / "out" / "ev.toml") as back:
        assert int(back.read_rows(0, 2).max()) == 300


@pytest.mark.parametrize("name", ["ev.h5", "ev.toml"])
def test_failure_halfway_leaves_no_partial_output(tmp_path: Path, name: str) -> None:
    src = ArraySource(np.load(_adu(tmp_path, nan_row=4)), name="frames")
    with pytest.raises(StempressError, match=r"rows \[4, 5\)"):
        count_to_file(src, tmp_path / "out" / name, _params(), rows=1)
    assert _listing(tmp_path / "out") == []


def test_load_reference_forms(tmp_path: Path) -> None:
    assert load_reference("40", "gain") == 40.0
    np.save(tmp_path / "g.npy", np.full((4, 4), 2.0))
    np.testing.assert_array_equal(load_reference(str(tmp_path / "g.npy"), "gain"), np.full((4, 4), 2.0))
    with h5py.File(tmp_path / "refs.h5", "w") as f:
        f["cal/dark"] = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(load_reference(f"{tmp_path}/refs.h5:/cal/dark", "dark"),
                                  np.arange(16.0).reshape(4, 4))
    with pytest.raises(StempressError, match="name the dataset"):
        load_reference(str(tmp_path / "refs.h5"), "dark")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(StempressError, match="not numeric"):
        load_reference(str(tmp_path / "s.npy"), "dark")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(StempressError, match=r"not a readable \.npy"):
        load_reference(str(tmp_path / "junk.npy"), "dark")


def test_real_stempy_reads_count_output_and_its_record(tmp_path: Path) -> None:
    sparse_array = pytest.importorskip("stempy.io.sparse_array", reason="stempy is not installed here")
    src = ArraySource(np.load(_adu(tmp_path)), name="frames")
    count_to_file(src, tmp_path / "ev.h5", _params())
    array = sparse_array.SparseArray.from_hdf5(str(tmp_path / "ev.h5"))
    np.testing.assert_array_equal(array.to_dense(), CountedSource(src, _params()).read_rows(0, 6))
    assert array.metadata["stempress"]["counting"]["method"] == "pixel"


def test_real_libertem_reads_count_output(tmp_path: Path) -> None:
    api = pytest.importorskip("libertem.api", reason="LiberTEM is not installed here")
    from libertem.udf.sum import SumUDF

    src = ArraySource(np.load(_adu(tmp_path)), name="frames")
    count_to_file(src, tmp_path / "ev.toml", _params())
    ctx = api.Context.make_with("inline")
    dataset = ctx.load("raw_csr", path=str(tmp_path / "ev.toml"))
    expected = CountedSource(src, _params()).read_rows(0, 6).sum((0, 1))
    np.testing.assert_array_equal(ctx.run_udf(dataset=dataset, udf=SumUDF())["intensity"].data, expected)


# ---------------------------------------------------------------- what looks wrong is said, not written silently


def test_counting_nothing_warns_with_the_values_and_the_options_to_check(tmp_path: Path, monkeypatch, capsys) -> None:
    frames = np.random.default_rng(2).uniform(0, 0.4, (2, 3, 8, 8)).astype(np.float32)  # normalised, not ADU
    np.save(tmp_path / "norm.npy", frames)
    code, stdout, err = _cli(monkeypatch, capsys, tmp_path / "norm.npy", "--threshold", 20, "--out", tmp_path / "ev.h5")
    assert code == 0 and "0 electrons" in stdout
    warning = " ".join(err.split())
    assert "warning:" in warning and "no electrons counted" in warning
    assert f"the largest frame value is {frames.max():.4g}" in warning
    assert "exceeds 20 ADU" in warning and "--gain" in warning and "floats and the gain is the default 1" in warning
    report = count_to_file(ArraySource(np.full((1, 2, 4, 4), 90, np.uint16)), tmp_path / "dark.toml",
                           _params(dark=100.0))
    assert report.n_electrons == 0 and len(report.warnings) == 1 and "floats" not in report.warnings[0]
    assert "dark (100)" in report.warnings[0]


def test_a_guessed_scan_shape_is_reported(tmp_path: Path) -> None:
    from real_data import real_file

    params = CountingParams(gain=1.0, threshold=0.5)
    with open_source(real_file("001_4x2_6bit.mib")) as guessed:
        report = count_to_file(guessed, tmp_path / "guessed.toml", params)
    assert any("scan shape 2x4 was not given but inferred" in w and "--scan-shape" in w for w in report.warnings)
    with open_source(real_file("001_4x2_6bit.mib"), scan_shape=(4, 2)) as given:
        assert not count_to_file(given, tmp_path / "given.toml", params).warnings


def test_a_hot_pixel_that_pulls_the_beam_centre_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = np.zeros((4, 5, 24, 24), np.uint16)
    frames[..., 9:15, 9:15] = rng.poisson(0.01, (4, 5, 6, 6))  # a BF disk of a few electrons in all
    frames[..., 3, 20] = 3  # a hot pixel: 60 electrons, most of the file
    report = count_to_file(ArraySource(frames, name="sparse"), tmp_path / "ev.toml", CountingParams(threshold=0.5))
    (warning,) = report.warnings
    assert "detector pixel (3, 20) holds 60 of" in warning and "hot pixel" in warning and "--dark" in warning
    assert "sits next to it" in warning  # the mean pattern's centre lands on the hot pixel
    frames[..., 3, 20] = 0
    frames[..., 9:15, 9:15] += 1  # a bright disk, no hot pixel: nothing to say
    assert not count_to_file(ArraySource(frames), tmp_path / "fine.toml", CountingParams(threshold=0.5)).warnings


def test_stempy_much_larger_than_raw_csr_is_a_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    from real_data import real_file

    mib = real_file("001_4x2_6bit.mib")  # counts up to 63: stempy writes 63 frames per position
    args = [mib, "--scan-shape", "4x2", "--gain", 1, "--threshold", 0.5]
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", tmp_path / "ev.h5")
    warning = " ".join(err.split())
    assert code == 0 and "warning:" in warning and "(stempy) takes" in warning
    assert "the bytes of the same counts as raw_csr" in warning and "--format raw_csr" in warning
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", tmp_path / "ev.toml")
    assert code == 0 and "warning" not in err
