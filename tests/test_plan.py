"""Cost table and plan: which representation recovers which inference, checked against the raw data."""

from __future__ import annotations

import numpy as np
import pytest

from stempress.data.suites import suite
from stempress.errors import StempressError
from stempress.plan import cost_table, plan
from stempress.reduce.sufficiency import (
    EXACTLY,
    NOT,
    WITHIN,
    gather,
    parse_target,
    parse_targets,
    sample_positions,
)

FAST = {"codecs": ("blosc_zstd",), "max_positions": 256}
#: Only the raw, binned and reducer-output rows: for checks of those rows, which the lossless and event rows (each
#: a pass over the whole cube; ``table`` has them) do not change.
LEAN = {"codecs": (), "events": False, "max_positions": 256}


@pytest.fixture(scope="module")
def counted():
    return suite("counted")[0]


@pytest.fixture(scope="module")
def table(counted):
    return cost_table(counted, ["bf", "com"], 0.2, **FAST)


def _row(table, name):
    rows = table[table["representation"].str.startswith(name)]
    assert len(rows) == 1, f"expected one row starting {name!r}, got {list(table['representation'])}"
    return rows.iloc[0]


def test_cost_table_rows_and_columns(table, counted):
    names = list(table["representation"])
    assert names[0] == "raw uint8 cube"
    for start in ("lossless blosc_zstd", "events (CSR)", "entropy-coded events", "binned 2x2", "binned 4x4",
                  "bf (reducer output)", "com (reducer output)", "task summaries: bf, com"):
        _row(table, start)
    for column in ("representation", "bytes", "reduction", "recovers", "assumes", "error", "passes"):
        assert column in table.columns
    raw = _row(table, "raw")
    assert raw["bytes"] == counted.shape[0] * counted.shape[1] * counted.shape[2] * counted.shape[3]
    assert raw["reduction"] == 1.0
    np.testing.assert_allclose(table["reduction"], raw["bytes"] / table["bytes"])
    assert _row(table, "bf (reducer output)")["bytes"] == 32 * 32 * 8
    entropy = _row(table, "entropy-coded events")  # the study's model-based code: smaller than any generic codec
    assert entropy["recovers"].count("exactly") == 2 and entropy["bytes"] < _row(table, "lossless")["bytes"]
    assert _row(table, "com (reducer output)")["bytes"] == 2 * 32 * 32 * 8
    assert _row(table, "task summaries")["bytes"] == 3 * 32 * 32 * 8
    assert "Poisson" not in _row(table, "raw")["assumes"] and _row(table, "events")["assumes"] == "integer counts"


def test_raw_lossless_and_events_recover_everything_exactly(table):
    for name in ("raw", "lossless", "events"):
        row = _row(table, name)
        assert row["recovers[bf]"] == EXACTLY and row["recovers[com]"] == EXACTLY, name
        assert row["error"] == 0.0 and row["max_abs[bf]"] == 0.0 and row["passes"]
    assert _row(table, "lossless")["bytes"] < _row(table, "events")["bytes"] < _row(table, "raw")["bytes"]


def test_a_reducer_output_recovers_only_its_own_target(table):
    bf_row = _row(table, "bf (reducer output)")
    assert bf_row["recovers[bf]"] == EXACTLY and bf_row["recovers[com]"] == NOT
    assert np.isnan(bf_row["rel_rms[com]"]) and not bf_row["passes"]
    assert "calibrated centre" in bf_row["assumes"] and "BF radius" in bf_row["assumes"]
    com_row = _row(table, "com (reducer output)")
    assert com_row["recovers[com]"] == EXACTLY and com_row["recovers[bf]"] == NOT


def test_binned_detector_fails_a_tight_tolerance_and_passes_a_loose_one(counted):
    tight = cost_table(counted, "bf", 1e-6, bins=(4,), **LEAN)
    loose = cost_table(counted, "bf", 0.2, bins=(4,), **LEAN)
    t, lo = _row(tight, "binned 4x4"), _row(loose, "binned 4x4")
    assert t["recovers[bf]"] == NOT and not t["passes"]
    assert lo["recovers[bf]"] == WITHIN and lo["passes"]
    assert 1e-6 < t["rel_rms[bf]"] == lo["rel_rms[bf]"] < 0.2  # same check, judged twice
    assert t["max_abs[bf]"] > 0


def test_per_target_tolerances(counted):
    table = cost_table(counted, ["bf", "com"], {"bf": 0.2, "com": 1e-9}, bins=(4,), **LEAN)
    row = _row(table, "binned 4x4")
    assert row["recovers[bf]"] == WITHIN and row["recovers[com]"] == NOT
    with pytest.raises(StempressError):
        cost_table(counted, ["bf", "com"], {"bf": 0.2}, **FAST)


def test_plan_picks_the_smallest_passing_representation(counted, table):
    passing = table[table["passes"]]  # the table plan(counted, ["bf", "com"], 0.2, **FAST) makes
    assert passing.loc[passing["bytes"].idxmin(), "representation"] == "task summaries: bf, com"
    single_table, single = plan(counted, "bf", 0.2, **FAST)
    passing = single_table[single_table["passes"]]
    assert single == passing.loc[passing["bytes"].idxmin(), "representation"]
    assert single == "bf (reducer output)"
    # a float cube has no event row; a too-tight tolerance still leaves an exact representation
    binned_source = suite("smoke")[3]
    table, choice = plan(binned_source, "mean_pattern", 0.0, codecs=("blosc_zstd",))
    assert not table["representation"].str.startswith("events").any()
    assert _row(table, "binned 2x2")["recovers[mean_pattern]"] == NOT
    assert choice == "mean_pattern (reducer output)"


def test_sampling_is_seeded_and_reads_the_right_frames(counted):
    a = sample_positions(counted.shape, 50, seed=3)
    b = sample_positions(counted.shape, 50, seed=3)
    c = sample_positions(counted.shape, 50, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert sample_positions(counted.shape, None) is None and sample_positions(counted.shape, 10**6) is None
    view = gather(counted, a)
    frames = view.read_rows(0, 1)[0]
    y, x = divmod(int(a[7]), counted.shape[1])
    np.testing.assert_array_equal(frames[7], counted.read_rows(y, y + 1)[0, x])
    t1 = cost_table(counted, "com", 0.2, bins=(4,), codecs=(), max_positions=50, seed=3, events=False)
    t2 = cost_table(counted, "com", 0.2, bins=(4,), codecs=(), max_positions=50, seed=3, events=False)
    t3 = cost_table(counted, "com", 0.2, bins=(4,), codecs=(), max_positions=50, seed=4, events=False)
    assert _row(t1, "binned")["rel_rms[com]"] == _row(t2, "binned")["rel_rms[com]"]
    assert _row(t1, "binned")["rel_rms[com]"] != _row(t3, "binned")["rel_rms[com]"]
    assert t1.attrs["provenance"]["parameters"]["sampled"] is True


def test_provenance_records_source_calibration_and_versions(table, counted):
    prov = table.attrs["provenance"]
    assert prov["source"]["name"] == counted.name and prov["source"]["shape"] == list(counted.shape)
    assert len(prov["source"]["sha256"]) == 64
    assert prov["targets"] == ["bf", "com"] and prov["tolerance"] == {"bf": 0.2, "com": 0.2}
    assert prov["calibration"]["centre_y"] == 73.0 and prov["calibration"]["origin"] == "metadata"
    assert {"numpy", "stempress", "python"} <= set(prov["software"]) and prov["time"]


def test_target_parsing():
    t = parse_target("ADF: inner=1.2, outer=2.5")
    assert t.kind == "adf" and t.params == {"inner": 1.2, "outer": 2.5} and t.label == "adf:inner=1.2,outer=2.5"
    assert parse_target("radial:bins=16").params == {"bins": 16}
    assert [x.label for x in parse_targets("bf; com ;mean_pattern")] == ["bf", "com", "mean_pattern"]
    for bad in ("dpc", "bf:inner", "com:bins=3", "adf:inner=x", ""):
        with pytest.raises(StempressError):
            parse_targets(bad) if bad == "" else parse_target(bad)
    with pytest.raises(StempressError):
        parse_targets(["bf", "bf"])


@pytest.mark.parametrize(("representation", "targets"), [
    ("task summaries: bf, com", ["bf", "com"]),
    ("bf (reducer output)", ["bf", "com"]),
    ("entropy-coded events (Poisson model)", ["bf"]),
    ("binned 4x4 (float32 means)", ["bf"]),
])
def test_write_representation_writes_what_the_plan_names(counted, tmp_path, representation, targets):
    import h5py

    from stempress.plan import write_representation

    out = write_representation(counted, representation, targets, tmp_path / "chosen.h5")
    assert out.exists()
    with h5py.File(out) as f:
        names: list[str] = []
        f.visit(names.append)
    if representation.startswith("task"):
        assert "reduced/bf/BF" in names and "reduced/com/com_x" in names
    elif representation.startswith("bf"):
        assert "reduced/bf/BF" in names and not any(n.startswith("reduced/com") for n in names)
    else:
        assert names
    with pytest.raises(StempressError, match="--force"):
        write_representation(counted, representation, targets, out)


def test_error_column_does_not_depend_on_target_order(counted, table):
    """A reducer output cannot compute the other target: its error is NaN (not computable) in either order, never
    the 0 a max over [0, NaN] gave when NaN came second."""
    swapped = cost_table(counted, ["com", "bf"], 0.2, **LEAN)
    for frame in (table, swapped):
        for name in ("bf (reducer output)", "com (reducer output)"):
            row = _row(frame, name)
            assert np.isnan(row["error"]) and not row["passes"], (name, row["error"])
        assert _row(frame, "raw")["error"] == 0
