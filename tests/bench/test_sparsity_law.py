"""The sparsity law C = a*s^b + c: the study's published fit, and refusal when the data cannot carry it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from stempress.bench.compare import DEFAULT_PAPER_DIR
from stempress.bench.measure import split_method
from stempress.bench.sparsity_law import (
    PUBLISHED_LAW,
    PUBLISHED_SCATTER,
    best_per_dataset,
    fit_best,
    fit_sparsity_law,
    law_check,
    law_summary,
    study_fit,
    study_law,
    with_sparsity,
)
from stempress.errors import StempressError

PAPER_DIR = DEFAULT_PAPER_DIR


def test_study_fit_reproduces_the_published_law():
    fit = study_fit(PAPER_DIR)
    # published: C = 50.0 * s^6.90 + 5.0, R^2 = 0.991 (best mean ratio over all 41 methods per dataset)
    assert fit.a == pytest.approx(49.909, abs=1e-3)
    assert fit.b == pytest.approx(6.905, abs=1e-3)
    assert fit.c == pytest.approx(4.995, abs=1e-3)
    assert fit.r_squared == pytest.approx(0.9911, abs=1e-4)
    assert fit.n_points == 5 and fit.warning is None
    assert round(fit.a, 0) == 50 and round(fit.b, 1) == 6.9 and round(fit.c, 0) == 5
    assert fit.predict(0.928317) == pytest.approx(34.92, abs=1.0)


def test_study_best_ratios_per_dataset():
    best = best_per_dataset(pd.read_csv(PAPER_DIR / "statistics.csv")).set_index("dataset")
    assert best["compression_ratio_mean"].round(1).to_dict() == {
        "3D_EELS": 4.8, "4D_Diff": 10.2, "4D_Diff-2x2-binning": 11.3, "4D_Diff-4x4-binning": 6.9, "4D_EELS": 34.9}
    assert best.loc["4D_EELS", "method"] == "balanced_blosc_zstd"
    assert best.loc["4D_EELS", "codec"] == "blosc_zstd" and best.loc["4D_EELS", "chunking"] == "balanced"


def stats_table() -> pd.DataFrame:
    """Our statistics.csv shape, read back as pandas does (the baselines' "n/a" chunking becomes NaN)."""
    return pd.DataFrame({
        "dataset": ["A", "A", "A", "B", "B"],
        "method": ["balanced_gzip_9", "real_space_gzip_9", "simple_gzip", "balanced_gzip_9", "sparse_csr"],
        "codec": ["gzip_9", "gzip_9", "simple_gzip", "gzip_9", "sparse_csr"],
        "chunking": ["balanced", "real_space", np.nan, "balanced", np.nan],
        "compression_ratio_mean": [3.0, 3.5, 2.0, 4.0, 6.0],
    })


def test_best_per_dataset_includes_baselines_and_all_chunkings():
    best = best_per_dataset(stats_table())
    assert best.to_dict("records") == [
        {"dataset": "A", "method": "real_space_gzip_9", "codec": "gzip_9", "chunking": "real_space",
         "compression_ratio_mean": 3.5},
        {"dataset": "B", "method": "sparse_csr", "codec": "sparse_csr", "chunking": "n/a",
         "compression_ratio_mean": 6.0},
    ]
    with pytest.raises(StempressError, match="statistics"):
        best_per_dataset(pd.DataFrame({"dataset": ["A"]}))


def test_split_method():
    assert split_method("single_frame_blosc_lz4hc") == ("single_frame", "blosc_lz4hc")
    assert split_method("chunks_8x8x64x64_gzip_1") == ("chunks_8x8x64x64", "gzip_1")
    assert split_method("uint8_overflow") == ("n/a", "uint8_overflow")


def test_fit_recovers_a_known_law():
    s = np.array([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    fit = fit_sparsity_law(s, 40 * s**5 + 3)
    assert (fit.a, fit.b, fit.c) == pytest.approx((40, 5, 3), rel=1e-6)
    assert fit.r_squared == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict([0.5, 1.0]), [40 * 0.5**5 + 3, 43])
    assert "R^2" in str(fit)


def test_fit_with_few_points_warns_or_refuses():
    three = fit_sparsity_law([0.5, 0.7, 0.9], [5.0, 8.0, 30.0])
    assert three.n_points == 3 and "3 parameters" in three.warning
    with pytest.raises(StempressError, match="at least 3"):
        fit_sparsity_law([0.5, 0.9], [5.0, 30.0])
    with pytest.raises(StempressError, match="same sparsity"):
        fit_sparsity_law([0.7, 0.7, 0.7, 0.7], [5.0, 6.0, 7.0, 8.0])
    with pytest.raises(StempressError, match="one of each"):
        fit_sparsity_law([0.5, 0.7, 0.9], [5.0, 8.0])
    with pytest.raises(StempressError, match="NaN"):
        fit_sparsity_law([0.5, 0.7, 0.9, np.nan], [5.0, 8.0, 30.0, 9.0])
    with pytest.raises(StempressError, match=r"\[0, 1\]"):
        fit_sparsity_law([0.5, 0.7, 1.9], [5.0, 8.0, 30.0])


def test_fit_best_joins_an_inventory():
    stats = pd.DataFrame({"dataset": list("ABCD"), "method": ["balanced_gzip_9"] * 4,
                          "compression_ratio_mean": [3.0, 5.0, 9.0, 20.0]})
    inventory = pd.DataFrame({"dataset_id": list("DCBA"), "sparsity_fraction": [0.95, 0.85, 0.7, 0.5]})
    points = with_sparsity(best_per_dataset(stats), inventory)
    assert points["sparsity_fraction"].tolist() == [0.5, 0.7, 0.85, 0.95]
    assert fit_best(stats, inventory).n_points == 4
    with pytest.raises(StempressError, match="no inventory row for D"):
        with_sparsity(best_per_dataset(stats), inventory.iloc[1:])


def test_study_fit_names_missing_files(tmp_path):
    with pytest.raises(StempressError, match=r"statistics\.csv"):
        study_fit(tmp_path)


def test_a_dense_dataset_fits_without_a_divide_by_zero_warning():
    """Sparsity 0 (no exact zeros) is a real dataset; a negative exponent tried by the fit made 0 ** b divide."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_sparsity_law([0.0, 0.0, 0.5, 0.9], [1.0, 1.2, 5.0, 30.0])
        assert fit.b >= 0 and np.isfinite(fit.predict(0.0))


def test_the_studys_law_comes_from_its_tables_or_as_published(tmp_path):
    law = study_law()
    assert (law.fit.a, law.fit.b, law.fit.c) == pytest.approx((49.909, 6.905, 4.995), abs=1e-3)
    assert "own tables" in law.source
    assert law.scatter == pytest.approx(PUBLISHED_SCATTER, abs=1e-3)  # the constant used without the tables
    absent = study_law(tmp_path)  # e.g. --paper-dir pointing to a folder without them
    assert absent.fit == PUBLISHED_LAW and "as published" in absent.source and str(tmp_path) in absent.source


def test_law_check_says_plainly_where_the_law_does_not_hold():
    """Like four real Merlin cubes: at s = 0.96 the best ratios are 2-4x what the study's law predicts."""
    law = study_law()
    best = pd.DataFrame({"dataset": ["merlin1", "merlin2", "lookalike"], "method": ["balanced_gzip_9"] * 3,
                         "sparsity": [0.96, 0.962, 0.928], "ratio": [105.8, 160.0, 34.0]})
    check = law_check(best, law, None).set_index("dataset")
    assert check.loc["merlin1", "law_ratio"] == pytest.approx(law.fit.predict(0.96))
    assert check.loc["merlin1", "ratio_over_law"] == pytest.approx(105.8 / law.fit.predict(0.96))
    assert list(check["law_holds"]) == [True, False, False]  # sorted by sparsity: lookalike first
    assert check["fit_ratio"].isna().all()
    text = law_summary(check.reset_index(), law)
    assert "holds on 1 of 3 datasets here and does not hold on merlin1 (s = 0.960: measured 105.8x" in text
    assert "more than it predicts" in text and "lookalike" not in text
