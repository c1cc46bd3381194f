"""The benchmark's output folder: tidy table (CSV + Parquet) and metadata, each written whole or not at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from stempress.atomic import atomic_output
from stempress.data.write import json_text
from stempress.errors import StempressError

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
METADATA_JSON = "metadata.json"
STATISTICS_CSV = "statistics.csv"


def prepare_out_dir(out: Path, force: bool) -> Path:
    """Refuse to mix new results into an old results folder unless asked."""
    if out.exists() and not out.is_dir():
        raise StempressError(f"{out} exists and is not a folder; choose another --out")
    if (out / RESULTS_CSV).exists() and not force:
        raise StempressError(f"{out} already holds benchmark results; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return out


def missing_root(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what making ``path`` would create), or None."""
    path = Path(path).absolute()
    root = None
    while not path.exists():
        root, path = path, path.parent
    return root


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write a results file whole or not at all (results folders are replaced as a whole, so it may replace one)."""
    with atomic_output(path, force=True) as tmp:
        write(tmp)
    return path


#: Yes/no columns that may be unknown (None) in some rows.
FLAG_COLUMNS = ("evicted", "verified", "in_memory")
#: The columns a measured row adds (``measure``); present, empty, in a table where nothing was measured.
MEASURED_COLUMNS = ("file_bytes", "data_bytes", "compression_ratio", "file_size_mb", "write_time", "read_time",
                    "write_throughput_gbs", "read_throughput_gbs", "peak_rss_mb", "evicted", "verified")


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The tidy table, every column present; flags become nullable booleans so CSV and Parquet agree."""
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=[*frame.columns, *(c for c in MEASURED_COLUMNS if c not in frame.columns)])
    for column in FLAG_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map({True: True, False: False}).astype("boolean")
    return frame


def save_results(out: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> pd.DataFrame:
    """Write results.csv, results.parquet and metadata.json (strict JSON: an unknown number is null, not NaN)."""
    frame = results_frame(rows)
    atomic_write(out / RESULTS_CSV, lambda p: frame.to_csv(p, index=False))
    atomic_write(out / RESULTS_PARQUET, lambda p: frame.to_parquet(p, index=False))
    atomic_write(out / METADATA_JSON, lambda p: p.write_text(json_text(metadata, indent=2)))
    return frame


def read_table(path: Path) -> pd.DataFrame:
    """Read one of our CSV tables; the baselines' chunking "n/a" stays a string (pandas would make it NaN)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def load_results(out: Path) -> pd.DataFrame:
    path = out / RESULTS_CSV
    if not path.exists():
        raise StempressError(f"{out}: no {RESULTS_CSV}; run `stempress bench --out {out}` first")
    return read_table(path)


def problems_table(results: pd.DataFrame) -> pd.DataFrame:
    """What did not produce a number, and why (skipped by the time limit, unavailable filter, error)."""
    columns = ["status", "dataset", "method", "reason", "runs"]
    if "status" not in results:
        return pd.DataFrame(columns=columns)
    bad = results[results["status"] != "ok"].copy()
    if bad.empty:
        return pd.DataFrame(columns=columns)
    bad["reason"] = bad["reason"].fillna("").astype(str)
    table = bad.groupby(["status", "dataset", "method", "reason"], dropna=False).size().rename("runs")
    return table.reset_index()[columns]
