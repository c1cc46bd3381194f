"""The report's tables as plain DataFrames (numbers stay numbers in the CSV), plus Markdown and display text.

Each builder takes the per-dataset statistics (``statistics.csv``) and returns one table of the study's kind;
formatting for people (Markdown, HTML) happens once, in :func:`display_frame`, so every output agrees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stempress.bench.results import atomic_write

#: The study's three chunkings, in its order; baselines have no chunking.
CHUNKINGS = ("real_space", "balanced", "single_frame")
NO_CHUNKING = "n/a"

#: How a column is headed for people (CSV files keep the snake_case names).
COLUMN_LABELS: dict[str, str] = {
    "size_mib": "size (MiB)", "zero_count": "zeros", "sparsity": "sparsity", "max_value": "max",
    "max_bits": "bits of max", "count_gt_4095": "> 4095", "count_gt_16383": "> 16383",
    "bound_sparsity": "bound: sparsity", "bound_order0": "bound: order-0", "bound_poisson": "bound: Poisson",
    "tightest_bound": "tightest bound", "tightest_bound_ratio": "tightest bound (ratio)",
    "ratio": "ratio", "ratio_min": "ratio min", "ratio_max": "ratio max", "ratio_cv_percent": "ratio CV %",
    "write_gibs": "write (GiB/s)", "read_gibs": "read (GiB/s)", "write_time_s": "write time (s)",
    "write_cv_percent": "write CV %", "read_cv_percent": "read CV %", "fraction_of_bound": "fraction of bound",
    "ratio_study": "study's ratio", "differs_from_study": "differs from the study's",
    "n_runs": "runs", "n_datasets": "datasets", "n_codecs": "codecs", "n_cells": "cells", "runs": "runs",
}


def _num(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def format_value(value: Any) -> str:
    """Three significant figures, more for big numbers; NaN/None as an en dash so gaps stand out."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if _num(value):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"  # counts stored as float because a column has gaps
        size = abs(v)
        if size >= 100:
            return f"{v:,.0f}"
        if size >= 10:
            return f"{v:.1f}"
        if size >= 1:
            return f"{v:.2f}"
        return "0" if v == 0 else f"{v:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """All cells as text, columns headed for people."""
    shown = frame.astype(object).map(format_value) if not frame.empty else frame.astype(str)
    return shown.rename(columns=lambda c: COLUMN_LABELS.get(str(c), str(c)))


def numeric_columns(frame: pd.DataFrame) -> set[str]:
    """Columns to right-align: every non-missing cell is a number."""
    out = set()
    for column in frame.columns:
        values = [v for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(_num(v) for v in values):
            out.add(COLUMN_LABELS.get(str(column), str(column)))
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs tabulate, which we do not depend on)."""
    shown = display_frame(frame)
    right = numeric_columns(frame)
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in shown.itertuples(index=False)]
    header = [str(c).replace("|", "\\|") for c in shown.columns]
    rule = ["---:" if h in right else "---" for h in shown.columns]
    lines = ["| " + " | ".join(r) + " |" for r in (header, rule, *cells)]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, folder: Path, name: str) -> tuple[Path, Path]:
    """``name.csv`` (full precision) and ``name.md`` (as shown), each written whole or not at all."""
    csv = atomic_write(folder / f"{name}.csv", lambda p: frame.to_csv(p, index=False))
    md = atomic_write(folder / f"{name}.md", lambda p: p.write_text(markdown_table(frame), encoding="utf-8"))
    return csv, md


# --------------------------------------------------------------------------------------------------- helpers


def families(results: pd.DataFrame) -> dict[str, str]:
    """codec -> family, from the results (which record it) and the catalog for anything the results lack."""
    from stempress.codecs.catalog import CATALOG

    out = {name: codec.family for name, codec in CATALOG.items()}
    if {"codec", "family"} <= set(results.columns):
        known = results.dropna(subset=["codec", "family"]).drop_duplicates("codec")
        out |= dict(zip(known["codec"], known["family"], strict=True))
    return out


def method_means(stats: pd.DataFrame, chunking: str | None = "balanced") -> pd.DataFrame:
    """Mean over datasets per method (the study's "mean over datasets"); ``complete`` flags full coverage.

    A method measured on fewer datasets (skipped by the time limit, say) has a mean over different data,
    so figures mark it instead of silently ranking it against the rest.
    """
    columns = ["method", "codec", "chunking", "ratio", "write_gibs", "read_gibs", "write_time_s",
               "write_cv_percent", "read_cv_percent", "n_datasets", "complete"]
    rows = stats if chunking is None else stats[stats["chunking"] == chunking]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    grouped = rows.groupby(["method", "codec", "chunking"], sort=False)
    table = pd.DataFrame({
        "ratio": grouped["compression_ratio_mean"].mean(),
        "write_gibs": grouped["write_throughput_gbs_mean"].mean(),
        "read_gibs": grouped["read_throughput_gbs_mean"].mean(),
        "write_time_s": grouped["write_time_mean"].mean(),
        "write_cv_percent": grouped["write_time_cv_percent"].mean(),
        "read_cv_percent": grouped["read_time_cv_percent"].mean(),
        "n_datasets": grouped["dataset"].nunique(),
    }).reset_index()
    table["complete"] = table["n_datasets"] == stats["dataset"].nunique()
    return table[columns].sort_values("ratio", ascending=False, ignore_index=True)


def _bounds(inventory: pd.DataFrame | None) -> pd.DataFrame | None:
    if inventory is None or "tightest_bound_ratio" not in inventory:
        return None
    cols = [c for c in ("dataset_id", "sparsity_fraction", "tightest_bound", "tightest_bound_ratio") if c in inventory]
    return inventory[cols].rename(columns={"dataset_id": "dataset", "sparsity_fraction": "sparsity"})


# ---------------------------------------------------------------------------------------------------- tables


def datasets_table(inventory: pd.DataFrame) -> pd.DataFrame:
    """Table 1: what each cube is, and the ratio no lossless code of its kind can beat (three bounds)."""
    table = pd.DataFrame({"dataset": inventory["dataset_id"]})
    table["shape"] = inventory.get("shape")
    table["dtype"] = inventory.get("dtype")
    if "uncompressed_bytes" in inventory:
        table["size_mib"] = inventory["uncompressed_bytes"].astype(float) / 2**20
    renames = {"zero_count": "zero_count", "sparsity_fraction": "sparsity", "max_value": "max_value",
               "max_bits_int": "max_bits", "count_gt_4095": "count_gt_4095", "count_gt_16383": "count_gt_16383",
               "bound_sparsity": "bound_sparsity", "bound_order0": "bound_order0", "bound_poisson": "bound_poisson",
               "tightest_bound": "tightest_bound", "tightest_bound_ratio": "tightest_bound_ratio"}
    for source, target in renames.items():
        if source in inventory:
            table[target] = inventory[source].to_numpy()
    return table.reset_index(drop=True)


def best_table(stats: pd.DataFrame, best: pd.DataFrame, inventory: pd.DataFrame | None) -> pd.DataFrame:
    """Table 3: the best ratio per dataset, its speed, and how close it gets to the dataset's tightest bound."""
    speed = stats[["dataset", "method", "write_throughput_gbs_mean", "read_throughput_gbs_mean"]]
    table = best.merge(speed, on=["dataset", "method"], how="left").rename(columns={
        "compression_ratio_mean": "ratio", "write_throughput_gbs_mean": "write_gibs",
        "read_throughput_gbs_mean": "read_gibs"})
    table = table[["dataset", "method", "codec", "chunking", "ratio", "write_gibs", "read_gibs"]]
    bounds = _bounds(inventory)
    if bounds is not None:
        table = table.merge(bounds, on="dataset", how="left")
        table["fraction_of_bound"] = table["ratio"] / table["tightest_bound_ratio"]
    return table.sort_values("ratio", ascending=False, ignore_index=True)


def methods_table(stats: pd.DataFrame, inventory: pd.DataFrame | None) -> pd.DataFrame:
    """Every method on every dataset, with its ratio as a fraction of that dataset's tightest bound."""
    table = stats.rename(columns={
        "compression_ratio_mean": "ratio", "compression_ratio_cv_percent": "ratio_cv_percent",
        "write_throughput_gbs_mean": "write_gibs", "read_throughput_gbs_mean": "read_gibs",
        "write_time_cv_percent": "write_cv_percent", "read_time_cv_percent": "read_cv_percent"})
    table = table[["dataset", "method", "codec", "chunking", "n_runs", "ratio", "write_gibs", "read_gibs",
                   "write_cv_percent", "read_cv_percent"]]
    bounds = _bounds(inventory)
    if bounds is not None:
        table = table.merge(bounds[["dataset", "tightest_bound_ratio"]], on="dataset", how="left")
        table["fraction_of_bound"] = table["ratio"] / table["tightest_bound_ratio"]
        table = table.drop(columns="tightest_bound_ratio")
    return table.sort_values(["dataset", "ratio"], ascending=[True, False], ignore_index=True)


def families_table(stats: pd.DataFrame, family_of: Mapping[str, str], chunking: str = "balanced") -> pd.DataFrame:
    """Table 4: per codec family, over datasets and codecs (balanced chunking; baselines have none)."""
    rows = stats[stats["chunking"].isin([chunking, NO_CHUNKING])].copy()
    columns = ["family", "n_codecs", "ratio", "ratio_min", "ratio_max", "write_time_s", "write_gibs", "read_gibs"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows["family"] = rows["codec"].map(lambda c: family_of.get(c, "unknown"))
    grouped = rows.groupby("family", sort=False)
    table = pd.DataFrame({
        "n_codecs": grouped["codec"].nunique(),
        "ratio": grouped["compression_ratio_mean"].mean(),
        "ratio_min": grouped["compression_ratio_mean"].min(),
        "ratio_max": grouped["compression_ratio_mean"].max(),
        "write_time_s": grouped["write_time_mean"].mean(),
        "write_gibs": grouped["write_throughput_gbs_mean"].mean(),
        "read_gibs": grouped["read_throughput_gbs_mean"].mean(),
    }).reset_index()
    return table[columns].sort_values("ratio", ascending=False, ignore_index=True)


def _common_cells(stats: pd.DataFrame, chunkings: Sequence[str]) -> pd.DataFrame:
    """Rows of the (dataset, codec) pairs measured under every chunking: a fair comparison between them."""
    rows = stats[stats["chunking"].isin(chunkings)]
    counts = rows.groupby(["dataset", "codec"])["chunking"].nunique()
    keep = counts[counts == len(chunkings)].index
    return rows.set_index(["dataset", "codec"]).loc[keep].reset_index() if len(keep) else rows.iloc[:0]


def chunking_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Table 5: per chunking mean ratio, write and read; then how much they vary between chunkings.

    Only (dataset, codec) pairs measured under every chunking count, so a skipped cell cannot fake a
    difference. Two spreads: of the chunkings' means ((max - min) / min, the study's "varies by"), and
    the median over pairs of each pair's own spread of ratio, write time and read time (chunking matters more
    for some codecs than on average).
    """
    present = [c for c in CHUNKINGS if c in set(stats["chunking"])]
    present += sorted(set(stats["chunking"]) - set(CHUNKINGS) - {NO_CHUNKING})
    columns = ["chunking", "n_cells", "ratio", "write_gibs", "read_gibs"]
    rows = _common_cells(stats, present)
    if rows.empty:
        return pd.DataFrame(columns=columns)
    metrics = {"ratio": "compression_ratio_mean", "write_gibs": "write_throughput_gbs_mean",
               "read_gibs": "read_throughput_gbs_mean"}
    grouped = rows.groupby("chunking")
    table = pd.DataFrame({"n_cells": grouped.size()} | {k: grouped[v].mean() for k, v in metrics.items()})
    table = table.reindex(present).reset_index()
    if len(present) > 1:
        spread = {k: _spread(table[k]) for k in metrics}
        # per pair from the mean times, as compare.study_findings does (the spread of raw / time is the
        # spread of the time; the mean of per-run throughputs would weigh a slow outlier run less)
        timed = {"ratio": "compression_ratio_mean", "write_gibs": "write_time_mean", "read_gibs": "read_time_mean"}
        per_pair = rows.pivot_table(index=["dataset", "codec"], columns="chunking", values=list(timed.values()))
        median = {k: float(np.nanmedian([_spread(per_pair[v].loc[i]) for i in per_pair.index]))
                  for k, v in timed.items()}
        extra = pd.DataFrame([{"chunking": "variation of the means (%)", "n_cells": np.nan} | spread,
                              {"chunking": "median variation per codec (%)", "n_cells": np.nan} | median])
        table = pd.concat([table, extra], ignore_index=True)
    return table[columns]


def _spread(values: Iterable[float]) -> float:
    """(max - min) / min in percent: "varies by X %"."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size < 2 or arr.min() <= 0:
        return float("nan")
    return float(100 * (arr.max() - arr.min()) / arr.min())


def chunking_variation(table: pd.DataFrame) -> dict[str, float]:
    """The spread of the means from :func:`chunking_table`, for a sentence in the report."""
    row = table[table["chunking"] == "variation of the means (%)"]
    if row.empty:
        return {}
    return {k: float(row[k].iloc[0]) for k in ("ratio", "write_gibs", "read_gibs")}


def recommendations_table(recommendations: Iterable[Any]) -> pd.DataFrame:
    """One row per use case, from :class:`stempress.bench.ranking.Recommendation` objects."""
    fields = ["use_case", "method", "codec", "chunking", "ratio", "write_gibs", "read_gibs", "why", "alternatives"]
    rows = [{f: getattr(rec, f, None) for f in fields} for rec in recommendations]
    for row in rows:
        if isinstance(row["alternatives"], list | tuple):
            row["alternatives"] = ", ".join(str(a) for a in row["alternatives"])
    return pd.DataFrame(rows, columns=fields)


def baselines_table(stats: pd.DataFrame, results: pd.DataFrame, study: pd.DataFrame | None) -> pd.DataFrame:
    """One row per measured non-HDF5 baseline and dataset: our ratio, the study's where it has the dataset, and
    how the two baselines differ on that dataset's dtype (the study's casts lose data on some)."""
    from stempress.bench.baselines import study_difference

    columns = ["dataset", "dtype", "method", "ratio", "ratio_study", "differs_from_study"]
    dtypes = results.drop_duplicates("dataset").set_index("dataset")["dtype"] if "dtype" in results else {}
    rows = []
    theirs = {} if study is None else study.set_index(["dataset", "method"])["compression_ratio_mean"].to_dict()
    for row in stats.itertuples():
        dtype = dtypes.get(row.dataset)
        note = study_difference(str(row.codec), dtype) if dtype is not None else None
        if note is None:
            continue
        rows.append({"dataset": row.dataset, "dtype": dtype, "method": row.method,
                     "ratio": row.compression_ratio_mean, "ratio_study": theirs.get((row.dataset, row.method)),
                     "differs_from_study": note})
    return pd.DataFrame(rows, columns=columns)


def paths_table(stats: pd.DataFrame) -> pd.DataFrame:
    """The filter pipeline and the parallel writer side by side, per dataset and method (same codec and chunks)."""
    from stempress.bench.measure import FILTER, PARALLEL

    key = ["dataset", "method"]
    columns = {"compression_ratio_mean": "ratio", "write_throughput_gbs_mean": "write GiB/s",
               "read_throughput_gbs_mean": "read GiB/s"}
    filt = stats[stats["path"] == FILTER].set_index(key)[list(columns)].rename(columns=columns)
    par = stats[stats["path"] == PARALLEL].set_index(key)[list(columns)].rename(columns=columns)
    joined = filt.join(par, lsuffix=" filter", rsuffix=" parallel", how="inner")
    for what in ("write", "read"):
        joined[f"{what} speed-up"] = joined[f"{what} GiB/s parallel"] / joined[f"{what} GiB/s filter"]
    order = ["ratio filter", "ratio parallel", "write GiB/s filter", "write GiB/s parallel", "write speed-up",
             "read GiB/s filter", "read GiB/s parallel", "read speed-up"]
    return joined[order].reset_index()
