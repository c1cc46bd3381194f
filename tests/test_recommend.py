"""Use-case recommendations on constructed statistics, the spread sample, and recommending for a real cube."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from stempress.bench.measure import split_method
from stempress.bench.ranking import USE_CASES, recommend
from stempress.bench.recommend import recommend_source
from stempress.bench.sample import RUN_ROWS, sample_runs, spread_sample
from stempress.data.base import ArraySource, row_nbytes
from stempress.data.suites import suite
from stempress.errors import StempressError

#: method -> (ratio, write GiB/s, read GiB/s) on d1 and on d2; means: none 1x, zlib 20x, zstd 19x, lz4 12x...
METHODS = {
    "balanced_none": [(1, 5, 9), (1, 5, 9)],               # fastest raw, but a ratio of 1
    "balanced_blosc_zlib": [(21, 0.2, 1.0), (19, 0.2, 1.0)],
    "balanced_blosc_zstd": [(19, 0.9, 1.5), (19, 0.7, 1.5)],  # mean write 0.8, slowest 0.7
    "balanced_blosc_lz4": [(12, 3.5, 2.0), (12, 2.5, 2.0)],
    "balanced_blosc_lz4hc": [(14, 0.3, 4.0), (14, 0.3, 4.0)],
    "balanced_gzip_9": [(18, 0.01, 0.7), (18, 0.01, 0.7)],
}


def stats_table(values: dict[str, list[tuple[float, float, float]]]) -> pd.DataFrame:
    rows = []
    for method, per_dataset in values.items():
        chunking, codec = split_method(method)
        for dataset, (ratio, write, read) in zip(("d1", "d2"), per_dataset, strict=False):
            rows.append({"dataset": dataset, "method": method, "codec": codec, "chunking": chunking,
                         "compression_ratio_mean": ratio, "write_throughput_gbs_mean": write,
                         "read_throughput_gbs_mean": read})
    return pd.DataFrame(rows)


@pytest.fixture
def stats() -> pd.DataFrame:
    return stats_table(METHODS)


def test_archive_picks_the_smallest_files_and_states_numbers(stats):
    rec = recommend(stats, "archive")
    assert (rec.method, rec.codec, rec.chunking) == ("balanced_blosc_zlib", "blosc_zlib", "balanced")
    assert rec.ratio == pytest.approx(20) and rec.write_gibs == pytest.approx(0.2)
    assert "20.00x" in rec.why and "runner-up balanced_blosc_zstd 19.00x" in rec.why
    assert rec.alternatives[:2] == ["balanced_blosc_zstd", "balanced_gzip_9"]


def test_archive_tie_goes_to_the_faster_writer(stats):
    tied = stats_table(METHODS | {"balanced_blosc_zstd": [(21, 0.9, 1.5), (19, 0.7, 1.5)]})
    assert recommend(tied, "archive").method == "balanced_blosc_zstd"


def test_acquisition_without_rate_is_fastest_writer_with_a_good_ratio(stats):
    rec = recommend(stats, "acquisition")
    assert rec.method == "balanced_blosc_lz4"  # none writes faster but its ratio is under half the best
    assert "3 GiB/s" in rec.why and "12.00x" in rec.why and ">= 10.00x" in rec.why
    assert "balanced_none" not in rec.alternatives


def test_acquisition_rate_must_be_met_on_every_dataset(stats):
    # zstd's mean write (0.8) meets 0.75 GiB/s but its slowest dataset (0.7) does not
    rec = recommend(stats, "acquisition", required_write_gibs=0.75)
    assert rec.method == "balanced_blosc_lz4"
    assert "2 of 6 methods write at least 0.75 GiB/s on every dataset" in rec.why
    assert recommend(stats, "acquisition", required_write_gibs=0.5).method == "balanced_blosc_zstd"


#: The issue's 3x3x512x512 Merlin cube, balanced chunking (ratio, write, read): nothing writes 1.5 GiB/s.
MERLIN = {
    "uint8_overflow": [(1.98, 0.9, 1.2)],                     # the fastest writer, but a 2x cast
    "simple_gzip": [(94.7, 0.005, 0.3)],                      # a file format: compress refuses it
    "balanced_none": [(1.0, 1.1, 3.0)],
    "balanced_gzip_9": [(105.8, 0.004, 0.5)],
    "balanced_blosc_zstd": [(80.2, 0.21, 1.1)],
    "balanced_blosc_lz4": [(39.6, 0.39, 1.6)],
    "balanced_bitshuffle_lz4": [(52.0, 0.33, 0.9)],
}


def test_acquisition_rate_nobody_meets_says_so_and_picks_a_fast_useful_codec():
    rec = recommend(stats_table(MERLIN), "acquisition", required_write_gibs=1.5)
    assert rec.method == "balanced_blosc_lz4" and rec.meets_rate is False
    assert rec.why.startswith("no method writes 1.5 GiB/s on every dataset (the fastest of all, balanced_none, "
                              "manages 1.1 GiB/s but only 1.00x)")
    assert "useful ratio (at least a quarter of the best, >= 26.45x)" in rec.why
    assert "uint8_overflow" not in rec.alternatives and "balanced_none" not in rec.alternatives
    met = recommend(stats_table(MERLIN), "acquisition", required_write_gibs=0.3)
    assert met.method == "balanced_bitshuffle_lz4" and met.meets_rate is True  # best ratio that keeps up
    assert recommend(stats_table(MERLIN), "archive").meets_rate is None


@pytest.mark.parametrize("use_case", USE_CASES)
def test_recommendations_are_what_compress_writes(use_case):
    """The file baselines may be fastest or smallest; compress refuses them, so they are never recommended."""
    from stempress.store.compress import resolve_codec

    rec = recommend(stats_table(MERLIN), use_case, required_write_gibs=2.0 if use_case == "acquisition" else None)
    assert rec.codec not in ("uint8_overflow", "simple_gzip")
    assert resolve_codec(rec.codec).name == rec.codec  # compress accepts it
    assert "compress cannot write them: simple_gzip, uint8_overflow" in rec.why
    assert not {"uint8_overflow", "simple_gzip"} & set(rec.alternatives)


def test_compress_writes_agrees_with_compress_on_every_codec(tmp_path):
    """Every codec available here, offered to compress on a tiny count cube: recommend's notion of what compress
    writes is what compress does."""
    from stempress.bench.ranking import compress_writes
    from stempress.codecs.catalog import CATALOG
    from stempress.store.compress import compress

    counts = ArraySource(np.random.default_rng(0).poisson(0.3, (2, 2, 8, 8)).astype(np.uint16), name="tiny")
    for name, codec in CATALOG.items():
        if codec.unavailable_reason():
            continue
        try:
            compress(counts, tmp_path / f"{name}.h5", codec=name, workers=1)
            accepted = True
        except StempressError as err:
            assert "file format" in str(err), (name, err)
            accepted = False
        assert compress_writes(name) == accepted, name
    assert compress_writes("entropy_poisson") and not compress_writes("sparse_csr")
    with pytest.raises(StempressError, match="no measured method can be written by stempress compress"):
        recommend(stats_table({"sparse_csr": [(3, 1, 1)]}), "archive")


def test_analysis_is_fastest_reader_but_not_raw(stats):
    rec = recommend(stats, "analysis")
    assert rec.method == "balanced_blosc_lz4hc" and "4 GiB/s" in rec.why and "14.00x" in rec.why
    assert "runner-up balanced_blosc_lz4 2 GiB/s" in rec.why


def test_balanced_is_best_geometric_mean_of_normalised_scores(stats):
    rec = recommend(stats, "balanced")
    # only methods with at least half the best ratio compete, so 'none' cannot win on raw speed;
    # lz4: cbrt(12/20 * 3/3 * 2/4) = 0.67 (each relative to the best competitor) beats zstd's 0.46
    assert rec.method == "balanced_blosc_lz4" and "balanced_none" not in rec.alternatives
    assert "scores 0.67" in rec.why and "runner-up balanced_blosc_zstd 0.46" in rec.why


def test_every_use_case_answers_and_bad_input_is_refused(stats):
    for use_case in USE_CASES:
        rec = recommend(stats, use_case)
        assert rec.use_case == use_case and rec.method in set(stats["method"])
    with pytest.raises(StempressError, match="unknown use case 'fast'"):
        recommend(stats, "fast")
    with pytest.raises(StempressError, match="positive"):
        recommend(stats, "acquisition", required_write_gibs=0)
    with pytest.raises(StempressError, match="no measured method"):
        recommend(stats.iloc[:0], "archive")


def test_method_missing_on_a_dataset_cannot_win(stats):
    partial = stats_table(METHODS | {"balanced_blosc_zlib": [(99, 1, 1)]})
    rec = recommend(partial, "archive")
    assert rec.method == "balanced_blosc_zstd" and "balanced_blosc_zlib" in rec.why


# ----------------------------------------------------------------------------------------------- sample


def labelled_cube(scan_y: int, scan_x: int = 3, det: tuple[int, int] = (4, 5)) -> np.ndarray:
    """Every value says which scan row it came from, plus noise so rows are not constant."""
    rng = np.random.default_rng(0)
    cube = rng.integers(0, 50, size=(scan_y, scan_x, *det), dtype=np.uint16)
    cube[:, 0, 0, 0] = np.arange(scan_y)
    return cube


def test_spread_sample_takes_start_middle_and_end_bit_exact():
    cube = labelled_cube(200)
    source = ArraySource(cube, name="4D_Diff", metadata={"detector": "merlin"})
    sample = spread_sample(source, 100 * row_nbytes(source))
    runs = sample.metadata["sample"]["rows"]
    assert runs == [[0, 32], [84, 116], [168, 200]]  # three runs of 32 rows: start, middle, end
    assert sample.name == "4D_Diff" and sample.metadata["detector"] == "merlin"
    assert sample.shape == (96, 3, 4, 5) and sample.dtype == cube.dtype
    at = 0
    for start, stop in runs:
        assert np.array_equal(sample.array[at:at + stop - start], cube[start:stop])
        at += stop - start
    assert list(sample.array[:, 0, 0, 0]) == [r for a, b in runs for r in range(a, b)]


def test_spread_sample_is_the_whole_cube_when_it_fits():
    cube = labelled_cube(40)
    source = ArraySource(cube, name="small")
    sample = spread_sample(source, cube.nbytes)
    assert np.array_equal(sample.array, cube)
    assert sample.metadata["sample"]["description"] == "the whole cube"
    with pytest.raises(StempressError, match="positive"):
        spread_sample(source, 0)


def test_sample_runs_never_overlap_and_span_the_scan():
    for scan_y in (1, 31, 33, 64, 65, 97, 256, 1000):
        for budget in (0, 1, 16, 31, 32, 63, 64, 65, 100, 255, 999):
            runs = sample_runs(scan_y, budget)
            if budget >= scan_y:
                assert runs == [(0, scan_y)]
                continue
            assert all(0 <= a < b <= scan_y for a, b in runs)
            assert all(b1 <= a2 for (_, b1), (a2, _) in pairwise(runs))
            assert sum(b - a for a, b in runs) <= max(budget, 1)
            assert all(b - a == min(RUN_ROWS, max(budget, 1)) for a, b in runs)
            if len(runs) > 1:
                assert runs[0][0] == 0 and runs[-1][1] == scan_y
    assert sample_runs(100, 40) == [(34, 66)]  # one run fits: the middle, not the first rows


# ------------------------------------------------------------------------------------- recommend_source


def test_recommend_source_on_a_smoke_cube(tmp_path):
    source = suite("smoke")[1]
    rec, stats = recommend_source(source, "archive", methods="none,gzip_1,blosc_lz4,blosc_zstd",
                                  runs=2, workdir=tmp_path, time_limit_s=None)
    assert rec.method in set(stats["method"])
    assert stats["verified"].all() and (stats["n_runs"] == 2).all()
    assert set(stats["method"]) == {f"balanced_{c}" for c in ("none", "gzip_1", "blosc_lz4", "blosc_zstd")}
    best = stats.loc[stats["compression_ratio_mean"].idxmax(), "method"]
    assert rec.method == best and f"{rec.ratio:.2f}x" in rec.why
    assert "Measured on the whole cube, 2 run(s)." in rec.why and stats.attrs["problems"] == []
    assert list(tmp_path.iterdir()) == []


def test_recommend_source_benchmarks_a_spread_sample(tmp_path):
    cube = labelled_cube(70, scan_x=4, det=(16, 16))
    source = ArraySource(cube, name="scan")
    rec, stats = recommend_source(source, "analysis", methods="blosc_lz4,blosc_zstd", runs=1, workdir=tmp_path,
                                  max_sample_bytes=66 * row_nbytes(source), time_limit_s=None)
    assert stats.attrs["sample"]["rows"] == [[0, 32], [38, 70]]
    assert "64 of 70 scan rows in 2 runs" in rec.why
    assert stats["verified"].all() and rec.method in {"balanced_blosc_lz4", "balanced_blosc_zstd"}
    with pytest.raises(StempressError, match="unknown use case"):
        recommend_source(source, "fastest", workdir=tmp_path)


def test_recommend_source_measures_only_what_compress_writes(tmp_path):
    source = suite("smoke")[1]
    rec, stats = recommend_source(source, "acquisition", methods="blosc_lz4,uint8_overflow,simple_gzip", runs=1,
                                  workdir=tmp_path, time_limit_s=None)
    assert set(stats["method"]) == {"balanced_blosc_lz4"} and rec.codec == "blosc_lz4"
    with pytest.raises(StempressError, match="compress can write none of them"):
        recommend_source(source, "archive", methods="sparse_csr,uint8_overflow", workdir=tmp_path)
