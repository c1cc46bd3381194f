"""Our statistics beside the study's: the join, and the generated sentences about its findings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import stempress
from stempress.bench.compare import DEFAULT_PAPER_DIR, compare_with_study, load_study_statistics, study_findings
from stempress.bench.runner import BenchConfig, run_grid
from stempress.bench.statistics import statistics
from stempress.codecs.catalog import select_codecs
from stempress.data.suites import suite
from stempress.errors import StempressError


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    return load_study_statistics()


@pytest.fixture(scope="session")
def ours(tmp_path_factory) -> pd.DataFrame:
    """A small real bench: the smoke suite (the study's dataset names), the methods the findings name."""
    config = BenchConfig(codecs=select_codecs("none,gzip_9,blosc_zstd,blosc_lz4,blosc_zlib"),
                         chunkings=["balanced", "single_frame"], runs=2, time_limit_s=None,
                         workdir=tmp_path_factory.mktemp("bench"), warmup=False)
    return statistics(pd.DataFrame(run_grid(suite("smoke"), config)))


def test_the_study_tables_ship_with_the_package_with_their_source():
    assert DEFAULT_PAPER_DIR.is_relative_to(Path(stempress.__file__).resolve().parent)
    provenance = (DEFAULT_PAPER_DIR / "README.md").read_text()
    assert "979c09f4752a350f64803cfaafa22078f69ccc44" in provenance and "MIT License" in provenance
    assert len(load_study_statistics()) == 210


def test_missing_study_is_a_one_line_error(tmp_path):
    with pytest.raises(StempressError, match=r"statistics\.csv not found") as info:
        load_study_statistics(tmp_path)
    assert "\n" not in str(info.value)


def test_study_joined_with_itself_is_ratio_one(study):
    table = compare_with_study(study, study)
    assert len(table) == len(study) == 210
    assert (table["ratio_ours_over_study"] == 1.0).all()
    # the study gives no throughput for its 3 non-HDF5 baselines (15 rows): NaN there, 1.0 everywhere else
    for column in ("write_gibs_ours_over_study", "read_gibs_ours_over_study"):
        assert (table[column].dropna() == 1.0).all() and table[column].isna().sum() == 15, column
    assert (table["write_cv_ours"] == table["write_cv_study"]).all()
    assert set(table.loc[table["method"] == "simple_gzip", "chunking"]) == {"n/a"}


def test_study_findings_on_its_own_numbers(study):
    ratio, speed, cv, best, chunking = study_findings(study, study)
    assert "ours 13.5x vs 12.3x on 5 datasets, study 13.5x vs 12.3x; holds" in ratio
    assert "writes 19-69x and reads 1.9-2.6x faster" in speed and "holds in kind" in speed
    assert "ours 1.8 %" in cv and "holds" in cv
    assert "5 of 5 shared datasets (holds)" in best and "4D_EELS ours blosc_zstd 34.9x" in best
    assert "ratio 5.9 %" in chunking and "chunking is secondary" in chunking


def test_our_bench_against_the_study(ours, study):
    table = compare_with_study(ours, study)
    assert set(table["dataset"]) == set(ours["dataset"])
    assert len(table) == len(ours)  # every method we ran is one the study ran, on a dataset it has
    assert table["ratio_ours_over_study"].to_numpy() == pytest.approx(
        (table["ratio_ours"] / table["ratio_study"]).to_numpy())
    findings = study_findings(ours, study)
    assert len(findings) == 5
    assert findings[0].startswith("Blosc zstd vs gzip-9 ratio") and "study 13.5x vs 12.3x" in findings[0]
    assert "could not" not in " ".join(findings)


def test_missing_methods_are_sentences_not_crashes(ours, study):
    without = ours[(ours["method"] != "balanced_gzip_9") & (ours["chunking"] == "balanced")]
    ratio, speed, _, best, chunking = study_findings(without, study)
    assert "could not be compared: balanced_gzip_9 not in our statistics" in ratio
    assert "could not be compared" in speed
    assert "could not be compared" in chunking and "could not" not in best


def test_findings_that_differ_say_so(study):
    worse = study.copy()
    zstd = worse["method"] == "balanced_blosc_zstd"
    worse.loc[zstd, "compression_ratio_mean"] = 1.0
    worse.loc[zstd, "read_throughput_gbs_mean"] = 1e-6
    ratio, speed, *_ = study_findings(worse, study)
    assert "ours 1.0x vs 12.3x" in ratio and "differs: gzip-9 compresses better" in ratio
    assert "differs: zstd is not faster for reads on 3D_EELS" in speed
    renamed = study.assign(dataset="my_scan")
    best = study_findings(renamed, study)[3]
    assert "none of our datasets is in the study" in best
