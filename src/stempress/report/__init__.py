"""A results folder as one report: the study's tables and figures from our numbers, next to the study's own.

``build_report(results_dir)`` writes ``results_dir/report/`` (``report.html``, ``tables/*.csv|md``,
``figures/*.png|svg``). It only reads the results folder (and the study's CSVs): nothing is re-measured,
so a report can be rebuilt any time, and an older folder without ``inventory.csv`` still gets everything
that does not need the inventory, with a note saying what is missing and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stempress.bench.bounds import sparsity_bound
from stempress.bench.compare import DEFAULT_PAPER_DIR, compare_with_study, load_study_statistics, study_findings
from stempress.bench.inventory import INVENTORY_CSV, read_inventory
from stempress.bench.measure import PARALLEL
from stempress.bench.ranking import USE_CASES, normalised, pareto_front, recommend, top_performers
from stempress.bench.results import METADATA_JSON, STATISTICS_CSV, load_results, problems_table, read_table
from stempress.bench.sparsity_law import (
    SparsityFit,
    StudyLaw,
    best_per_dataset,
    fit_sparsity_law,
    law_check,
    law_summary,
    study_law,
)
from stempress.bench.statistics import statistics
from stempress.errors import StempressError
from stempress.report import figures as figs
from stempress.report import tables as tabs
from stempress.report.html import FigureBlock, NoteBlock, Page, Section, TableBlock, run_facts, write_html

__all__ = ["FIGURES_DIR", "REPORT_DIR", "REPORT_HTML", "TABLES_DIR", "build_report"]

REPORT_DIR = "report"
REPORT_HTML = "report.html"
TABLES_DIR = "tables"
FIGURES_DIR = "figures"
#: The numbers ranking and recommendations need in every cell.
RANKED = ("compression_ratio_mean", "write_throughput_gbs_mean", "read_throughput_gbs_mean")
#: The bound the study drew in Figure 3 (16 bits: its uint16 cubes).
STUDY_BOUND_BITS = 16

TABLE_NAMES = ("table1_datasets", "table3_best_per_dataset", "table4_families", "baselines_vs_study",
               "table5_chunking", "top_performers", "recommendations", "study_comparison", "sparsity_law",
               "methods_per_dataset", "problems", "write_paths")
FIGURE_NAMES = ("fig1_top10", "fig2_radar", "fig3_sparsity", "fig3b_law_residuals", "fig4_chunking", "fig5_pareto")


@dataclass
class Inputs:
    """What the results folder holds, normalised (chunking "n/a" restored, one protocol)."""
    results: pd.DataFrame
    stats: pd.DataFrame
    metadata: dict[str, Any]
    inventory: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)
    #: Statistics of both write paths when the parallel writer was measured (the others hold the filter path).
    paths: pd.DataFrame | None = None

    @property
    def rankable(self) -> pd.DataFrame:
        """Cells with a ratio and both throughputs: a method cannot be ranked on a number it lacks."""
        return self.stats.dropna(subset=list(RANKED)) if not self.stats.empty else self.stats


def load_inputs(results_dir: Path) -> Inputs:
    """Read results.csv, statistics.csv (recomputed if absent), metadata.json and inventory.csv."""
    if not results_dir.is_dir():
        raise StempressError(f"{results_dir} is not a folder; give the results folder `stempress bench` wrote")
    results = load_results(results_dir)
    notes: list[str] = []
    meta_path = results_dir / METADATA_JSON
    try:
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except json.JSONDecodeError:
        metadata = {}
    if not metadata:
        notes.append(f"{METADATA_JSON} is missing or unreadable: machine, protocol and versions are unknown.")
    stats_path = results_dir / STATISTICS_CSV
    # recomputed when absent or empty: before it kept its header, a run where nothing succeeded wrote a blank file
    stats = read_table(stats_path) if stats_path.exists() and stats_path.read_text().strip() else statistics(results)
    if "protocol" in stats and stats["protocol"].nunique() > 1:
        chosen = metadata.get("protocol") or sorted(stats["protocol"].unique())[0]
        notes.append(f"statistics hold several protocols; this report shows {chosen!r} only.")
        stats = stats[stats["protocol"] == chosen]
    paths = None
    if "path" in stats and (stats["path"] == PARALLEL).any():
        paths = stats
        stats = stats[stats["path"] != PARALLEL]
        notes.append("the study's tables and figures show HDF5's filter pipeline (the study's path); the parallel "
                     "writer is compared with it in 'Write paths'.")
    stats = normalised(stats) if not stats.empty else stats
    if stats.empty:
        notes.append("no measurement succeeded (every cell skipped, unavailable or failed): see Problems.")
    elif stats[list(RANKED)].isna().any(axis=None):
        gaps = stats[stats[list(RANKED)].isna().any(axis=1)]
        notes.append(f"{len(gaps)} cell(s) lack a ratio or throughput (e.g. {gaps['dataset'].iloc[0]} "
                     f"{gaps['method'].iloc[0]}); they are left out of the ranking and recommendations.")
    inventory = None
    if (results_dir / INVENTORY_CSV).exists():
        inventory = read_inventory(results_dir)
    else:
        notes.append(f"{INVENTORY_CSV} is missing (a results folder from before stempress wrote it): Table 1, "
                     "Figure 3 and the fraction-of-bound columns are left out; rerun `stempress bench` for them.")
    return Inputs(results, stats, metadata, inventory, notes, paths)


@dataclass
class Study:
    """The study's statistics (or why they are absent) and its sparsity law (as published when its tables are
    absent, so Figure 3 and the law check always have the law they name)."""
    law: StudyLaw
    stats: pd.DataFrame | None = None
    note: str | None = None


def load_study(paper_dir: Path | None) -> Study:
    """The study's statistics.csv from ``paper_dir`` (default: the copy stempress knows); absent -> a note."""
    where = Path(paper_dir) if paper_dir is not None else Path(DEFAULT_PAPER_DIR)
    law = study_law(where)
    if not where.is_dir():
        return Study(law, note=f"the study's results folder {where} was not found: the comparison with the study "
                               "is skipped (pass the folder holding its statistics.csv).")
    try:
        stats = load_study_statistics(where)
    except (StempressError, FileNotFoundError) as err:
        return Study(law, note=f"the study's statistics could not be read ({err}): the comparison is skipped.")
    return Study(law, stats=stats)


class _Writer:
    """Writes tables and figures into the report folder and remembers what it wrote (for stale-file cleanup)."""
    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: set[str] = set()

    def table(self, key: str, title: str, caption: str, frame: pd.DataFrame, collapsed: bool = False) -> TableBlock:
        csv, md = tabs.write_table(frame, self.out / TABLES_DIR, key)
        self.written.add(key)
        files = [f"{TABLES_DIR}/{csv.name}", f"{TABLES_DIR}/{md.name}"]
        return TableBlock(key, title, caption, frame, files, collapsed)

    def figure(self, key: str, title: str, caption: str, make: Callable[[], Any], missing: str
               ) -> FigureBlock | NoteBlock:
        fig = make()
        if fig is None:
            return NoteBlock(f"{title}: not drawn, {missing}")
        png, svg = figs.save_figure(fig, self.out / FIGURES_DIR, key)
        self.written.add(key)
        return FigureBlock(key, title, caption, png, [f"{FIGURES_DIR}/{svg.name}", f"{FIGURES_DIR}/{png.name}"])

    def remove_stale(self) -> None:
        """A rebuilt report must not leave an old figure that this build chose not to draw."""
        for folder, names, suffixes in ((TABLES_DIR, TABLE_NAMES, (".csv", ".md")),
                                        (FIGURES_DIR, FIGURE_NAMES, (".png", ".svg"))):
            for name in set(names) - self.written:
                for suffix in suffixes:
                    (self.out / folder / f"{name}{suffix}").unlink(missing_ok=True)


def build_report(results_dir: Path, paper_dir: Path | None = None, reduced: Sequence[Path] = ()) -> Path:
    """Write ``results_dir/report/`` and return the path of ``report.html``; each ``reduced`` file (written by
    ``stempress reduce``) adds a section with its figures and provenance."""
    results_dir = Path(results_dir)
    inputs = load_inputs(results_dir)
    study = load_study(paper_dir)
    out = results_dir / REPORT_DIR
    if reduced:  # first: a file that is not a reduction stops the build before the tables are written
        from stempress.report.reduce_report import reduced_section  # the reduce stack only when asked for
    reductions = [reduced_section(path, out / f"{FIGURES_DIR}/reduced{i}", f"{FIGURES_DIR}/reduced{i}",
                                  key=f"reduced{i}") for i, path in enumerate(reduced, 1)]
    writer = _Writer(out)
    notes = list(inputs.notes) + ([study.note] if study.note else [])
    recommendations, rec_notes = _recommendations(inputs.rankable)
    notes += rec_notes
    findings: list[str] = []
    sections = [_datasets_section(writer, inputs)]
    sections += _method_sections(writer, inputs, recommendations, notes, study)
    law = sparsity_inputs(inputs, study)
    sections.append(_figure_section(writer, inputs, study, law))
    if inputs.paths is not None:
        workers = sorted(set(inputs.results.get("workers", pd.Series([1])).dropna().astype(int)) - {1}) or [1]
        sections.append(Section("Write paths", [writer.table(
            "write_paths", "HDF5 filter pipeline vs the parallel direct-chunk writer",
            "Same codec, chunks and data: the filter path compresses on one thread inside HDF5; the parallel path "
            f"compresses chunks on {', '.join(map(str, workers))} worker thread(s) and stores them with "
            "write_direct_chunk, declaring the same filter so any HDF5 reader decodes the file. Ratios should "
            "match; speed-up = parallel / filter throughput.", tabs.paths_table(inputs.paths))]))
    if law is not None:
        findings.append(law_summary(law.check, study.law))
    if study.stats is not None and not inputs.stats.empty:
        findings = list(study_findings(inputs.stats, study.stats)) + findings
        sections.append(Section("Comparison with the study", [writer.table(
            "study_comparison", "Our numbers next to the study's",
            "Every (dataset, method) both have: ours, the study's, and ours / the study's. Ratios compare only "
            "where the data resemble the study's; speeds depend on the machine.",
            compare_with_study(inputs.stats, study.stats), collapsed=True)]))
    sections += reductions
    problems = problems_table(inputs.results)
    if not problems.empty:
        sections.append(Section("Problems", [writer.table(
            "problems", "Cells without a number", "Skipped (time limit), unavailable (filter missing here) or "
            "failed cells, with the reason; these are absent from every table and figure above.", problems)]))
    page = Page(f"stempress benchmark report: {results_dir.resolve().name}", run_facts(inputs.metadata), notes,
                recommendations, findings, sections)
    path = write_html(out / REPORT_HTML, page)
    writer.remove_stale()
    return path


def _recommendations(stats: pd.DataFrame) -> tuple[list[Any], list[str]]:

    if stats.empty:
        return [], []
    recs, notes = [], []
    for use_case in USE_CASES:
        try:
            recs.append(recommend(stats, use_case))
        except StempressError as err:
            notes.append(f"no {use_case} recommendation: {err}")
    return recs, notes


def _datasets_section(writer: _Writer, inputs: Inputs) -> Section:
    section = Section("Datasets")
    if inputs.inventory is None:
        section.blocks.append(NoteBlock("Table 1 is not available: this results folder has no inventory.csv."))
        return section
    section.blocks.append(writer.table(
        "table1_datasets", "Table 1. Datasets",
        "Shape, type and size of each cube; sparsity is the fraction of exact zeros. The three bounds are the "
        "largest compression ratio a code built on each model can reach: sparsity (bits / H₂(s), only the "
        "zero mask is charged), order-0 (value histogram entropy) and Poisson (each pixel's mean count); "
        "the tightest is the smallest finite one.", tabs.datasets_table(inputs.inventory)))
    return section


def _method_sections(writer: _Writer, inputs: Inputs, recommendations: list[Any], notes: list[str],
                     study: Study) -> list[Section]:

    stats = inputs.stats
    if stats.empty:
        return [Section("Methods", [NoteBlock("No successful measurement: no method tables.")])]
    family_of = tabs.families(inputs.results)
    bound_note = "" if inputs.inventory is not None else " (fraction of bound: needs inventory.csv)"
    blocks: list[TableBlock | FigureBlock | NoteBlock] = []
    if recommendations:
        blocks.append(writer.table("recommendations", "Recommendations per use case",
                                   "The rule behind each choice is in its 'why'.",
                                   tabs.recommendations_table(recommendations)))
    blocks.append(writer.table(
        "table3_best_per_dataset", "Table 3. Best method per dataset",
        "Highest mean ratio per dataset, its write and read throughput (GiB/s = 1024³ bytes/s), and the ratio "
        f"as a fraction of the dataset's tightest bound{bound_note}; above 1, the codec uses structure the bound's "
        "model ignores (neighbouring pixels are correlated).",
        tabs.best_table(stats, best_per_dataset(stats), inputs.inventory)))
    blocks.append(writer.table(
        "table4_families", "Table 4. Codec families (balanced chunking)",
        "Mean, smallest and largest ratio over the family's codecs and all datasets; mean write time (s) and "
        "throughput. Non-HDF5 baselines have no chunking and are listed as measured.",
        tabs.families_table(stats, family_of)))
    baselines = tabs.baselines_table(stats, inputs.results, study.stats)
    if not baselines.empty:
        blocks.append(writer.table(
            "baselines_vs_study", "Non-HDF5 baselines: ours vs the study's",
            "The study's three baselines outside HDF5, as we measure them, per dataset: where its casts would "
            "lose data we keep every value (a ratio is never bought with lost values), and what each times "
            "differs; its ratio is shown where it measured the same dataset.", baselines))
    chunking = tabs.chunking_table(stats)
    blocks.append(writer.table("table5_chunking", "Table 5. Chunking summary", _chunking_caption(chunking),
                               chunking))
    try:
        top = top_performers(inputs.rankable, "balanced", 10)
        shown = top[[c for c in ("method", "codec", "ratio", "write_gibs", "read_gibs", "top_ratio_all",
                                 "top_write_all", "top_read_all", "highest_ratio", "selected", "why") if c in top]]
        blocks.append(writer.table(
            "top_performers", "Top performers (balanced chunking)",
            "The study's rule: in the top 10 of ratio, write and read throughput on every dataset, plus the "
            "highest mean ratio. " + str(top.attrs.get("note", "")), shown))
    except StempressError as err:
        notes.append(f"top performers not ranked: {err}")
    blocks.append(writer.table(
        "methods_per_dataset", "Every method on every dataset",
        "Means over runs; CV is the run-to-run coefficient of variation of the time; fraction of bound = ratio "
        f"/ the dataset's tightest bound{bound_note}.", tabs.methods_table(stats, inputs.inventory),
        collapsed=True))
    return [Section("Methods", blocks)]


def _chunking_caption(table: pd.DataFrame) -> str:
    spread = tabs.chunking_variation(table)
    text = ("Means over the (dataset, codec) pairs measured under every chunking, so a skipped cell cannot fake "
            "a difference. Variation = (max - min) / min over the chunkings' means; the last row is the median "
            "over pairs of each pair's own variation of ratio, write time and read time (as in the comparison "
            "with the study).")
    if spread:
        text += (f" Here the ratio varies by {spread['ratio']:.1f} %, write by {spread['write_gibs']:.0f} %, "
                 f"read by {spread['read_gibs']:.0f} % (study: < 4 %, ~17 %, ~40 %).")
    return text


def _figure_section(writer: _Writer, inputs: Inputs, study: Study, law: LawInputs | None) -> Section:

    stats = inputs.stats
    section = Section("Figures")
    if stats.empty:
        section.blocks.append(NoteBlock("No successful measurement: no figures."))
        return section
    family_of = tabs.families(inputs.results)
    try:
        top = top_performers(inputs.rankable, "balanced", 10)
        selected = list(top.loc[top["selected"], "codec"])
    except StempressError:
        selected = []
    section.blocks += [
        writer.figure("fig1_top10", "Figure 1. Top 10 codecs: ratio, write and read throughput",
                      "Balanced chunking, mean over datasets, coloured by codec family; * marks codecs measured "
                      "on fewer datasets (their mean is over different data).",
                      lambda: figs.top10_figure(stats, family_of), "no balanced-chunking measurement"),
        writer.figure("fig2_radar", "Figure 2. The top performers",
                      "Each axis is scaled so the best of the selected codecs is 1: ratio, write and read "
                      "throughput, and timing stability 1/(1 + CV %) of writes and reads.",
                      lambda: figs.radar_figure(stats, selected) if selected else None,
                      "no top performer was selected"),
        *_sparsity_blocks(writer, law, study),
        writer.figure("fig4_chunking", "Figure 4. Effect of chunking",
                      "Per codec, mean over datasets of the ratio and the write/read throughput under each "
                      "chunking (throughput on log axes).", lambda: figs.chunking_figure(stats),
                      "no chunked (HDF5) measurement"),
        writer.figure("fig5_pareto", "Figure 5. Pareto fronts of ratio against speed",
                      "Every method (codec x chunking, and the baselines), mean over datasets; ringed and "
                      "named: the methods no other method beats on both axes.",
                      lambda: figs.pareto_figure(stats, pareto_front), "no measurement with a throughput"),
    ]
    return section


@dataclass
class LawInputs:
    """Figure 3's points, our fit of the law to them, and the study's law checked on them."""
    points: pd.DataFrame
    best: pd.DataFrame
    fit: SparsityFit | None
    fit_note: str | None
    check: pd.DataFrame
    bounds: pd.DataFrame | None


def sparsity_inputs(inputs: Inputs, study: Study) -> LawInputs | None:
    """Every method's and the best ratio per dataset against its sparsity; None without an inventory."""
    if inputs.inventory is None or inputs.stats.empty:
        return None
    inv = inputs.inventory.rename(columns={"dataset_id": "dataset", "sparsity_fraction": "sparsity"})
    sparsity = inv[["dataset", "sparsity"]]
    points = inputs.stats.rename(columns={"compression_ratio_mean": "ratio"}).merge(sparsity, on="dataset")
    best = best_per_dataset(inputs.stats).rename(columns={"compression_ratio_mean": "ratio"}).merge(
        sparsity, on="dataset")
    fit, fit_note = None, None
    try:
        fit = fit_sparsity_law(best["sparsity"].to_numpy(float), best["ratio"].to_numpy(float))
        fit_note = fit.warning
    except StempressError as err:  # too few datasets, one sparsity, no convergence: draw the rest anyway
        fit_note = f"not fitted: {err}"
    bounds = inv[["dataset", "sparsity", "tightest_bound_ratio"]] if "tightest_bound_ratio" in inv else None
    return LawInputs(points, best, fit, fit_note, law_check(best, study.law, fit), bounds)


def _sparsity_blocks(writer: _Writer, law: LawInputs | None, study: Study) -> list[FigureBlock | NoteBlock
                                                                                   | TableBlock]:
    """Figure 3, then the study's law checked on these datasets: a table and its residual plot."""
    title = "Figure 3. Compression ratio vs sparsity"
    if law is None:
        return [NoteBlock(f"{title}: not drawn, the sparsity of each dataset comes from inventory.csv, which "
                          "this results folder lacks.")]
    drawn = ["faint: every method's mean ratio per dataset", "red dots: the best per dataset"]
    if law.fit is not None:
        drawn.append("red line: the law C = a·s^b + c fitted to them (start [50, 7, 5], as the study)")
    drawn += [f"dashed: the study's law, {study.law.source}", "dotted: the study's bound 16 / H₂(s)"]
    if law.bounds is not None:
        drawn.append("green bars: each dataset's tightest bound (Table 1)")
    text = "; ".join(drawn)
    caption = text[0].upper() + text[1:] + "." + (f" Our fit: {law.fit_note}." if law.fit_note else "")
    blocks: list[FigureBlock | NoteBlock | TableBlock] = [writer.figure(
        "fig3_sparsity", title, caption,
        lambda: figs.sparsity_figure(law.points, law.best, law.fit, study.law.fit,
                                     lambda s: float(sparsity_bound(s, STUDY_BOUND_BITS)), law.bounds, law.fit_note,
                                     study_label=f"study's law ({study.law.source})"),
        "no dataset has both a ratio and a sparsity")]
    if law.check.empty:
        return blocks
    scatter = study.law.scatter
    blocks.append(writer.table(
        "sparsity_law", "The study's sparsity law on these datasets",
        law_summary(law.check, study.law) + f" Factor = measured / predicted; the law holds where the factor "
        f"lies within {1 / scatter:.2f}-{scatter:.2f}x, the spread of the study's own datasets around it. 'fit' "
        "is the law fitted to these datasets (Figure 3's red line).", law.check))
    blocks.append(writer.figure(
        "fig3b_law_residuals", "Figure 3b. The study's law and our fit: residuals on these datasets",
        "Top: the best ratio per dataset with the study's law (dashed), its own spread (band) and our fit. "
        "Bottom: measured / predicted for each dataset; outside the band the study's law does not hold.",
        lambda: figs.law_residuals_figure(law.check, study.law.fit, scatter, law.fit,
                                          f"study's law ({study.law.source})"),
        "no dataset has both a ratio and a sparsity"))
    return blocks
