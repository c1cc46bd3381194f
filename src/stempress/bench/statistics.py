"""Per-cell statistics over runs, with the study's column names so the two tables join."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Measured quantities, named as in the study's statistics.csv.
QUANTITIES = ("compression_ratio", "file_size_mb", "write_time", "read_time",
              "write_throughput_gbs", "read_throughput_gbs")
KEYS = ("dataset", "method", "path", "protocol")
SUMMARIES = ("mean", "std", "min", "max", "median", "cv_percent")


def statistics(results: pd.DataFrame) -> pd.DataFrame:
    """mean, std (sample, as the study), min, max, median and CV % of each quantity per dataset and method."""
    ok = results[results["status"] == "ok"] if "status" in results else results.iloc[:0]
    keys = [k for k in KEYS if k in ok.columns]
    columns = [*keys, "codec", "chunking", "n_runs", *(f"{q}_{s}" for q in QUANTITIES for s in SUMMARIES),
               "chunk_size"]
    parts = []
    for key, group in ok.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row["codec"] = group["codec"].iloc[0]
        row["chunking"] = group["chunking"].iloc[0]
        row["n_runs"] = len(group)
        for q in QUANTITIES:
            values = group[q].astype(float)
            mean = values.mean()
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            row |= {
                f"{q}_mean": mean, f"{q}_std": std, f"{q}_min": values.min(), f"{q}_max": values.max(),
                f"{q}_median": values.median(), f"{q}_cv_percent": 100 * std / mean if mean else np.nan,
            }
        row["chunk_size"] = group["chunk_size"].iloc[0]
        parts.append(row)
    return pd.DataFrame(parts, columns=columns)  # with its header even when nothing succeeded


def summary(stats: pd.DataFrame) -> pd.DataFrame:
    """One line per method and chunking, averaged over datasets (the study's "mean over datasets")."""
    if stats.empty:
        return stats
    keys = [k for k in ("codec", "chunking", "path") if k in stats.columns]
    grouped = stats.groupby(keys, sort=False)
    table = pd.DataFrame({
        "ratio": grouped["compression_ratio_mean"].mean(),
        "write_gibs": grouped["write_throughput_gbs_mean"].mean(),
        "read_gibs": grouped["read_throughput_gbs_mean"].mean(),
        "write_cv_percent": grouped["write_time_cv_percent"].mean(),
        "read_cv_percent": grouped["read_time_cv_percent"].mean(),
        "datasets": grouped["dataset"].nunique(),
    }).reset_index()
    return table.sort_values("ratio", ascending=False, ignore_index=True)
