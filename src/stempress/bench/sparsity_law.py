"""The study's sparsity law: best compression ratio C = a * s^b + c over the fraction of zeros s (Figure 3).

The study fitted it to five points with three parameters, so a fit is only as good as its number of
points; ``SparsityFit.warning`` says when it is barely determined.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit

from stempress.bench.measure import split_method
from stempress.bench.results import read_table
from stempress.errors import StempressError

#: The study's start values for (a, b, c).
STUDY_P0 = (50.0, 7.0, 5.0)
#: Lower bounds of (a, b, c) in the fit: only the exponent is bounded.
LOWER_BOUNDS = (-np.inf, 0.0, -np.inf)
N_PARAMETERS = 3
BEST_COLUMNS = ("dataset", "method", "codec", "chunking", "compression_ratio_mean")
STUDY_STATISTICS = "statistics.csv"
STUDY_INVENTORY = "dataset_inventory.csv"



def law(s: ArrayLike, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(s, b) + c


@dataclass(frozen=True)
class SparsityFit:
    """Fitted C = a * s^b + c, its R^2 on the points it was fitted to, and a caveat when there is one."""

    a: float
    b: float
    c: float
    r_squared: float
    n_points: int
    warning: str | None = None

    def predict(self, s: ArrayLike) -> np.ndarray | float:
        out = law(np.asarray(s, dtype=np.float64), self.a, self.b, self.c)
        return float(out) if out.ndim == 0 else out

    def __str__(self) -> str:
        return f"C = {self.a:.1f} * s^{self.b:.2f} + {self.c:.1f} (R^2 = {self.r_squared:.3f}, n = {self.n_points})"


def fit_sparsity_law(sparsity: ArrayLike, ratio: ArrayLike, p0: tuple[float, float, float] = STUDY_P0) -> SparsityFit:
    """Least-squares fit as the study did (scipy curve_fit from p0); refuses what cannot determine 3 parameters."""
    s = np.asarray(sparsity, dtype=np.float64).ravel()
    r = np.asarray(ratio, dtype=np.float64).ravel()
    if s.shape != r.shape:
        raise StempressError(f"sparsity law: {s.size} sparsities but {r.size} ratios; give one of each per dataset")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(r))):
        raise StempressError("sparsity law: a sparsity or ratio is NaN or infinite; drop datasets without results")
    if np.any((s < 0) | (s > 1)):
        raise StempressError("sparsity law: sparsity must be a fraction of zeros in [0, 1]; check the inventory")
    if s.size < N_PARAMETERS:
        raise StempressError(f"sparsity law: {s.size} datasets cannot fit 3 parameters; benchmark at least 3 "
                             "datasets (5 like the study)")
    if np.ptp(s) == 0:
        raise StempressError("sparsity law: all datasets have the same sparsity, so there is no trend to fit; "
                             "benchmark datasets of different sparsity")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # covariance is undefined at n = 3; we warn ourselves
        try:
            # b >= 0: the ratio's power of the sparsity; a negative b would make 0 ** b divide by zero on a
            # dense (sparsity 0) dataset. The study's own fit lies well inside (b = 6.9), unchanged.
            params, _ = curve_fit(law, s, r, p0=p0, bounds=(LOWER_BOUNDS, np.inf), max_nfev=20000)
        except (RuntimeError, ValueError) as exc:
            raise StempressError(f"sparsity law: the fit did not converge ({exc}); try other start values p0") \
                from exc
    a, b, c = (float(v) for v in params)
    residual = float(np.sum((r - law(s, a, b, c)) ** 2))
    total = float(np.sum((r - r.mean()) ** 2))
    r_squared = 1.0 - residual / total if total > 0 else float("nan")
    warning = None
    if s.size <= N_PARAMETERS:
        warning = (f"only {s.size} datasets for 3 parameters: the curve passes through every point and R^2 "
                   "says nothing; benchmark more datasets")
    return SparsityFit(a, b, c, r_squared, int(s.size), warning)


def best_per_dataset(stats: pd.DataFrame) -> pd.DataFrame:
    """The highest mean ratio per dataset over every method and chunking, baselines included (as the study).

    Works on our statistics.csv and on the study's, which has no codec/chunking columns (they are taken
    from the method name).
    """
    missing = {"dataset", "method", "compression_ratio_mean"} - set(stats.columns)
    if missing:
        raise StempressError(f"not a statistics table (no {', '.join(sorted(missing))}); give statistics.csv")
    rows = stats[np.isfinite(stats["compression_ratio_mean"].astype(float))]
    if rows.empty:
        return pd.DataFrame(columns=list(BEST_COLUMNS))
    best = rows.loc[rows.groupby("dataset", sort=False)["compression_ratio_mean"].idxmax()].copy()
    split = best["method"].map(split_method)
    # the study's table has no codec/chunking columns, and pandas reads our "n/a" chunking back as NaN
    for column, part in (("chunking", 0), ("codec", 1)):
        derived = split.str[part]
        best[column] = best[column].fillna(derived) if column in best else derived
    return best[list(BEST_COLUMNS)].reset_index(drop=True)


def with_sparsity(best: pd.DataFrame, inventory: pd.DataFrame) -> pd.DataFrame:
    """Add each dataset's ``sparsity_fraction`` from an inventory (ours or the study's, keyed by dataset_id)."""
    sparsity = inventory.set_index("dataset_id")["sparsity_fraction"]
    unknown = sorted(set(best["dataset"]) - set(sparsity.index))
    if unknown:
        raise StempressError(f"no inventory row for {', '.join(unknown)}; profile these datasets or drop them")
    return best.assign(sparsity_fraction=best["dataset"].map(sparsity).astype(float))


def fit_best(stats: pd.DataFrame, inventory: pd.DataFrame) -> SparsityFit:
    """The study's Figure 3 fit for a results folder's statistics and inventory."""
    points = with_sparsity(best_per_dataset(stats), inventory)
    return fit_sparsity_law(points["sparsity_fraction"], points["compression_ratio_mean"])


def study_fit(paper_dir: Path) -> SparsityFit:
    """The fit on the study's own numbers (its statistics.csv and dataset_inventory.csv)."""
    paper_dir = Path(paper_dir)
    for name in (STUDY_STATISTICS, STUDY_INVENTORY):
        if not (paper_dir / name).exists():
            raise StempressError(f"{paper_dir}: no {name}; point at the folder with the study's CSV files")
    return fit_best(read_table(paper_dir / STUDY_STATISTICS), read_table(paper_dir / STUDY_INVENTORY))


# ------------------------------------------------------------------------ the study's law on other data

#: The law as the paper states it (PAPER.md), used when the study's tables are not at hand.
PUBLISHED_LAW = SparsityFit(50.0, 6.90, 5.0, 0.991, 5)
#: The largest factor between one of the study's five best ratios and its law (4D_Diff-2x2-binning, 1.17x over
#: it): the law's scatter on its own data, computed from the shipped tables (``law_scatter``; a test checks it).
PUBLISHED_SCATTER = 1.171


@dataclass(frozen=True)
class StudyLaw:
    """The study's law, where it comes from, and how far its own datasets lie from it (a factor >= 1)."""

    fit: SparsityFit
    source: str
    scatter: float


def law_scatter(sparsity: ArrayLike, ratio: ArrayLike, fit: SparsityFit) -> float:
    """The largest factor (>= 1) between a measured ratio and the law's, either way."""
    factor = np.asarray(ratio, dtype=np.float64) / np.asarray(fit.predict(sparsity), dtype=np.float64)
    return float(np.max(np.maximum(factor, 1 / factor)))


def study_law(paper_dir: Path | None = None) -> StudyLaw:
    """The law fitted to the study's tables in ``paper_dir`` (default: those shipped with stempress), or, when
    they are absent or unreadable, the law as published."""
    from stempress.bench.compare import DEFAULT_PAPER_DIR

    where = Path(paper_dir) if paper_dir is not None else DEFAULT_PAPER_DIR
    try:
        points = with_sparsity(best_per_dataset(read_table(where / STUDY_STATISTICS)),
                               read_table(where / STUDY_INVENTORY))
        fit = fit_sparsity_law(points["sparsity_fraction"], points["compression_ratio_mean"])
    except (StempressError, FileNotFoundError, ValueError, KeyError):
        return StudyLaw(PUBLISHED_LAW, "as published (the study's tables were not found in "
                                       f"{where})", PUBLISHED_SCATTER)
    scatter = law_scatter(points["sparsity_fraction"], points["compression_ratio_mean"], fit)
    return StudyLaw(fit, "fitted to the study's own tables", scatter)


LAW_COLUMNS = ("dataset", "sparsity", "method", "ratio", "law_ratio", "ratio_over_law", "law_holds",
               "fit_ratio", "ratio_over_fit")


def law_check(best: pd.DataFrame, law: StudyLaw, fit: SparsityFit | None) -> pd.DataFrame:
    """Per dataset (``best``: dataset, method, sparsity, ratio): the study's law and our fit next to the measured
    best ratio, as factors measured / predicted; the law holds where the factor is within its own scatter."""
    table = best[["dataset", "sparsity", "method", "ratio"]].dropna(subset=["sparsity", "ratio"])
    table = table.sort_values("sparsity", ignore_index=True)
    s = table["sparsity"].to_numpy(float)
    table["law_ratio"] = np.asarray(law.fit.predict(s), dtype=float)
    table["ratio_over_law"] = table["ratio"] / table["law_ratio"]
    factor = table["ratio_over_law"]
    table["law_holds"] = (factor <= law.scatter) & (factor >= 1 / law.scatter)
    table["fit_ratio"] = np.asarray(fit.predict(s), dtype=float) if fit is not None else np.nan
    table["ratio_over_fit"] = table["ratio"] / table["fit_ratio"]
    return table[list(LAW_COLUMNS)]


def law_summary(check: pd.DataFrame, law: StudyLaw) -> str:
    """One plain sentence: where the study's law holds on these datasets and where it does not, by how much."""
    f = law.fit
    head = (f"The study's sparsity law C = {f.a:.1f}·s^{f.b:.2f} + {f.c:.2f} ({law.source}; its own datasets lie "
            f"within {1 / law.scatter:.2f}-{law.scatter:.2f}x of it)")
    if check.empty:
        return f"{head} could not be checked: no dataset has both a best ratio and a sparsity."
    misses = check[~check["law_holds"]]
    held = len(check) - len(misses)
    if misses.empty:
        return f"{head} holds on all {len(check)} datasets measured here."
    parts = [f"{r.dataset} (s = {r.sparsity:.3f}: measured {r.ratio:.1f}x, the law {r.law_ratio:.1f}x, "
             + (f"{r.ratio_over_law:.1f}x more than it predicts)" if r.ratio_over_law > 1 else
                f"{1 / r.ratio_over_law:.1f}x less than it predicts)") for r in misses.itertuples()]
    return (f"{head} holds on {held} of {len(check)} datasets here and does not hold on "
            + "; ".join(parts) + ".")
