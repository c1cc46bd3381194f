"""Which method to use: the study's top-performer rule, Pareto fronts and one recommendation per use case.

Everything works on a statistics table (``stempress.bench.statistics.statistics`` or the study's own
``statistics.csv``): one row per dataset and method, only measured (status ok) cells. Averages over datasets
are means of the per-dataset means, as the study computes its "mean over datasets".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stempress.bench.measure import NO_CHUNKING, split_method
from stempress.errors import StempressError

#: The column each quantity comes from in a statistics table.
RATIO, WRITE, READ = "compression_ratio_mean", "write_throughput_gbs_mean", "read_throughput_gbs_mean"


USE_CASES = ("archive", "acquisition", "analysis", "balanced")


# --------------------------------------------------------------------------------------------- tables


def normalised(stats: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``codec`` and ``chunking`` columns, derived from the method name where missing.

    The study's statistics.csv has neither column, and a CSV round trip turns ``n/a`` into NaN.
    """
    missing = [c for c in ("dataset", "method", RATIO, WRITE, READ) if c not in stats.columns]
    if missing:
        raise StempressError(f"statistics table lacks column(s) {', '.join(missing)}; pass a statistics.csv "
                             "made by stempress bench or the study's")
    table = stats.copy()
    parsed = table["method"].map(split_method)
    if "chunking" not in table.columns:
        table["chunking"] = parsed.str[0]
    if "codec" not in table.columns:
        table["codec"] = parsed.str[1]
    table["chunking"] = table["chunking"].where(table["chunking"].notna(), NO_CHUNKING).astype(str)
    table["codec"] = table["codec"].where(table["codec"].notna(), parsed.str[1]).astype(str)
    if "protocol" in table.columns and table["protocol"].nunique() > 1:
        found = ", ".join(sorted(map(str, table["protocol"].unique())))
        raise StempressError(f"statistics mix protocols ({found}); rank one at a time, e.g. "
                             "stats[stats.protocol == 'warm']")
    return table.dropna(subset=[RATIO]).reset_index(drop=True)


def per_method(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per method: means over datasets, the slowest dataset's write, and how many datasets it covers."""
    table = normalised(stats)
    grouped = table.groupby("method", sort=True)
    out = pd.DataFrame({
        "codec": grouped["codec"].first(),
        "chunking": grouped["chunking"].first(),
        "datasets": grouped["dataset"].nunique(),
        "ratio": grouped[RATIO].mean(),
        "write_gibs": grouped[WRITE].mean(),
        "read_gibs": grouped[READ].mean(),
        "min_write_gibs": grouped[WRITE].min(),
    })
    out.index.name = "method"
    return out.reset_index()


# ----------------------------------------------------------------------------------- top performers


def top_performers(stats: pd.DataFrame, chunking: str = "balanced", top_n: int = 10) -> pd.DataFrame:
    """The study's rule: in the top ``top_n`` of ratio, write AND read throughput on every dataset, plus the
    method with the highest mean ratio.

    Only methods with the given chunking compete, so the non-HDF5 baselines (chunking ``n/a``) do not: that
    is the reading that reproduces the study's six from its own statistics.csv (13 balanced methods). Ties
    share a rank. When a dataset has ``top_n`` methods or fewer, every method is trivially "top", so only the
    highest-ratio method is selected and ``attrs["note"]`` (and each ``why``) says so.
    """
    if top_n < 1:
        raise StempressError(f"top_n must be at least 1, got {top_n}")
    table = normalised(stats)
    rows = table[table["chunking"] == chunking]
    if rows.empty:
        known = ", ".join(sorted(table["chunking"].unique())) or "none"
        raise StempressError(f"no statistics with chunking {chunking!r}; pick one of: {known}")
    datasets = sorted(rows["dataset"].unique())
    out = per_method(rows)
    complete = out["datasets"] == len(datasets)
    for label, column in (("ratio", RATIO), ("write", WRITE), ("read", READ)):
        # a missing number (e.g. the study's baselines have no read speed) ranks last, never crashes the rule
        rank = rows.groupby("dataset")[column].rank(ascending=False, method="min", na_option="bottom")
        out[f"worst_{label}_rank"] = out["method"].map(rank.groupby(rows["method"]).max()).astype(int)
        out[f"worst_{label}_dataset"] = out["method"].map(
            _worst_dataset(rows.assign(rank=rank), "rank"))
        out[f"top_{label}_all"] = complete & (out[f"worst_{label}_rank"] <= top_n)
    best_pool = out[complete] if complete.any() else out
    out["highest_ratio"] = out["method"] == best_pool.loc[best_pool["ratio"].idxmax(), "method"]

    smallest = int(rows.groupby("dataset")["method"].nunique().min())
    discriminates = smallest > top_n
    all_three = out["top_ratio_all"] & out["top_write_all"] & out["top_read_all"]
    out["selected"] = (all_three & discriminates) | out["highest_ratio"]
    note = "" if discriminates else (
        f"only {smallest} {chunking} methods on some dataset, not more than top {top_n}: every method is in "
        f"the top {top_n}, so the rule cannot discriminate; only the highest ratio is selected (lower top_n)")
    out["why"] = [_why_top(row, len(datasets), top_n, note) for row in out.itertuples()]
    out = out.sort_values(["selected", "ratio"], ascending=False, ignore_index=True)
    out.attrs.update({"chunking": chunking, "top_n": top_n, "datasets": datasets, "note": note})
    return out


def _worst_dataset(rows: pd.DataFrame, column: str) -> pd.Series:
    """For each method, the dataset where it ranks worst (the reason it may miss the cut)."""
    idx = rows.groupby("method")[column].idxmax()
    return rows.loc[idx].set_index("method")["dataset"]


def _why_top(row, n_datasets: int, top_n: int, note: str) -> str:
    parts = []
    for label in ("ratio", "write", "read"):
        rank, where = getattr(row, f"worst_{label}_rank"), getattr(row, f"worst_{label}_dataset")
        if getattr(row, f"top_{label}_all"):
            parts.append(f"{label} top {top_n} on all {n_datasets} datasets (worst rank {rank})")
        elif row.datasets < n_datasets:
            parts.append(f"{label}: measured on {row.datasets} of {n_datasets} datasets")
        else:
            parts.append(f"{label} rank {rank} on {where}")
    text = "; ".join(parts)
    if row.highest_ratio:
        text = f"highest mean ratio {row.ratio:.2f}x; " + text
    verdict = "selected" if row.selected else "not selected"
    return f"{verdict}: {text}" + (f" ({note})" if note else "")


# --------------------------------------------------------------------------------------------- pareto


def pareto_front(table: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for points no other point beats on both axes (higher is better on both); NaN points are False."""
    xs = table[x].to_numpy(dtype=float)
    ys = table[y].to_numpy(dtype=float)
    valid = ~(np.isnan(xs) | np.isnan(ys))
    xv, yv = np.where(valid, xs, -np.inf), np.where(valid, ys, -np.inf)
    at_least = (xv[None, :] >= xv[:, None]) & (yv[None, :] >= yv[:, None])
    better = (xv[None, :] > xv[:, None]) | (yv[None, :] > yv[:, None])
    dominated = (at_least & better & valid[None, :]).any(axis=1)
    return pd.Series(valid & ~dominated, index=table.index, name="pareto")


# ------------------------------------------------------------------------------------ recommendations


@dataclass
class Recommendation:
    """One method for one use case, with the numbers behind the choice."""

    use_case: str
    codec: str
    chunking: str
    method: str
    ratio: float
    write_gibs: float
    read_gibs: float
    why: str
    alternatives: list[str] = field(default_factory=list)
    #: For acquisition at a rate: whether the method keeps up with it (None without a rate).
    meets_rate: bool | None = None


def recommend(stats: pd.DataFrame, use_case: str, required_write_gibs: float | None = None) -> Recommendation:
    """The method for a use case.

    - archive: highest mean ratio (smallest files); ties broken by write speed.
    - acquisition: with ``required_write_gibs`` (the detector's rate), the best ratio among methods whose
      write throughput meets it on every dataset, else (said so) the method with the fastest slowest-dataset
      write; without a rate, the fastest writer among the top half of ratio.
    - analysis: the fastest reader among the top half of ratio (so ``none`` cannot win by reading raw bytes).

    "Top half of ratio" is the upper half of the ratio scale, at least half the best mean ratio; on the
    study's statistics.csv this gives its own advice (archive zlib, acquisition lz4, analysis lz4hc).
    - balanced: among the top half of ratio, the best geometric mean of ratio, write and read, each divided by
      the best candidate's value, so all three count equally whatever their units.

    Candidates are methods measured on every dataset (a method skipped on one dataset has no fair mean) that
    ``stempress compress`` can write (HDF5 codecs; the study's file baselines are measured, never recommended).
    """
    if use_case not in USE_CASES:
        raise StempressError(f"unknown use case {use_case!r}; choose one of {', '.join(USE_CASES)}")
    if required_write_gibs is not None and not required_write_gibs > 0:
        raise StempressError(f"required write rate must be positive GiB/s, got {required_write_gibs}")
    if use_case != "acquisition":
        required_write_gibs = None
    table = per_method(stats)
    if table.empty:
        raise StempressError("the statistics hold no measured method (every cell skipped or failed); "
                             "rerun the benchmark with a longer time limit or other methods")
    refused = sorted(set(table.loc[~table["codec"].map(compress_writes), "method"]))
    table = table[table["codec"].map(compress_writes)]
    if table.empty:
        raise StempressError(f"no measured method can be written by stempress compress (measured only "
                             f"{', '.join(refused)}); benchmark HDF5 codecs, e.g. --methods paper")
    n_datasets = int(normalised(stats)["dataset"].nunique())
    pool = table[table["datasets"] == n_datasets]
    if pool.empty:
        pool = table
    left_out = sorted(set(table["method"]) - set(pool["method"]))
    ranked, why = _RANKERS[use_case](pool.reset_index(drop=True), n_datasets, required_write_gibs)
    best = ranked.iloc[0]
    if left_out:
        why += f" (left out, not measured on every dataset: {', '.join(left_out)})"
    if refused:
        why += f" (left out, stempress compress cannot write them: {', '.join(refused)})"
    meets = None if required_write_gibs is None else bool(best["min_write_gibs"] >= required_write_gibs)
    return Recommendation(
        use_case=use_case, codec=str(best["codec"]), chunking=str(best["chunking"]), method=str(best["method"]),
        ratio=float(best["ratio"]), write_gibs=float(best["write_gibs"]), read_gibs=float(best["read_gibs"]),
        why=why, alternatives=[str(m) for m in ranked["method"].iloc[1:4]], meets_rate=meets,
    )


def compress_writes(codec: str) -> bool:
    """Whether ``stempress compress --codec CODEC`` accepts it: a catalog codec stored in HDF5, or the entropy
    code of counts, which compress writes as a file of its own (it refuses the study's non-HDF5 baselines)."""
    from stempress.codecs.catalog import CATALOG
    from stempress.store.compress import ENTROPY_CODEC

    known = CATALOG.get(codec)
    return known is not None and (known.storage == "hdf5" or known.name == ENTROPY_CODEC)


def gibs(value: float) -> str:
    """Three significant figures: gzip-9 writes at 0.00106 GiB/s, Blosc lz4 at 1.52."""
    return f"{value:.3g}"


def _top_half(pool: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Methods in the upper half of the ratio scale (at least half the best ratio: files at most twice the
    smallest), and how to say so. The scale, not the rank: with three chunkings per codec a rank cut keeps
    slow gzip variants and drops Blosc lz4, which the study names the acquisition choice."""
    floor = pool["ratio"].max() / 2
    kept = pool[pool["ratio"] >= floor]
    return kept, f"the {len(kept)} of {len(pool)} methods with at least half the best ratio (>= {floor:.2f}x)"


def _sort(pool: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Descending on ``keys``, then by name so equal numbers give a stable answer."""
    return pool.sort_values([*keys, "method"], ascending=[False] * len(keys) + [True], ignore_index=True)


def _runner_up(ranked: pd.DataFrame, text: str) -> str:
    if len(ranked) < 2:
        return "; no runner-up (one candidate)."
    return f"; runner-up {ranked.loc[1, 'method']} {text.format(**ranked.loc[1].to_dict())}."


def _archive(pool: pd.DataFrame, n: int, rate: float | None) -> tuple[pd.DataFrame, str]:
    ranked = _sort(pool.assign(ratio_key=pool["ratio"].round(9)), ["ratio_key", "write_gibs"])
    b = ranked.iloc[0]
    why = (f"smallest files: {b['method']} has the highest mean ratio, {b['ratio']:.2f}x over {n} datasets "
           f"(write {gibs(b['write_gibs'])} GiB/s, read {gibs(b['read_gibs'])} GiB/s)")
    return ranked, why + _runner_up(ranked, "{ratio:.2f}x at {write_gibs:.3g} GiB/s write")


def _acquisition(pool: pd.DataFrame, n: int, rate: float | None) -> tuple[pd.DataFrame, str]:
    if rate is None:
        top, among = _top_half(pool)
        ranked = _sort(top, ["write_gibs", "ratio"])
        b = ranked.iloc[0]
        why = (f"fastest writer among {among}: {b['method']} writes "
               f"{gibs(b['write_gibs'])} GiB/s (mean over {n} datasets) at {b['ratio']:.2f}x, "
               f"read {gibs(b['read_gibs'])} GiB/s")
        return ranked, why + _runner_up(ranked, "{write_gibs:.3g} GiB/s at {ratio:.2f}x")
    keeps_up = pool[pool["min_write_gibs"] >= rate]
    if not keeps_up.empty:
        ranked = _sort(keeps_up.assign(ratio_key=keeps_up["ratio"].round(9)), ["ratio_key", "min_write_gibs"])
        b = ranked.iloc[0]
        why = (f"{len(keeps_up)} of {len(pool)} methods write at least {gibs(rate)} GiB/s on every dataset; "
               f"{b['method']} has the best ratio among them, {b['ratio']:.2f}x (slowest dataset "
               f"{gibs(b['min_write_gibs'])} GiB/s, mean {gibs(b['write_gibs'])} GiB/s)")
        return ranked, why + _runner_up(ranked, "{ratio:.2f}x at {min_write_gibs:.3g} GiB/s slowest")
    useful, among = _useful(pool)
    ranked = _sort(useful, ["min_write_gibs", "ratio"])
    b = ranked.iloc[0]
    fastest = _sort(pool, ["min_write_gibs", "ratio"]).iloc[0]
    also = "" if fastest["method"] == b["method"] else (
        f" (the fastest of all, {fastest['method']}, manages {gibs(fastest['min_write_gibs'])} GiB/s but only "
        f"{fastest['ratio']:.2f}x)")
    why = (f"no method writes {gibs(rate)} GiB/s on every dataset{also}; the fastest writer among {among} is "
           f"{b['method']}: {gibs(b['min_write_gibs'])} GiB/s on its slowest dataset (mean "
           f"{gibs(b['write_gibs'])} GiB/s) at {b['ratio']:.2f}x; buffer, bin or reduce on the fly to keep up")
    return ranked, why + _runner_up(ranked, "{min_write_gibs:.3g} GiB/s slowest at {ratio:.2f}x")


#: When no method keeps up with the rate, speed counts most: a ratio down to this fraction of the best is useful.
USEFUL_RATIO_FRACTION = 0.25


def _useful(pool: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Methods with at least a quarter of the best ratio (files at most four times the smallest): looser than
    the top half, since a detector out of reach makes speed worth more, yet 'none' or a 2x cast never wins."""
    floor = pool["ratio"].max() * USEFUL_RATIO_FRACTION
    kept = pool[pool["ratio"] >= floor]
    return kept, (f"the {len(kept)} of {len(pool)} methods with a useful ratio (at least a quarter of the best, "
                  f">= {floor:.2f}x)")


def _analysis(pool: pd.DataFrame, n: int, rate: float | None) -> tuple[pd.DataFrame, str]:
    top, among = _top_half(pool)
    ranked = _sort(top, ["read_gibs", "ratio"])
    b = ranked.iloc[0]
    why = (f"fastest reader among {among}: {b['method']} reads "
           f"{gibs(b['read_gibs'])} GiB/s (mean over {n} datasets) at {b['ratio']:.2f}x, "
           f"write {gibs(b['write_gibs'])} GiB/s")
    return ranked, why + _runner_up(ranked, "{read_gibs:.3g} GiB/s at {ratio:.2f}x")


def _balanced(pool: pd.DataFrame, n: int, rate: float | None) -> tuple[pd.DataFrame, str]:
    # among methods that compress (else 'none' wins on raw speed with ratio 1), as for analysis
    top, among = _top_half(pool)
    best = {q: top[q].max() for q in ("ratio", "write_gibs", "read_gibs")}
    score = np.cbrt(top["ratio"] / best["ratio"] * top["write_gibs"] / best["write_gibs"]
                    * top["read_gibs"] / best["read_gibs"])
    ranked = _sort(top.assign(score=score), ["score"])
    b = ranked.iloc[0]
    why = (f"best balance among {among}: {b['method']} scores {b['score']:.2f} "
           f"(geometric mean of ratio, write and read, each divided by the best method's: "
           f"{b['ratio']:.2f}x of {best['ratio']:.2f}x, "
           f"{gibs(b['write_gibs'])} of {gibs(best['write_gibs'])} GiB/s write, "
           f"{gibs(b['read_gibs'])} of {gibs(best['read_gibs'])} GiB/s read)")
    return ranked, why + _runner_up(ranked, "{score:.2f}")


_RANKERS = {"archive": _archive, "acquisition": _acquisition, "analysis": _analysis, "balanced": _balanced}
