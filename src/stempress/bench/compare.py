"""Our numbers beside the study's: a joined table, and sentences saying which of its findings hold here.

Absolute speeds depend on the machine, so findings are checked "in kind" (who beats whom, by how much);
ratios depend only on the data, so on the study's own cubes they should match.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from stempress.bench.measure import NO_CHUNKING
from stempress.bench.ranking import RATIO, READ, WRITE, normalised
from stempress.bench.results import read_table
from stempress.errors import StempressError

#: The study's published tables, shipped with stempress (source, commit and licence in its README.md).
DEFAULT_PAPER_DIR = Path(__file__).resolve().parent / "study_tables"

#: What the paper states (PAPER.md), quoted beside what its table and ours give.
PAPER_CLAIMS = {
    "cv_percent": 2.0,
    "chunking": "ratio < 4 %, write ~17 %, read ~40 %",
}

ZSTD, GZIP9 = "balanced_blosc_zstd", "balanced_gzip_9"
_PAIRS = (("ratio", RATIO), ("write_gibs", WRITE), ("read_gibs", READ))


def load_study_statistics(paper_dir: Path | str = DEFAULT_PAPER_DIR) -> pd.DataFrame:
    """The study's statistics.csv, with ``codec``, ``chunking`` and ``protocol`` (warm) added."""
    path = Path(paper_dir) / "statistics.csv"
    if not path.is_file():
        raise StempressError(f"{path} not found; pass the folder holding the study's statistics.csv "
                             "(its results/aggregated folder)")
    study = normalised(read_table(path))
    study["protocol"] = "warm"
    return study


def compare_with_study(stats: pd.DataFrame, study: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset and method both have: ours, the study's, and ours / study's."""
    ours, theirs = normalised(stats), normalised(study)
    keep = ["dataset", "method", RATIO, WRITE, READ, "write_time_cv_percent", "read_time_cv_percent"]
    joined = ours[["codec", "chunking", *keep]].merge(theirs[keep], on=["dataset", "method"],
                                                      suffixes=("_ours", "_study"))
    out = joined[["dataset", "method", "codec", "chunking"]].copy()
    for name, column in _PAIRS:
        out[f"{name}_ours"] = joined[f"{column}_ours"]
        out[f"{name}_study"] = joined[f"{column}_study"]
        out[f"{name}_ours_over_study"] = joined[f"{column}_ours"] / joined[f"{column}_study"]
    for phase in ("write", "read"):
        out[f"{phase}_cv_ours"] = joined[f"{phase}_time_cv_percent_ours"]
        out[f"{phase}_cv_study"] = joined[f"{phase}_time_cv_percent_study"]
    return out.sort_values(["dataset", "method"], ignore_index=True)


def study_findings(stats: pd.DataFrame, study: pd.DataFrame) -> list[str]:
    """Short sentences, each with our number beside the study's; a finding that cannot be checked says why."""
    ours, theirs = normalised(stats), normalised(study)
    checks: list[Callable[[pd.DataFrame, pd.DataFrame], str]] = [
        _zstd_vs_gzip_ratio, _zstd_vs_gzip_speed, _timing_cv, _best_per_dataset, _chunking_effect]
    return [check(ours, theirs) for check in checks]


# ------------------------------------------------------------------------------------------ findings


def _pair(table: pd.DataFrame, who: str) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """zstd's and gzip-9's rows on the datasets that have both, or why there are none."""
    missing = [m for m in (ZSTD, GZIP9) if m not in set(table["method"])]
    if missing:
        return f"{' and '.join(missing)} not in {who} statistics (skipped, unavailable or not run)"
    z = table[table["method"] == ZSTD].set_index("dataset")
    g = table[table["method"] == GZIP9].set_index("dataset")
    both = z.index.intersection(g.index).sort_values()
    return z.loc[both], g.loc[both]


def _zstd_vs_gzip_ratio(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    title = "Blosc zstd vs gzip-9 ratio (balanced, mean over datasets)"
    a, b = _pair(ours, "our"), _pair(theirs, "the study's")
    for side in (a, b):
        if isinstance(side, str):
            return f"{title} could not be compared: {side}."
    (oz, og), (tz, tg) = a, b
    rz, rg = oz[RATIO].mean(), og[RATIO].mean()
    verdict = "holds: zstd compresses at least as well as gzip-9" if rz >= rg else \
        "differs: gzip-9 compresses better here"
    return (f"{title}: ours {rz:.1f}x vs {rg:.1f}x on {len(oz)} datasets, study {tz[RATIO].mean():.1f}x vs "
            f"{tg[RATIO].mean():.1f}x; {verdict}.")


def _fold(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _span(values: pd.Series) -> str:
    lo, hi = values.min(), values.max()
    return f"{_fold(lo)}x" if _fold(lo) == _fold(hi) else f"{_fold(lo)}-{_fold(hi)}x"


def _zstd_vs_gzip_speed(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    title = "Blosc zstd's speed-up over gzip-9 (balanced, per dataset)"
    a, b = _pair(ours, "our"), _pair(theirs, "the study's")
    for side in (a, b):
        if isinstance(side, str):
            return f"{title} could not be compared: {side}."
    (oz, og), (tz, tg) = a, b
    ow, orr = oz[WRITE] / og[WRITE], oz[READ] / og[READ]
    tw, tr = tz[WRITE] / tg[WRITE], tz[READ] / tg[READ]
    slower = [f"{phase} on {d} ({v:.2f}x)" for phase, s in (("writes", ow), ("reads", orr))
              for d, v in s.items() if v <= 1]
    verdict = "holds in kind: zstd is faster on every dataset" if not slower else \
        "differs: zstd is not faster for " + ", ".join(slower)
    return (f"{title}: ours writes {_span(ow)} and reads {_span(orr)} faster, study writes {_span(tw)} and "
            f"reads {_span(tr)} faster; {verdict}.")


def _cv(table: pd.DataFrame) -> tuple[float, float, float] | None:
    """Mean and max timing CV % over write and read of every cell with two runs or more, and max ratio CV."""
    rows = table[table["n_runs"] >= 2] if "n_runs" in table.columns else table
    times = pd.concat([rows["write_time_cv_percent"], rows["read_time_cv_percent"]]).dropna()
    if times.empty:
        return None
    return float(times.mean()), float(times.max()), float(rows["compression_ratio_cv_percent"].max())


def _timing_cv(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    limit = PAPER_CLAIMS["cv_percent"]
    a, b = _cv(ours), _cv(theirs)
    if a is None or b is None:
        who = "our statistics have" if a is None else "the study's statistics have"
        return f"Timing CV could not be compared: {who} no cell with two runs or more."
    verdict = f"holds: our timings repeat within {limit:g} % on average" if a[0] < limit else \
        f"differs: our timings vary more than the study's {limit:g} % (a busy or small machine; more runs help)"
    return (f"Timing CV (write and read, mean over cells): ours {a[0]:.1f} % (max {a[1]:.1f} %), study "
            f"{b[0]:.1f} % (max {b[1]:.1f} %); ratios repeat run to run (max ratio CV ours {a[2]:.2g} %, study "
            f"{b[2]:.2g} %); {verdict}.")


def _best(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[table.groupby("dataset")[RATIO].idxmax(), ["dataset", "method", "codec", RATIO]]\
        .set_index("dataset")


def _best_per_dataset(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    a, b = _best(ours), _best(theirs)
    shared = a.index.intersection(b.index).sort_values()
    if shared.empty:
        mine = "; ".join(f"{d} {r.codec} {r[RATIO]:.1f}x" for d, r in a.iterrows())
        return (f"Best codec per dataset could not be compared: none of our datasets is in the study "
                f"(ours: {mine}).")
    same = sum(a.loc[d, "codec"] == b.loc[d, "codec"] for d in shared)
    parts = [f"{d} ours {a.loc[d, 'codec']} {a.loc[d, RATIO]:.1f}x, study {b.loc[d, 'codec']} "
             f"{b.loc[d, RATIO]:.1f}x" for d in shared]
    extra = [d for d in a.index if d not in shared]
    tail = f"; not in the study: {', '.join(extra)}" if extra else ""
    verdict = "holds" if same == len(shared) else "differs in part" if same else "differs"
    return (f"Best codec per dataset (highest ratio, any method): same codec as the study on {same} of "
            f"{len(shared)} shared datasets ({verdict}): " + "; ".join(parts) + tail + ".")


def _spreads(table: pd.DataFrame) -> dict[str, float] | None:
    """Median over dataset x codec of (max - min) / min across chunkings, and the same across codecs.

    The study does not define its chunking percentages; this measure on its own table gives 5.9 % ratio,
    20 % write time, 41 % read time (the paper states < 4 %, ~17 %, ~40 %).
    """
    hdf5 = table[(table["chunking"] != NO_CHUNKING)]
    multi = hdf5.groupby(["dataset", "codec"])["chunking"].transform("nunique") >= 2
    rows = hdf5[multi]
    if rows.empty:
        return None
    out = {}
    for name, column in (("ratio", RATIO), ("write", "write_time_mean"), ("read", "read_time_mean")):
        g = rows.groupby(["dataset", "codec"])[column]
        out[name] = float(((g.max() - g.min()) / g.min() * 100).median())
    codecs = hdf5[hdf5["codec"] != "none"].groupby(["dataset", "chunking"])[RATIO]
    out["codec_ratio"] = float(((codecs.max() - codecs.min()) / codecs.min() * 100).median())
    return out


def _chunking_effect(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    a, b = _spreads(ours), _spreads(theirs)
    if a is None or b is None:
        who = "our statistics hold" if a is None else "the study's statistics hold"
        return f"Chunking effect could not be compared: {who} no codec measured under two chunkings or more."
    verdict = "holds: chunking is secondary to the codec" if a["ratio"] < a["codec_ratio"] else \
        "differs: chunking moves the ratio as much as the codec choice"
    return (f"Chunking effect (median spread between chunkings of one codec on one dataset): ours ratio "
            f"{a['ratio']:.1f} %, write {a['write']:.0f} %, read {a['read']:.0f} %; study's table "
            f"{b['ratio']:.1f} %, {b['write']:.0f} %, {b['read']:.0f} % (paper: {PAPER_CLAIMS['chunking']}); "
            f"codecs spread the ratio by {a['codec_ratio']:.0f} % here; {verdict}.")
