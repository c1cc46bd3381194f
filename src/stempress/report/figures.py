"""The study's four figures and a Pareto plot, drawn from our statistics with matplotlib's object API.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot), so making a report never touches
the caller's pyplot state or backend. Every builder returns ``None`` when there is nothing to draw; the
report then says why instead of showing an empty frame.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from stempress.bench.results import atomic_write
from stempress.report.tables import CHUNKINGS, NO_CHUNKING, method_means

FAMILY_COLORS = {
    "none": "#9e9e9e", "hdf5-builtin": "#1f77b4", "blosc": "#d62728", "blosc2": "#ff7f0e", "lz4": "#2ca02c",
    "bitshuffle": "#9467bd", "zstd": "#8c564b", "bzip2": "#e377c2", "baseline": "#555555",
}
CHUNKING_COLORS = {"real_space": "#1f77b4", "balanced": "#d62728", "single_frame": "#2ca02c", NO_CHUNKING: "#555555"}
PNG_DPI = 110
INCOMPLETE = "*"


def save_figure(fig: Figure, folder: Path, name: str) -> tuple[Path, Path]:
    """``name.png`` and ``name.svg``, each written whole or not at all; SVGs carry no date so reruns diff clean."""
    png = atomic_write(folder / f"{name}.png", lambda p: fig.savefig(p, format="png", dpi=PNG_DPI))
    svg = atomic_write(folder / f"{name}.svg", lambda p: fig.savefig(p, format="svg", metadata={"Date": None}))
    return png, svg


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (text can be measured to place labels), laid out by constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain_log_axis(axis: Any) -> None:
    """Log ticks at 1, 2, 3, 5 x 10^k written as plain numbers (0.2, not 2 x 10^-1)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


#: Where a label may go relative to its point (points), tried in order until it overlaps nothing placed.
_OFFSETS = ((7, 4), (7, -13), (7, 15), (-7, 4), (-7, -13), (7, -25), (7, 27), (-7, 15), (7, -37), (7, 39))


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 8
                 ) -> None:
    """Annotate points so labels neither overlap each other nor leave the axes (greedy, first fit)."""
    fig = ax.figure
    fig.canvas.draw()  # final layout, so display coordinates are the saved ones
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    box_style = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}
    placed: list[Any] = [Bbox.from_bounds(px - 6, py - 6, 12, 12)
                         for px, py in ax.transData.transform(np.column_stack([xs, ys]))] if len(xs) else []
    for x, y, label in zip(xs, ys, labels, strict=True):
        fits, inside_only = None, None
        for dx, dy in _OFFSETS:
            probe = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                va="center", ha="left" if dx > 0 else "right", bbox=box_style)
            box = probe.get_window_extent(renderer)
            probe.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and inside_only is None:
                inside_only = (dx, dy)
            if inside and not any(box.overlaps(other) for other in placed):
                fits = (dx, dy)
                break
        dx, dy = fits or inside_only or _OFFSETS[0]
        leader = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 5}
        note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                           va="center", ha="left" if dx > 0 else "right", bbox=box_style,
                           arrowprops=leader if abs(dy) > 20 else None)
        note.set_in_layout(False)  # labels must not move the axes they were placed on
        placed.append(note.get_window_extent(renderer))


def _rank(order: Sequence[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _label(row: Any) -> str:
    return f"{row.codec}{'' if row.complete else INCOMPLETE}"


def _family_legend(fig: Figure, used: Sequence[str], incomplete: bool) -> None:
    handles: list[Any] = [Patch(color=FAMILY_COLORS.get(f, "#17becf"), label=f) for f in used]
    if incomplete:
        handles.append(Patch(color="none", label=f"{INCOMPLETE} measured on fewer datasets"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 9), frameon=False, fontsize=9,
               title="codec family", title_fontsize=9)


def top10_figure(stats: pd.DataFrame, family_of: Mapping[str, str], chunking: str = "balanced",
                 top_n: int = 10) -> Figure | None:
    """Figure 1: the top codecs by ratio, write and read throughput, mean over datasets, one panel each."""
    means = method_means(stats, chunking)
    if means.empty:
        return None
    panels = [("ratio", "compression ratio (raw / file size)", "Compression ratio"),
              ("write_gibs", "write throughput (GiB/s)", "Write throughput"),
              ("read_gibs", "read throughput (GiB/s)", "Read throughput")]
    fig = new_figure(15, 5.6)
    axes = fig.subplots(1, 3)
    used: list[str] = []
    for ax, (column, xlabel, title) in zip(axes, panels, strict=True):
        top = means.dropna(subset=[column]).nlargest(top_n, column).iloc[::-1]
        fams = [family_of.get(c, "unknown") for c in top["codec"]]
        used += [f for f in dict.fromkeys(fams) if f not in used]
        bars = ax.barh([_label(r) for r in top.itertuples()], top[column],
                       color=[FAMILY_COLORS.get(f, "#17becf") for f in fams])
        ax.bar_label(bars, fmt="%.3g", padding=3, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{title}: top {len(top)}", fontsize=11)
        ax.margins(x=0.18)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="x", alpha=0.3)
    n = stats["dataset"].nunique()
    fig.suptitle(f"Figure 1. Top {top_n} codecs, {chunking} chunking, mean over {n} dataset{'s' * (n != 1)}")
    _family_legend(fig, used, not means["complete"].all())
    return fig


def radar_figure(stats: pd.DataFrame, codecs: Sequence[str], chunking: str = "balanced") -> Figure | None:
    """Figure 2: the top performers on five axes, each scaled so the best of them is 1."""
    means = method_means(stats, chunking)
    means = means[means["codec"].isin(codecs)].set_index("codec").reindex([c for c in codecs if c in set(means.codec)])
    if means.empty:
        return None
    axes_data = {
        "compression\nratio": means["ratio"],
        "write\nGiB/s": means["write_gibs"],
        "read\nGiB/s": means["read_gibs"],
        "read stability\n1/(1+CV%)": 1 / (1 + means["read_cv_percent"].fillna(0)),
        "write stability\n1/(1+CV%)": 1 / (1 + means["write_cv_percent"].fillna(0)),
    }
    values = pd.DataFrame(axes_data)
    scaled = values / values.max().replace(0, np.nan)
    angles = np.linspace(0, 2 * np.pi, len(values.columns), endpoint=False)
    fig = new_figure(9.5, 7.5)
    ax = fig.add_subplot(projection="polar")
    for i, (codec, row) in enumerate(scaled.fillna(0).iterrows()):
        closed = np.append(row.to_numpy(float), row.iloc[0])
        ring = np.append(angles, angles[0])
        ax.plot(ring, closed, color=f"C{i % 10}", linewidth=2, label=str(codec))
        ax.fill(ring, closed, color=f"C{i % 10}", alpha=0.08)
    ax.set_xticks(angles, list(values.columns), fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["0.25", "0.5", "0.75", "1"], fontsize=7, color="0.4")
    ax.set_rlabel_position(90 / len(angles))
    ax.tick_params(axis="x", pad=14)
    fig.legend(loc="outside right center", fontsize=9, title="codec", title_fontsize=9)
    fig.suptitle(f"Figure 2. Top performers, {chunking} chunking\n(each axis: value / best of these codecs; "
                 "mean over datasets)", fontsize=11)
    return fig


def sparsity_figure(points: pd.DataFrame, best: pd.DataFrame, fit: Any | None, study_fit: Any | None,
                    bound: Callable[[float], float] | None, dataset_bounds: pd.DataFrame | None,
                    fit_note: str | None = None, study_label: str = "study's fit") -> Figure | None:
    """Figure 3: ratio vs sparsity, the fitted law, the study's law, the 16/H2(s) curve and per-dataset bounds.

    ``points``: dataset, sparsity, ratio (every method); ``best``: the same for the best method per dataset;
    ``dataset_bounds``: dataset, sparsity, tightest_bound_ratio; ``fit_note``: why there is no fit, or its caveat.
    """
    points = points.dropna(subset=["sparsity", "ratio"])
    if points.empty:
        return None
    fig = new_figure(10, 7.5)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.scatter(points["sparsity"], points["ratio"], s=14, color="0.5", alpha=0.3, linewidths=0,
               label="every method (mean over runs)")
    best = best.dropna(subset=["sparsity", "ratio"])
    ax.scatter(best["sparsity"], best["ratio"], s=90, color="#d62728", edgecolors="k", zorder=5,
               label="best method per dataset")
    s_all = pd.concat([points["sparsity"], best["sparsity"]]).to_numpy(float)
    pad = max(0.06, (0.3 - np.ptp(s_all)) / 2)  # a lone dataset still shows the curves' trend
    lo, hi = max(0.0, s_all.min() - pad), min(0.995, s_all.max() + pad)
    grid = np.linspace(lo, hi, 200)
    tops = [points["ratio"].max()]
    if fit is not None and np.all(np.isfinite([fit.a, fit.b, fit.c])):
        ax.plot(grid, fit.predict(grid), color="#d62728", linewidth=2,
                label=f"our fit: C = {fit.a:.1f}·s^{fit.b:.2f} + {fit.c:.2f}  (R² = {fit.r_squared:.3f}, "
                      f"n = {fit.n_points})")
    note = fit_note or (getattr(fit, "warning", None) if fit is not None else None)
    if note:
        ax.plot([], [], " ", label=textwrap.fill(f"fit: {note}", 70))
    if study_fit is not None and np.all(np.isfinite([study_fit.a, study_fit.b, study_fit.c])):
        ax.plot(grid, study_fit.predict(grid), "--", color="#1f77b4", linewidth=1.5,
                label=textwrap.fill(f"{study_label}: C = {study_fit.a:.1f}·s^{study_fit.b:.2f} + "
                                    f"{study_fit.c:.2f}  (R² = {study_fit.r_squared:.3f})", 70))
    if bound is not None:
        ax.plot(grid, [bound(s) for s in grid], ":", color="k", linewidth=1.5,
                label="bound 16 / H₂(s) (the study's, uint16)")
        tops += [bound(s) for s in s_all]  # keep the bound in view where the data are
    if dataset_bounds is not None and not dataset_bounds.empty:
        db = dataset_bounds.dropna(subset=["sparsity", "tightest_bound_ratio"])
        ax.plot(db["sparsity"], db["tightest_bound_ratio"], linestyle="none", marker="_", markersize=26,
                markeredgewidth=2.5, color="#2ca02c", label="tightest bound of each dataset (Table 1)")
        tops += list(db["tightest_bound_ratio"])
    finite = [t for t in tops if np.isfinite(t) and t > 0]
    low = points["ratio"][points["ratio"] > 0].min()
    ax.set_ylim(min(0.8, low * 0.8), max(finite) * 1.8)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("sparsity s (fraction of exact zeros)")
    ax.set_ylabel("compression ratio (raw / file size, log scale)")
    plain_log_axis(ax.yaxis)
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8.5, frameon=False)
    ordered = best.sort_values("sparsity")
    place_labels(ax, list(ordered["sparsity"]), list(ordered["ratio"]),
                 [f"{r.dataset}: {r.method}" for r in ordered.itertuples()])
    fig.suptitle("Figure 3. Compression ratio vs sparsity: the sparsity law C = a·s^b + c and its bounds")
    return fig


def law_residuals_figure(check: pd.DataFrame, law: Any, scatter: float, fit: Any | None,
                         law_label: str = "study's law") -> Figure | None:
    """The study's law against each dataset's best ratio (top) and measured / predicted per dataset (bottom),
    with the band the study's own datasets span around it: a point outside it is where the law does not hold.

    ``check``: :func:`stempress.bench.sparsity_law.law_check`'s table.
    """
    check = check.dropna(subset=["sparsity", "ratio"])
    if check.empty:
        return None
    fig = new_figure(10, 8.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    s = check["sparsity"].to_numpy(float)
    pad = max(0.04, (0.3 - np.ptp(s)) / 2)
    grid = np.linspace(max(0.0, s.min() - pad), min(0.999, s.max() + pad), 200)
    predicted = np.asarray(law.predict(grid), dtype=float)
    top.fill_between(grid, predicted / scatter, predicted * scatter, color="#1f77b4", alpha=0.15, linewidth=0,
                     label=f"the study's own spread around its law (x{1 / scatter:.2f} to x{scatter:.2f})")
    top.plot(grid, predicted, "--", color="#1f77b4", linewidth=1.8,
             label=textwrap.fill(f"{law_label}: C = {law.a:.1f}·s^{law.b:.2f} + {law.c:.2f}", 70))
    if fit is not None and np.all(np.isfinite([fit.a, fit.b, fit.c])):
        top.plot(grid, fit.predict(grid), color="#d62728", linewidth=1.5,
                 label=f"our fit: C = {fit.a:.1f}·s^{fit.b:.2f} + {fit.c:.2f}")
    holds = check["law_holds"].astype(bool).to_numpy()
    for mask, colour, label in ((holds, "#2ca02c", "law holds"), (~holds, "#d62728", "law does not hold")):
        if mask.any():
            top.scatter(s[mask], check["ratio"][mask], s=80, color=colour, edgecolors="k", zorder=5, label=label)
            bottom.scatter(s[mask], check["ratio_over_law"][mask], s=80, color=colour, edgecolors="k", zorder=5)
    if fit is not None:
        bottom.scatter(s, check["ratio_over_fit"], marker="x", color="#d62728", zorder=4,
                       label="measured / our fit")
    top.set_yscale("log")
    plain_log_axis(top.yaxis)
    top.set_ylabel("best compression ratio (log)")
    top.grid(alpha=0.3, which="both")
    top.legend(fontsize=8, loc="upper left")
    bottom.axhspan(1 / scatter, scatter, color="#1f77b4", alpha=0.15, linewidth=0)
    bottom.axhline(1, color="#1f77b4", linestyle="--", linewidth=1)
    bottom.set_yscale("log")
    plain_log_axis(bottom.yaxis)
    factors = np.concatenate([check["ratio_over_law"].to_numpy(float), [1 / scatter, scatter]])
    factors = factors[np.isfinite(factors) & (factors > 0)]
    bottom.set_ylim(factors.min() / 1.4, factors.max() * 1.4)
    bottom.set_xlabel("sparsity s (fraction of exact zeros)")
    bottom.set_ylabel("measured / predicted (log)")
    bottom.grid(alpha=0.3, which="both")
    if fit is not None:
        bottom.legend(fontsize=8, loc="upper left")
    fig.canvas.draw()
    place_labels(top, list(s), list(check["ratio"]), [str(d) for d in check["dataset"]])
    place_labels(bottom, list(s), list(check["ratio_over_law"]),
                 [f"{f:.2f}x" for f in check["ratio_over_law"]])
    fig.suptitle("Figure 3b. The study's sparsity law on these datasets: measured against predicted")
    return fig


def chunking_figure(stats: pd.DataFrame) -> Figure | None:
    """Figure 4: per codec, ratio and write/read throughput under each chunking, mean over common datasets."""
    present = [c for c in CHUNKINGS if c in set(stats["chunking"])]
    present += sorted(set(stats["chunking"]) - set(CHUNKINGS) - {NO_CHUNKING})
    rows = stats[stats["chunking"].isin(present)]
    if rows.empty:
        return None
    measured = {"ratio": "compression_ratio_mean", "write": "write_throughput_gbs_mean",
                "read": "read_throughput_gbs_mean"}
    table = rows.pivot_table(index="codec", columns="chunking", values=list(measured.values()), aggfunc="mean")
    order = table[measured["ratio"]].mean(axis=1).sort_values(ascending=False).index
    panels = [("ratio", "compression ratio", False), ("write", "write throughput (GiB/s, log)", True),
              ("read", "read throughput (GiB/s, log)", True)]
    fig = new_figure(max(9.0, 0.75 * len(order) + 3), 11)
    axes = fig.subplots(3, 1, sharex=True)
    x = np.arange(len(order))
    width = 0.8 / len(present)
    for ax, (key, ylabel, log) in zip(axes, panels, strict=True):
        for i, chunking in enumerate(present):
            column = (measured[key], chunking)
            values = table[column].reindex(order) if column in table else pd.Series(np.nan, index=order)
            ax.bar(x + (i - (len(present) - 1) / 2) * width, values, width,
                   color=CHUNKING_COLORS.get(chunking, f"C{i + 3}"), label=chunking)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(title="chunking", fontsize=9, ncol=len(present))
    axes[-1].set_xticks(x, list(order), rotation=35, ha="right", fontsize=9)
    axes[-1].set_xlabel("codec")
    n = rows["dataset"].nunique()
    fig.suptitle(f"Figure 4. Effect of chunking (mean over {n} dataset{'s' * (n != 1)})")
    return fig


def pareto_figure(stats: pd.DataFrame, front: Callable[[pd.DataFrame, str, str], pd.Series]) -> Figure | None:
    """Ratio vs write and vs read throughput for every method; the non-dominated ones are ringed and named."""
    means = method_means(stats, None).dropna(subset=["ratio"])
    if means.empty:
        return None
    fig = new_figure(15, 7)
    axes = fig.subplots(1, 2)
    order = [*CHUNKINGS, NO_CHUNKING]
    labels: list[tuple[Any, pd.DataFrame, str]] = []
    for ax, (column, xlabel) in zip(axes, [("write_gibs", "write throughput (GiB/s, log)"),
                                           ("read_gibs", "read throughput (GiB/s, log)")], strict=True):
        data = means.dropna(subset=[column])
        data = data[data[column] > 0].reset_index(drop=True)
        if data.empty:
            ax.set_axis_off()
            continue
        on_front = front(data, column, "ratio").reindex(data.index).fillna(False).astype(bool)
        for chunking, group in sorted(data.groupby("chunking"), key=lambda g: _rank(order, str(g[0]))):
            ax.scatter(group[column], group["ratio"], s=28, alpha=0.55, label=f"chunking {chunking}",
                       color=CHUNKING_COLORS.get(str(chunking), "#17becf"))
        best = data[on_front].sort_values(column)
        ax.plot(best[column], best["ratio"], color="k", linewidth=1, drawstyle="steps-post", alpha=0.6)
        ax.scatter(best[column], best["ratio"], s=90, facecolors="none", edgecolors="k", linewidths=1.5,
                   label="Pareto front")
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
        if data["ratio"].max() / max(data["ratio"].min(), 1e-9) > 30:
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        ax.margins(x=0.12, y=0.08)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("compression ratio (raw / file size)")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"ratio vs {column.split('_')[0]} throughput", fontsize=11)
        labels.append((ax, best, column))
    if not labels:
        return None
    handles, names = labels[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle("Figure 5. Pareto fronts: no other method is both faster and compresses better "
                 f"(mean over datasets; {INCOMPLETE} fewer datasets)")
    for ax, best, column in labels:
        place_labels(ax, list(best[column]), list(best["ratio"]),
                     [f"{r.method}{'' if r.complete else INCOMPLETE}" for r in best.itertuples()])
    return fig
