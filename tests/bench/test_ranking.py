"""The study's top-performer rule and Pareto fronts, on the study's own statistics and on constructed tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stempress.bench.compare import load_study_statistics
from stempress.bench.measure import split_method
from stempress.bench.ranking import normalised, pareto_front, per_method, recommend, top_performers
from stempress.errors import StempressError

STUDY_SIX = {"balanced_blosc_lz4", "balanced_blosc_blosclz", "balanced_bitshuffle_lz4", "balanced_blosc_lz4hc",
             "balanced_blosc_zstd", "balanced_blosc_zlib"}


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    return load_study_statistics()


def stats_table(values: dict[str, list[tuple[float, float, float]]], datasets=("d1", "d2")) -> pd.DataFrame:
    """A statistics table from method -> [(ratio, write GiB/s, read GiB/s) per dataset]."""
    rows = []
    for method, per_dataset in values.items():
        chunking, codec = split_method(method)
        for dataset, (ratio, write, read) in zip(datasets, per_dataset, strict=False):
            rows.append({"dataset": dataset, "method": method, "codec": codec, "chunking": chunking,
                         "protocol": "warm", "n_runs": 3, "compression_ratio_mean": ratio,
                         "write_throughput_gbs_mean": write, "read_throughput_gbs_mean": read,
                         "write_time_cv_percent": 1.0, "read_time_cv_percent": 1.0})
    return pd.DataFrame(rows)


def test_study_rule_selects_the_studys_six(study):
    table = top_performers(study, chunking="balanced", top_n=10)
    assert set(table.loc[table["selected"], "method"]) == STUDY_SIX
    by_method = table.set_index("method")
    # five pass all three top-10 cuts; zlib is in only for the highest mean ratio (13.49x vs zstd's 13.47x)
    all_three = by_method["top_ratio_all"] & by_method["top_write_all"] & by_method["top_read_all"]
    assert set(by_method.index[all_three]) == STUDY_SIX - {"balanced_blosc_zlib"}
    assert by_method["highest_ratio"].sum() == 1 and by_method.loc["balanced_blosc_zlib", "highest_ratio"]
    assert not by_method.loc["balanced_blosc_zlib", "top_write_all"]
    assert by_method.loc["balanced_blosc_zlib", "ratio"] == pytest.approx(13.486, abs=1e-3)
    # only the 13 balanced HDF5 methods compete: the file baselines have no chunking
    assert len(table) == 13 and not table["method"].isin(["simple_gzip", "sparse_csr"]).any()
    assert table.attrs["note"] == ""
    assert "write rank 13 on 3D_EELS" in by_method.loc["balanced_gzip_9", "why"]


def test_study_use_cases_match_its_advice(study):
    # PAPER.md: zlib = smallest files; lz4 = highest throughput for acquisition; lz4hc = fastest reads
    assert recommend(study, "archive").codec == "blosc_zlib"
    assert recommend(study, "acquisition").codec == "blosc_lz4"
    assert recommend(study, "analysis").codec == "blosc_lz4hc"


def test_top_n_ranks_every_dataset_and_ties_share_a_rank():
    table = top_performers(stats_table({
        "balanced_a": [(10, 1, 1), (10, 1, 1)],
        "balanced_b": [(9, 3, 3), (2, 3, 3)],   # third of four in ratio on d2
        "balanced_c": [(9, 2, 2), (9, 2, 2)],   # ties with b on d1
        "balanced_d": [(1, 4, 4), (1, 4, 4)],
    }), top_n=2).set_index("method")
    assert table.loc["balanced_c", "worst_ratio_rank"] == 2 and table.loc["balanced_b", "worst_ratio_rank"] == 3
    assert table.loc["balanced_c", "top_ratio_all"] and not table.loc["balanced_b", "top_ratio_all"]
    assert "ratio rank 3 on d2" in table.loc["balanced_b", "why"]
    assert set(table.index[table["selected"]]) == {"balanced_a"}  # highest ratio; nobody passes all three


def test_too_few_methods_is_said_not_silently_selected():
    stats = stats_table({f"balanced_m{i}": [(i + 1, 5 - i, 1 + i)] * 2 for i in range(4)})
    table = top_performers(stats, top_n=10)
    assert table["top_ratio_all"].all() and table["top_write_all"].all()
    assert set(table.loc[table["selected"], "method"]) == {"balanced_m3"}
    assert "cannot discriminate" in table.attrs["note"] and "only 4" in table.attrs["note"]
    assert all("cannot discriminate" in why for why in table["why"])
    assert top_performers(stats, top_n=3).attrs["note"] == ""


def test_method_missing_on_a_dataset_is_not_top_everywhere():
    stats = stats_table({"balanced_a": [(5, 5, 5)], "balanced_b": [(1, 1, 1), (1, 1, 1)]})
    table = top_performers(stats, top_n=1).set_index("method")
    assert not table.loc["balanced_a", "top_ratio_all"]
    assert table.loc["balanced_b", "highest_ratio"]  # a's higher mean covers one dataset only
    assert "measured on 1 of 2 datasets" in table.loc["balanced_a", "why"]


def test_csv_round_trip_of_baselines_keeps_their_chunking(tmp_path):
    stats = stats_table({"balanced_gzip_9": [(3, 1, 1)] * 2, "simple_gzip": [(4, 1, 1)] * 2})
    stats.to_csv(tmp_path / "s.csv", index=False)
    back = normalised(pd.read_csv(tmp_path / "s.csv"))  # pandas reads "n/a" as NaN
    assert set(back.loc[back["method"] == "simple_gzip", "chunking"]) == {"n/a"}
    assert split_method("chunks_16x16x64x64_blosc_zstd") == ("chunks_16x16x64x64", "blosc_zstd")
    assert split_method("single_frame_lz4_hdf5") == ("single_frame", "lz4_hdf5")
    assert per_method(back).set_index("method").loc["simple_gzip", "ratio"] == 4


def test_user_errors_are_one_line():
    stats = stats_table({"balanced_a": [(2, 1, 1)] * 2})
    with pytest.raises(StempressError, match="chunking 'real_space'"):
        top_performers(stats, chunking="real_space")
    mixed = pd.concat([stats, stats.assign(protocol="cold")])
    with pytest.raises(StempressError, match="mix protocols"):
        top_performers(mixed)
    with pytest.raises(StempressError, match="lacks column"):
        top_performers(stats.drop(columns="read_throughput_gbs_mean"))


def test_pareto_front_keeps_only_undominated_points():
    table = pd.DataFrame({
        "x": [1.0, 2.0, 2.0, 3.0, 0.5, 2.0, np.nan, 3.0],
        "y": [5.0, 4.0, 2.0, 1.0, 0.5, 4.0, 9.0, 0.5],
    }, index=list("ABCDEFGH"))
    front = pareto_front(table, "x", "y")
    assert front.index.equals(table.index) and front.dtype == bool
    # C (2,2) is beaten by B; E by everyone; H (3,0.5) by D (3,1); B and its duplicate F both stay; G is NaN
    assert list(front[front].index) == ["A", "B", "D", "F"]
    assert pareto_front(table.iloc[:0], "x", "y").empty


def test_top_performers_ranks_a_missing_speed_last():
    study = load_study_statistics()
    study.loc[study["method"] == "balanced_gzip_1", "read_throughput_gbs_mean"] = float("nan")
    top = top_performers(study).set_index("codec")
    assert not top.loc["gzip_1", "top_read_all"]
    assert top["selected"].sum() == 6
