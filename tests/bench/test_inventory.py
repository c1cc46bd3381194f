"""The one-pass inventory equals a direct numpy computation, whatever the block size."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from stempress.bench import inventory as inv
from stempress.bench.compare import DEFAULT_PAPER_DIR
from stempress.bench.inventory import (
    COLUMNS,
    INVENTORY_CSV,
    STUDY_COLUMNS,
    inventory_table,
    profile_dataset,
    read_inventory,
    write_inventory,
)
from stempress.data.base import ArraySource
from stempress.data.suites import STUDY_TABLE1, suite
from stempress.errors import StempressError

PAPER_DIR = DEFAULT_PAPER_DIR


def known_cube() -> np.ndarray:
    """Sparse counts with two equal maxima (the first must win) and values past 4095 and 16383."""
    cube = np.random.default_rng(0).poisson(0.7, size=(5, 3, 4, 6)).astype(np.uint16)
    cube[1, 2, 0, 5] = 4096
    cube[2, 0, 3, 1] = 20000
    cube[4, 1, 1, 1] = 20000
    cube[3, 1, 2, 2] = 16383
    return cube


def direct(cube: np.ndarray) -> dict:
    values, counts = np.unique(cube, return_counts=True)
    return {
        "zero_count": int(np.sum(cube == 0)),
        "max_value": float(cube.max()),
        "max_location": tuple(int(i) for i in np.unravel_index(np.argmax(cube), cube.shape)),
        "count_gt_4095": int(np.sum(cube > 4095)),
        "count_gt_16383": int(np.sum(cube > 16383)),
        "values": values,
        "counts": counts,
        "mean_pattern": cube.astype(np.float64).mean(axis=(0, 1)),
    }


def assert_matches(profile, cube: np.ndarray) -> None:
    want = direct(cube)
    assert profile.zero_count == want["zero_count"]
    assert profile.max_value == want["max_value"]
    assert profile.max_location == want["max_location"]
    assert profile.count_gt_4095 == want["count_gt_4095"]
    assert profile.count_gt_16383 == want["count_gt_16383"]
    np.testing.assert_array_equal(profile.hist_values, want["values"])
    np.testing.assert_array_equal(profile.hist_counts, want["counts"])
    np.testing.assert_allclose(profile.mean_pattern, want["mean_pattern"], rtol=1e-12)
    assert profile.hist_values.dtype == cube.dtype


@pytest.mark.parametrize("rows", [1, 3, None])
def test_known_cube_equals_numpy_for_any_block_size(rows):
    cube = known_cube()
    profile = profile_dataset(ArraySource(cube, name="known"), rows=rows)
    assert_matches(profile, cube)
    assert profile.max_location == (2, 0, 3, 1)  # first of the two 20000s in C order
    row = profile.inventory_row()
    assert row["max_bits_int"] == 15 == int(cube.max()).bit_length()
    assert row["shape"] == "(5, 3, 4, 6)" and row["max_location"] == "(2, 0, 3, 1)"
    assert row["n_elements"] == cube.size and row["uncompressed_bytes"] == cube.nbytes
    assert row["sparsity_fraction"] == round(want_sparsity := np.mean(cube == 0), 6)
    assert row["bound_sparsity"] == pytest.approx(16 / -(want_sparsity * math.log2(want_sparsity)
                                                        + (1 - want_sparsity) * math.log2(1 - want_sparsity)))


def test_profile_is_identical_across_block_sizes():
    cube = known_cube()
    rows = [profile_dataset(ArraySource(cube, name="k"), rows=r).inventory_row() for r in (1, 2, 5)]
    assert rows[0] == rows[1] == rows[2]


def test_one_pass_reads_each_row_once():
    cube = known_cube()
    reads: list[tuple[int, int]] = []

    class Counting(ArraySource):
        def read_rows(self, start, stop):
            reads.append((start, stop))
            return super().read_rows(start, stop)

    profile_dataset(Counting(cube, name="k"), rows=2)
    assert reads == [(0, 2), (2, 4), (4, 5)]


def test_mixed_histogram_paths_merge(monkeypatch):
    """Rows whose values do not fit the bincount table go through np.unique; the merge must be exact."""
    cube = np.random.default_rng(1).poisson(3.0, size=(4, 3, 5, 5)).astype(np.uint32)
    cube[2, 1, 0, 0] = 5_000_000  # beyond BINCOUNT_CAP: that row takes the unique path
    for rows in (1, 4):
        assert_matches(profile_dataset(ArraySource(cube, name="u32"), rows=rows), cube)
    monkeypatch.setattr(inv, "PIECE_ELEMENTS", 7)  # pieces of one frame inside a block
    assert_matches(profile_dataset(ArraySource(cube, name="u32"), rows=4), cube)


def test_float_cube_binned_and_odd_values():
    counts = np.random.default_rng(2).poisson(0.5, size=(4, 4, 8, 2, 8, 2))
    cube = counts.mean(axis=(3, 5)).astype(np.float32)  # 2x2 mean-binning: multiples of 0.25
    cube[1, 2, 3, 3] = 0.1  # not a multiple of 1/16: this row's histogram takes the np.unique path
    for rows in (1, 3, None):
        profile = profile_dataset(ArraySource(cube, name="binned"), rows=rows)
        assert_matches(profile, cube)
        row = profile.inventory_row()
        assert row["max_bits_int"] is None
        assert math.isnan(row["poisson_bits_per_value"]) and math.isnan(row["bound_poisson"])
        assert row["tightest_bound"] in ("sparsity", "order0")


def test_negative_values_are_not_count_data():
    cube = np.random.default_rng(3).integers(-3, 4, size=(3, 2, 4, 4)).astype(np.int16)
    profile = profile_dataset(ArraySource(cube, name="signed"), rows=1)
    assert_matches(profile, cube)
    assert profile.min_value == cube.min()
    assert math.isnan(profile.poisson_bits_per_value)
    assert profile.inventory_row()["max_bits_int"] == int(cube.max()).bit_length()


def test_nan_does_not_hide_the_maximum():
    cube = np.zeros((2, 2, 3, 3), dtype=np.float32)
    cube[0, 0, 0, 0] = np.nan
    cube[1, 1, 2, 2] = 7.5
    profile = profile_dataset(ArraySource(cube, name="nan"), rows=1)
    assert profile.max_value == 7.5 and profile.max_location == (1, 1, 2, 2)


def test_all_zero_cube_has_no_finite_bound():
    profile = profile_dataset(ArraySource(np.zeros((2, 2, 4, 4), np.uint16), name="zeros"))
    row = profile.inventory_row()
    assert row["zero_count"] == 64 and row["sparsity_fraction"] == 1.0 and row["max_value"] == 0.0
    assert row["entropy_order0_bits"] == 0.0
    assert row["tightest_bound"] == "" and row["tightest_bound_ratio"] == math.inf


def test_tightest_bound_is_the_smallest_finite_one():
    cube = np.random.default_rng(4).poisson(0.3, size=(6, 6, 8, 8)).astype(np.uint16)
    row = profile_dataset(ArraySource(cube, name="p")).inventory_row()
    bounds = {name: row[f"bound_{name}"] for name in ("sparsity", "order0", "poisson")}
    assert row["tightest_bound"] == min(bounds, key=bounds.get)
    assert row["tightest_bound_ratio"] == min(bounds.values())
    assert row["bound_order0"] == pytest.approx(16 / row["entropy_order0_bits"])


def test_smoke_suite_inventory_matches_numpy_and_the_study_in_kind():
    profiles = []
    for source in suite("smoke"):
        profile = profile_dataset(source, rows=3)
        cube = source.read_rows(0, source.shape[0])
        assert_matches(profile, cube)
        study = STUDY_TABLE1[source.name]
        assert str(profile.dtype) == study["dtype"]
        assert profile.sparsity == pytest.approx(study["sparsity"], abs=0.02)
        profiles.append(profile)
    table = inventory_table(profiles)
    assert list(table.columns) == list(COLUMNS)
    assert list(table["dataset_id"]) == list(STUDY_TABLE1)
    assert table["max_bits_int"].tolist() == [12, 12, pd.NA, pd.NA, 16]
    assert table.loc[4, "count_gt_4095"] > 0  # 3D_EELS saturates at 65535 like the study's


def test_csv_round_trip_and_study_columns(tmp_path):
    profiles = [profile_dataset(s) for s in suite("smoke")[1:4]]
    path = write_inventory(tmp_path, profiles)
    assert path == tmp_path / INVENTORY_CSV
    back = read_inventory(tmp_path)
    assert list(back.columns) == list(COLUMNS)
    assert back["shape"].tolist() == ["(8, 8, 64, 64)", "(8, 8, 32, 32)", "(8, 8, 16, 16)"]
    assert back["max_bits_int"].isna().tolist() == [False, True, True]
    assert '"(7, 0, 49, 17)"' in path.read_text().splitlines()[1]  # quoted like the study's
    study = pd.read_csv(f"{PAPER_DIR}/dataset_inventory.csv")
    assert set(STUDY_COLUMNS) <= set(study.columns)
    assert study.loc[0, "shape"].startswith("(") and study.loc[0, "max_location"].count(",") == 3
    with pytest.raises(StempressError, match="inventory"):
        read_inventory(tmp_path / "nowhere")


def test_too_many_distinct_values_drop_the_histogram_not_the_profile(monkeypatch):
    monkeypatch.setattr(inv, "MAX_DISTINCT", 50)
    cube = np.random.default_rng(6).random((3, 3, 4, 4)).astype(np.float32)
    cube[:, :, :2] = 0  # half zeros, so the sparsity bound is finite
    profile = profile_dataset(ArraySource(cube, name="continuous"), rows=1)
    assert profile.hist_values is None and math.isnan(profile.entropy_order0_bits)
    assert profile.max_value == float(cube.max()) and profile.inventory_row()["tightest_bound"] == "sparsity"
