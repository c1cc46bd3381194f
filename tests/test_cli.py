"""The command line as a user meets it: real processes, real exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
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
    html.unlink()
    rebuilt = stempress("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert html.exists()


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


def test_bench_reads_a_real_file_and_refuses_to_overwrite_results(tmp_path):
    emd = real_file("smoke_test.emd")
    out = tmp_path / "res"
    args = ("bench", str(emd), "--runs", "1", "--methods", "gzip_6", "--chunks", "balanced", "--out", str(out))
    assert stempress(*args).returncode == 0
    frame = pd.read_csv(out / "results.csv")
    assert frame.loc[0, "dataset"] == "smoke_test" and frame.loc[0, "shape"] == "(4, 4, 16, 16)"
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
