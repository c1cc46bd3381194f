"""The command line as a user meets it: real processes, real exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from real_data import real_file


def stempress(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_codecs_lists_the_catalog_with_availability():
    result = stempress("codecs")
    assert result.returncode == 0, result.stderr
    for name in ("gzip_9", "szip", "blosc_zstd", "bitshuffle_lz4", "sparse_csr", "zstd_19", "bzip2_9"):
        assert name in result.stdout


def test_bench_on_the_smoke_suite_writes_tidy_results(tmp_path):
    out = tmp_path / "res"
    result = stempress("bench", "--suite", "smoke", "--runs", "2", "--methods", "gzip_1,blosc_zstd,sparse_csr",
                       "--chunks", "balanced,single_frame", "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out / "results.csv")
    datasets = frame["dataset"].nunique()
    assert datasets >= 2
    assert len(frame) == datasets * 2 * (2 * 2 + 1)
    assert set(frame["status"]) == {"ok"}
    assert pd.read_parquet(out / "results.parquet").shape == frame.shape
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["packages"]["h5py"] and meta["codec_libraries"]["hdf5"] and meta["protocol"] == "warm"
    assert "blosc_zstd" in result.stdout  # the closing summary table
    stats = pd.read_csv(out / "statistics.csv")
    assert set(stats["n_runs"]) == {2}
    assert not list(out.glob(".stempress-bench-*"))
    html = out / "report" / "report.html"
    assert html.exists() and "data:image/png;base64" in html.read_text()
    # `stempress report` rebuilding a deleted report.html: test_bench_reads_a_real_file_... below


def test_bench_where_nothing_succeeds_prints_the_reasons_and_one_error_line(tmp_path):
    out = tmp_path / "res"
    result = stempress("bench", "--suite", "smoke", "--runs", "1", "--methods", "gzip_9", "--chunks", "balanced",
                       "--time-limit", "0", "--out", str(out))
    assert_one_line_error(result, "no measurement succeeded", "5 skipped", "--time-limit")
    assert "Cells without a number" in result.stdout and "time limit" in result.stdout
    assert "Traceback" not in result.stderr
    rebuilt = stempress("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr


def test_report_on_a_folder_without_results(tmp_path):
    assert_one_line_error(stempress("report", str(tmp_path)), "results.csv")


def test_bench_reads_a_real_file_refuses_a_second_writer_and_to_overwrite_results(tmp_path):
    """One benchmark of a real file, its report rebuilt by ``stempress report``; a second benchmark of the same
    folder started meanwhile is refused (the folder is locked), one started after it ends needs --force."""
    emd = real_file("smoke_test.emd")
    out = tmp_path / "res"
    args = ("bench", str(emd), "--runs", "1", "--methods", "gzip_6", "--chunks", "balanced", "--out", str(out))
    first = subprocess.Popen([sys.executable, "-m", "stempress", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    second = stempress(*args)  # the first still measures or draws its report (seconds)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_one_line_error(second, "being written by another stempress command")
    frame = pd.read_csv(out / "results.csv")
    assert frame.loc[0, "dataset"] == "smoke_test" and frame.loc[0, "shape"] == "(4, 4, 16, 16)"
    assert set(frame["codec"]) == {"gzip_6"} and set(frame["status"]) == {"ok"}
    html = out / "report" / "report.html"
    html.unlink()
    rebuilt = stempress("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert html.exists() and "data:image/png;base64" in html.read_text()
    assert_one_line_error(stempress(*args), "--force")
    assert stempress(*args, "--force").returncode == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("bench", "missing.h5"), ("missing.h5", "no such file")),
        (("bench", "--suite", "nope"), ("nope", "paper-like")),
        (("bench", "--suite", "smoke", "--methods", "gzip_42"), ("gzip_42",)),
        (("bench", "--suite", "smoke", "--chunks", "diagonal"), ("diagonal",)),
        (("bench", "--suite", "smoke", "--protocol", "lukewarm"), ("lukewarm", "warm or cold")),
    ],
)
def test_bad_arguments_give_one_line_and_no_output(tmp_path, args, words):
    result = stempress(*args, "--out", str(tmp_path / "res"))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "res").exists()


def test_wrong_dataset_path_and_not_4d(tmp_path):
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f["a/cube"] = np.zeros((2, 2, 4, 4), np.uint16)
        f["a/stack"] = np.zeros((4, 4, 4), np.uint16)
    assert_one_line_error(stempress("bench", str(path), "--dataset", "b/cube", "--out", str(tmp_path / "r")),
                          "b/cube")
    assert_one_line_error(stempress("bench", str(path), "--dataset", "a/stack", "--out", str(tmp_path / "r")),
                          "4")
    assert not (tmp_path / "r").exists()


def test_simulate_streams_to_a_file_and_never_overwrites(tmp_path):
    out = tmp_path / "diff.h5"
    result = stempress("simulate", "smoke/4D_Diff", str(out), "--truth")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        data = f["datacube_root/datacube/data"]
        assert data.ndim == 4 and data.dtype == np.uint16 and data[...].any()
        assert f.attrs["emd_group_type"] == "file" and "expected" in data.parent
    assert f"py4DSTEM.read({str(out)!r})" in result.stdout and "file_format='emd'" in result.stdout
    before = out.read_bytes()
    assert_one_line_error(stempress("simulate", "smoke/4D_Diff", str(out)), "--force")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["diff.h5"]


def test_recommend_samples_a_source_and_explains_the_choice(tmp_path):
    result = stempress("recommend", "synthetic:smoke/4D_Diff", "--for", "archive", "--methods",
                       "gzip_1,blosc_zstd,blosc_lz4", "--runs", "1", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "archive:" in result.stdout and "ratio" in result.stdout and "Measured on" in result.stdout
    assert list(tmp_path.iterdir()) == []  # sample files cleaned up


def test_recommend_refuses_an_unknown_use_case(tmp_path):
    assert_one_line_error(stempress("recommend", "synthetic:smoke/4D_Diff", "--for", "fun"), "fun", "archive")


def test_compress_then_verify_and_a_flipped_byte_is_named(tmp_path):
    out = tmp_path / "cube.h5"
    result = stempress("compress", "synthetic:smoke/4D_Diff", str(out), "--codec", "gzip_6", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "parallel direct-chunk" in result.stdout
    ok = stempress("verify", str(out), "--against", "synthetic:smoke/4D_Diff")
    assert ok.returncode == 0 and "OK" in ok.stdout
    assert_one_line_error(stempress("compress", "synthetic:smoke/4D_Diff", str(out)), "--force")
    with h5py.File(out) as f:
        offset = f["/datacube_root/datacube/data"].id.get_chunk_info(0).byte_offset
    raw = bytearray(out.read_bytes())
    raw[offset + 10] ^= 0xFF
    out.write_bytes(bytes(raw))
    assert_one_line_error(stempress("verify", str(out)), "FAILED", "scan rows 0-7")


def test_reduce_writes_targets_with_provenance_and_plan_names_a_choice(tmp_path):
    out = tmp_path / "reduced.h5"
    result = stempress("reduce", "synthetic:smoke/4D_Diff", "--target", "bf", "--target", "com", "--out", str(out),
                       "--figures", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "figures" / "mean_pattern.png").exists() and (tmp_path / "figures" / "dpc_field.svg").exists()
    with h5py.File(out) as f:
        assert f["reduced/bf/BF"].shape == (8, 8) and f["reduced/com/com_x"].shape == (8, 8)
        assert json.loads(f.attrs["stempress_provenance"])["targets"] == ["bf", "com"]
    assert f"hs.load({str(out)!r}, file_format='hspy')" in result.stdout  # .h5: HyperSpy needs the reader named
    assert_one_line_error(stempress("reduce", "synthetic:smoke/4D_Diff", "--target", "bf", "--out", str(out)),
                          "--force")
    planned = stempress("plan", "synthetic:smoke/4D_Diff", "--target", "bf", "--tolerance", "0.05")
    assert planned.returncode == 0, planned.stderr
    assert "least burdensome representation that passes every check" in planned.stdout
    assert_one_line_error(stempress("plan", "synthetic:smoke/4D_Diff", "--target", "sharpness"), "sharpness")


# -- nothing lost, nothing silent ---------------------------------------------------------------------------
def _filter_ids(path: Path) -> set[int]:
    """The HDF5 filter ids of the 4-D dataset's pipeline (h5py names built-in filters, 'gzip', so read the ids)."""
    with h5py.File(path) as f:
        found: list[int] = []

        def visit(_name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim == 4:
                plist = obj.id.get_create_plist()
                found.extend(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))

        f.visititems(visit)
        return set(found)


def test_two_writers_of_one_output_never_replace_each_other(tmp_path):
    """Both compresses pass the start-up check (OUT does not exist yet); the one that finishes second must fail
    and leave the first one's file as it is, instead of silently replacing it."""
    np.save(tmp_path / "big.npy", np.random.default_rng(5).poisson(2.0, (32, 32, 64, 64)).astype(np.uint16))
    out = tmp_path / "race.h5"
    args = {"blosc_lz4": {32001}, "gzip_1": {1}}
    procs = {codec: subprocess.Popen([sys.executable, "-m", "stempress", "compress", "big.npy", out.name, "--codec",
                                      codec, "--workers", "1"], cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for codec in args}
    results = {codec: (p.wait(timeout=300), p.stderr.read()) for codec, p in procs.items()}
    winners = [codec for codec, (code, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    loser = next(c for c in args if c not in winners)
    code, err = results[loser]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "race.h5" in lines[0] and "--force" in lines[0], err
    assert "appeared while this write was running" in lines[0] or "already exists" in lines[0]
    assert _filter_ids(out) & args[winners[0]], "OUT is not the file of the writer that succeeded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy", "race.h5"]


def _wait_for_partial(folder: Path, proc: subprocess.Popen[str], seconds: float = 60) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in folder.iterdir() if p.name.endswith(".partial")]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("the writer made no partial file")


def test_ctrl_c_says_what_stopped_and_that_nothing_was_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stempress", "simulate", "paper-like/4D_Diff", "diff.h5"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_partial(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == ["interrupted: stempress simulate stopped by SIGINT; no output was written; the unfinished "
                     "diff.h5 removed"], err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_leftover_is_removed_by_the_next_run_which_says_so(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stempress", "simulate", "paper-like/4D_Diff", "diff.h5"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = _wait_for_partial(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert partial.exists()
    again = stempress("simulate", "smoke/4D_Diff", "diff.h5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"note: removed {partial.name}" in again.stderr.replace(str(tmp_path) + "/", ""), again.stderr
    assert "killed" in again.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["diff.h5"]


def test_progress_is_printed_as_plain_lines_when_output_is_not_a_terminal(tmp_path):
    result = stempress("simulate", "smoke/4D_Diff", str(tmp_path / "diff.h5"))
    assert result.returncode == 0, result.stderr
    assert "simulate: 512.00 KiB of 512.00 KiB (100%)" in result.stdout, result.stdout
    assert "\x1b" not in result.stdout and "\r" not in result.stdout


def test_a_missing_output_folder_is_created_and_said(tmp_path):
    out = tmp_path / "new" / "deeper" / "diff.h5"
    result = stempress("simulate", "smoke/4D_Diff", str(out))
    assert result.returncode == 0, result.stderr
    assert f"note: created folder {tmp_path / 'new'}" in result.stderr.replace("\n", ""), result.stderr
    assert out.exists()


def test_nan_pixels_are_left_out_and_said_and_negative_means_are_allowed(tmp_path):
    """A dead-pixel mask (NaN) and dark-subtracted data (negative background) reduce; the NaNs are reported in
    a note and in the provenance, and every image stays finite."""
    from stempress.data.open import open_source

    cube = open_source("synthetic:smoke/4D_Diff").read_rows(0, 8).astype(np.float32)
    masked = cube.copy()
    masked[:, :, 5, 7] = np.nan
    np.save(tmp_path / "masked.npy", masked)
    np.save(tmp_path / "dark_subtracted.npy", cube - 1.2 * cube.mean())
    result = stempress("reduce", "masked.npy", "--target", "bf", "--target", "com", "--out", "m.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "64 NaN or infinite value(s) at 1 detector pixel(s) [(y, x) (5, 7)]" in result.stderr.replace("\n", "")
    with h5py.File(tmp_path / "m.h5") as f:
        assert np.isfinite(f["reduced/bf/BF"][...]).all() and np.isfinite(f["reduced/com/com_x"][...]).all()
        assert json.loads(f.attrs["stempress_provenance"])["excluded"]["detector_pixels"] == 1
    negative = stempress("reduce", "dark_subtracted.npy", "--target", "bf", "--out", "n.h5", cwd=tmp_path)
    assert negative.returncode == 0, negative.stderr
    planned = stempress("plan", "masked.npy", "--target", "bf", "--target", "com", cwd=tmp_path)
    assert planned.returncode == 0 and "NaN or infinite" in planned.stderr, planned.stderr
    np.save(tmp_path / "offset.npy", cube.astype(np.int16) - 2)  # integers below 0: no event rows, said so
    offset = stempress("plan", "offset.npy", "--target", "bf", cwd=tmp_path)
    assert offset.returncode == 0 and "no event rows" in offset.stderr and "negative" in offset.stderr, offset.stderr


def test_centre_and_bf_radius_replace_what_cannot_be_measured(tmp_path):
    np.save(tmp_path / "zero.npy", np.zeros((2, 2, 16, 16), np.uint16))
    result = stempress("reduce", "zero.npy", "--target", "bf", "--out", "r.h5", "--centre", "7.5,7.5",
                       "--bf-radius", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "r.h5") as f:
        calibration = json.loads(f.attrs["stempress_provenance"])["calibration"]
    assert (calibration["centre_y"], calibration["centre_x"], calibration["bf_radius_px"]) == (7.5, 7.5, 3.0)
    assert calibration["origin"] == "given"


def test_chunks_take_names_and_shapes_separated_by_commas():
    from stempress.codecs.chunking import parse_chunkings

    assert parse_chunkings("balanced,16x16x64x64") == ["balanced", (16, 16, 64, 64)]
    assert parse_chunkings("16,16,64,64") == [(16, 16, 64, 64)]
    assert parse_chunkings("balanced single_frame") == ["balanced", "single_frame"]


HEAVY = {"pandas", "scipy", "matplotlib", "rsciio"}
PROBE = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("MODULES", " ".join(sorted({m.split(".")[0] for m in sys.modules})),
                                  file=sys.stderr))
    sys.argv = ["stempress", *sys.argv[1:]]
    runpy.run_module("stempress", run_name="__main__")
""")


def _loaded(*args: str, cwd: Path) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def test_start_up_loads_no_heavy_module_it_does_not_need(tmp_path):
    """`stempress --help` loads neither numpy nor h5py; `compress --help` and compressing a small .npy load none
    of pandas, SciPy, Matplotlib, RosettaSciIO (nor Blosc2 for a Blosc1 codec). A module-set check, not timing."""
    np.save(tmp_path / "small.npy", np.ones((2, 2, 8, 8), np.uint16))
    assert not _loaded("--help", cwd=tmp_path) & (HEAVY | {"numpy", "h5py"})
    assert not _loaded("compress", "--help", cwd=tmp_path) & HEAVY
    loaded = _loaded("compress", "small.npy", "small.h5", cwd=tmp_path)
    assert "h5py" in loaded  # the probe sees what the command really imported
    assert not loaded & (HEAVY | {"blosc2"}), loaded & (HEAVY | {"blosc2"})


def test_an_interrupted_bench_leaves_no_empty_results_folder(tmp_path):
    out = tmp_path / "results" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "stempress", "bench", "--suite", "smoke", "--runs", "3",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the benchmark finished before the interrupt")
    assert proc.returncode == 130, err
    assert "interrupted: stempress bench stopped by SIGINT; no output was written" in err, err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_a_stop_whose_raise_python_dropped_is_raised_at_the_next_progress_report_in_the_main_thread(monkeypatch):
    """Python drops an exception a signal handler raises inside a finalizer: the command would run on as if never
    stopped, with an "Exception ignored" traceback. The next progress report raises it again, once, and only in the
    main thread (workers report progress too); only that dropped stop is kept off the unraisable hook."""
    import threading

    from stempress import cli

    class StoppedInFinalizer:
        def __del__(self) -> None:
            cli._interrupt(signal.SIGINT, None)

    class BrokenFinalizer:
        def __del__(self) -> None:
            raise ValueError("a real bug")

    reported: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    reporter = cli.ProgressReporter("work")
    with cli._handlers_restored({signal.SIGINT: signal.getsignal(signal.SIGINT)}):
        StoppedInFinalizer()  # collected at once: its raise is dropped
        BrokenFinalizer()
        worker = threading.Thread(target=reporter, args=(1, 10))
        worker.start()
        worker.join()  # a worker's report does not raise
        with pytest.raises(cli.Interrupted) as caught:
            reporter(2, 10)
        reporter(3, 10)  # raised once
    assert caught.value.signum == signal.SIGINT
    assert [type(e) for e in reported] == [ValueError]
