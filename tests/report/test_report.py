"""The report: every table and figure file written and valid, one self-contained HTML page, and graceful
degradation (one dataset, no inventory, no study folder, skipped cells); rendered in Chromium when present."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from stempress.bench.compare import DEFAULT_PAPER_DIR, load_study_statistics, study_findings
from stempress.bench.inventory import INVENTORY_CSV, write_inventory
from stempress.bench.ranking import USE_CASES, normalised
from stempress.bench.results import RESULTS_CSV, STATISTICS_CSV
from stempress.errors import StempressError
from stempress.report import FIGURE_NAMES, FIGURES_DIR, REPORT_HTML, TABLES_DIR, build_report
from stempress.report import figures as figs
from stempress.report import tables as tabs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """One smoke benchmark (seconds) with its inventory, shared by every test (each works on a copy)."""
    from stempress.bench.api import run_bench
    from stempress.bench.inventory import profile_dataset
    from stempress.data.suites import suite

    out = tmp_path_factory.mktemp("bench") / "smoke"
    run_bench(suite="smoke", runs=2, out=out)
    if not (out / INVENTORY_CSV).exists():  # older run_bench: profile the same cubes ourselves
        write_inventory(out, [profile_dataset(s) for s in suite("smoke")])
    return out


def copy_results(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    return dst


@pytest.fixture(scope="module")
def built(smoke_results, tmp_path_factory) -> Path:
    """A full report on the smoke results (built once for the read-only checks)."""
    folder = copy_results(smoke_results, tmp_path_factory.mktemp("built") / "results")
    return build_report(folder)


def only_dataset(folder: Path, dataset: str) -> None:
    """Keep one dataset in every table of a results folder."""
    for name, key in ((RESULTS_CSV, "dataset"), (STATISTICS_CSV, "dataset"), (INVENTORY_CSV, "dataset_id")):
        frame = pd.read_csv(folder / name)
        frame[frame[key] == dataset].to_csv(folder / name, index=False)


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in DATA_URI.findall(html)]


# ------------------------------------------------------------------------------------------- full report


def test_every_table_and_figure_file_is_written_and_valid(built):
    out = built.parent
    assert built.name == REPORT_HTML
    for name in FIGURE_NAMES:
        png, svg = out / FIGURES_DIR / f"{name}.png", out / FIGURES_DIR / f"{name}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        height, width = imread(png).shape[:2]
        assert width > 500 and height > 300, name
        assert ET.parse(svg).getroot().tag.endswith("svg"), name
    expected = {"table1_datasets", "table3_best_per_dataset", "table4_families", "table5_chunking",
                "top_performers", "recommendations", "methods_per_dataset", "study_comparison"}
    for name in expected:
        csv, md = out / TABLES_DIR / f"{name}.csv", out / TABLES_DIR / f"{name}.md"
        frame = pd.read_csv(csv)
        lines = md.read_text().splitlines()
        assert len(lines) == len(frame) + 2, name  # header, rule, one line per row
        assert lines[1].startswith("| ---"), name
    assert not list(out.rglob("*.partial"))  # atomic writes left nothing behind


def test_html_is_self_contained_with_every_figure_embedded(built):
    html = built.read_text()
    pngs = embedded_pngs(html)
    on_disk = [(built.parent / FIGURES_DIR / f"{n}.png").read_bytes() for n in FIGURE_NAMES]
    assert pngs == on_disk  # every figure embedded, in order, byte for byte
    assert not re.search(r"https?://", html)
    assert "<script" not in html.lower()
    links = re.findall(r'href="([^"#][^"]*)"', html)
    assert links and all((built.parent / link).is_file() for link in links)  # relative links resolve


def test_html_states_machine_recommendations_and_study_findings(built):
    html = built.read_text()
    folder = built.parent.parent
    assert "AMD EPYC" in html or "CPU" in html
    assert ">protocol<" in html and ">warm<" in html
    assert ">HDF5 layout<" in html and "study: dataset data (as the study&#x27;s script writes it)" in html
    for use_case in USE_CASES:
        assert f"<h3>{use_case}</h3>" in html
    stats = normalised(pd.read_csv(folder / STATISTICS_CSV))
    for sentence in study_findings(stats, load_study_statistics(DEFAULT_PAPER_DIR)):
        assert escape(sentence, quote=True) in html


def test_best_table_matches_statistics_and_bounds(built):
    folder = built.parent.parent
    stats = pd.read_csv(folder / STATISTICS_CSV)
    inventory = pd.read_csv(folder / INVENTORY_CSV).set_index("dataset_id")
    best = pd.read_csv(built.parent / TABLES_DIR / "table3_best_per_dataset.csv").set_index("dataset")
    expected = stats.groupby("dataset")["compression_ratio_mean"].max()
    assert np.allclose(best["ratio"].sort_index(), expected.sort_index())
    bound = inventory.loc[best.index, "tightest_bound_ratio"].to_numpy()
    assert np.allclose(best["fraction_of_bound"], best["ratio"] / bound)
    methods = pd.read_csv(built.parent / TABLES_DIR / "methods_per_dataset.csv")
    assert len(methods) == len(stats) and methods["fraction_of_bound"].notna().all()


def test_baselines_table_states_per_row_how_each_differs_from_the_study(built):
    folder = built.parent.parent
    table = pd.read_csv(built.parent / TABLES_DIR / "baselines_vs_study.csv")
    results = pd.read_csv(folder / RESULTS_CSV)
    measured = results[results["method"].isin(["sparse_csr", "uint8_overflow", "simple_gzip"])]
    assert len(table) == len(measured.drop_duplicates(["dataset", "method"]))
    by_row = table.set_index(["dataset", "method"])["differs_from_study"]
    assert "loses fractions" in by_row[("4D_Diff-2x2-binning", "sparse_csr")]  # float32: the study's cast
    assert by_row[("4D_Diff", "sparse_csr")].startswith("same file as the study's")  # uint16: its file
    assert table["ratio_study"].notna().all()  # the smoke suite's datasets carry the study's names
    html = built.read_text()
    assert "Non-HDF5 baselines: ours vs the study" in html


def test_chunking_and_family_tables(built):
    chunking = pd.read_csv(built.parent / TABLES_DIR / "table5_chunking.csv")
    assert list(chunking["chunking"][:3]) == ["real_space", "balanced", "single_frame"]
    means = chunking.iloc[:3]
    spread = chunking.set_index("chunking").loc["variation of the means (%)"]
    assert spread["ratio"] == pytest.approx(100 * (means["ratio"].max() - means["ratio"].min())
                                            / means["ratio"].min())
    families = pd.read_csv(built.parent / TABLES_DIR / "table4_families.csv")
    assert {"blosc", "hdf5-builtin", "baseline", "none"} <= set(families["family"])
    assert (families["ratio_min"] <= families["ratio"]).all() and (families["ratio"] <= families["ratio_max"]).all()


# ----------------------------------------------------------------------------------- degraded inputs


def test_single_dataset_skips_the_fit_and_says_why(smoke_results, tmp_path):
    folder = copy_results(smoke_results, tmp_path / "one")
    only_dataset(folder, "4D_Diff")
    html = build_report(folder).read_text()
    assert "not fitted" in html  # the sparsity law needs three datasets; the figure says so
    assert len(embedded_pngs(html)) == len(FIGURE_NAMES)
    best = pd.read_csv(folder / "report" / TABLES_DIR / "table3_best_per_dataset.csv")
    assert list(best["dataset"]) == ["4D_Diff"]


def test_missing_inventory_skips_table1_and_figure3_and_removes_stale_files(built, tmp_path):
    folder = shutil.copytree(built.parent.parent, tmp_path / "old")  # results with a full report built
    assert (folder / "report" / FIGURES_DIR / "fig3_sparsity.png").exists()
    (folder / INVENTORY_CSV).unlink()
    html = build_report(folder).read_text()
    assert "inventory.csv is missing" in html
    assert not (folder / "report" / FIGURES_DIR / "fig3_sparsity.png").exists()  # not left from the first build
    assert not (folder / "report" / FIGURES_DIR / "fig3b_law_residuals.png").exists()
    assert not (folder / "report" / TABLES_DIR / "table1_datasets.csv").exists()
    assert not (folder / "report" / TABLES_DIR / "sparsity_law.csv").exists()
    assert len(embedded_pngs(html)) == len(FIGURE_NAMES) - 2  # Figures 3 and 3b need each dataset's sparsity
    best = pd.read_csv(folder / "report" / TABLES_DIR / "table3_best_per_dataset.csv")
    assert "fraction_of_bound" not in best.columns


def test_missing_study_folder_skips_the_comparison(smoke_results, tmp_path):
    folder = copy_results(smoke_results, tmp_path / "r")
    html = build_report(folder, paper_dir=tmp_path / "no-such-study").read_text()
    assert "comparison with the study is skipped" in html
    assert not (folder / "report" / TABLES_DIR / "study_comparison.csv").exists()
    # Figure 3 promises only what it draws: the study's law as published, its tables being absent
    assert "dashed: the study&#x27;s law, as published (the study&#x27;s tables were not found" in html
    assert "red line: the law C = a·s^b + c fitted" in html
    law = pd.read_csv(folder / "report" / TABLES_DIR / "sparsity_law.csv")
    assert law["law_ratio"].notna().all()


def test_the_studys_law_is_checked_on_our_datasets_with_residuals(built):
    law = pd.read_csv(built.parent / TABLES_DIR / "sparsity_law.csv")
    best = pd.read_csv(built.parent / TABLES_DIR / "table3_best_per_dataset.csv")
    assert sorted(law["dataset"]) == sorted(best["dataset"])
    assert np.allclose(law["ratio_over_law"], law["ratio"] / law["law_ratio"])
    html = built.read_text()
    assert "The study&#x27;s sparsity law C = 49.9·s^6.91 + 4.99 (fitted to the study&#x27;s own tables" in html
    assert ("holds on all" in html) == bool(law["law_holds"].all())  # the sentence follows the table
    assert "Figure 3b. The study&#x27;s law and our fit: residuals" in html


def test_skipped_cells_are_reported_not_averaged(smoke_results, tmp_path):
    folder = copy_results(smoke_results, tmp_path / "skips")
    results = pd.read_csv(folder / RESULTS_CSV)
    cut = (results["method"] == "balanced_gzip_9") & (results["dataset"] == "4D_EELS")
    results.loc[cut, "status"] = "skipped"
    results["reason"] = results["reason"].astype(object)
    results.loc[cut, "reason"] = "write took longer than the 60 s time limit"
    results.loc[cut, ["compression_ratio", "write_time", "write_throughput_gbs"]] = np.nan
    results.to_csv(folder / RESULTS_CSV, index=False)
    (folder / STATISTICS_CSV).unlink()  # recomputed from results.csv
    html = build_report(folder).read_text()
    assert "write took longer than the 60 s time limit" in html
    problems = pd.read_csv(folder / "report" / TABLES_DIR / "problems.csv")
    assert list(problems["method"]) == ["balanced_gzip_9"] and problems["runs"].sum() == cut.sum()
    methods = pd.read_csv(folder / "report" / TABLES_DIR / "methods_per_dataset.csv")
    assert not ((methods["method"] == "balanced_gzip_9") & (methods["dataset"] == "4D_EELS")).any()


def _baselines_only(folder: Path) -> None:
    for name in (RESULTS_CSV, STATISTICS_CSV):
        frame = pd.read_csv(folder / name)
        frame[frame["method"].isin(["sparse_csr", "uint8_overflow", "simple_gzip"])].to_csv(folder / name, index=False)


def _nothing_ok(folder: Path) -> None:
    results = pd.read_csv(folder / RESULTS_CSV)
    results["status"], results["reason"] = "error", "verification failed"
    results.to_csv(folder / RESULTS_CSV, index=False)
    (folder / STATISTICS_CSV).unlink()


def _nan_cells(folder: Path) -> None:
    stats = pd.read_csv(folder / STATISTICS_CSV)
    stats.loc[::3, "read_throughput_gbs_mean"] = np.nan
    stats.loc[::5, "write_time_cv_percent"] = np.nan
    stats.to_csv(folder / STATISTICS_CSV, index=False)


@pytest.mark.parametrize(("damage", "expected"), [
    (_baselines_only, "no balanced-chunking measurement"),
    (_nothing_ok, "no measurement succeeded"),
    (_nan_cells, "left out of the ranking and recommendations"),
])
def test_degenerate_statistics_still_give_a_report(smoke_results, tmp_path, damage, expected):
    folder = copy_results(smoke_results, tmp_path / "r")
    damage(folder)
    html = build_report(folder).read_text()
    assert expected in html
    for png in embedded_pngs(html):
        assert png[:8] == PNG_MAGIC


def test_folder_without_results_is_a_one_line_error(tmp_path):
    with pytest.raises(StempressError) as err:
        build_report(tmp_path)
    assert "results.csv" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StempressError, match="not a folder"):
        build_report(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ building blocks


def test_markdown_table_escapes_pipes_and_aligns_numbers():
    frame = pd.DataFrame({"method": ["a|b", "c"], "ratio": [12.345, np.nan], "runs": [3, 10]})
    lines = tabs.markdown_table(frame).splitlines()
    assert lines[0] == "| method | ratio | runs |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[2] == "| a\\|b | 12.3 | 3 |"
    assert lines[3] == "| c | – | 10 |"


def test_method_means_flags_methods_missing_a_dataset():
    stats = pd.DataFrame({
        "dataset": ["x", "y", "x"], "method": ["balanced_a", "balanced_a", "balanced_b"], "codec": ["a", "a", "b"],
        "chunking": ["balanced"] * 3, "compression_ratio_mean": [2.0, 4.0, 9.0],
        "write_throughput_gbs_mean": [1.0, 1.0, 1.0], "read_throughput_gbs_mean": [1.0, 1.0, 1.0],
        "write_time_mean": [1.0] * 3, "write_time_cv_percent": [1.0] * 3, "read_time_cv_percent": [1.0] * 3,
    })
    means = tabs.method_means(stats).set_index("codec")
    assert means.loc["a", "ratio"] == 3.0 and bool(means.loc["a", "complete"])
    assert not bool(means.loc["b", "complete"])


def test_figure_builders_return_none_when_there_is_nothing_to_draw():
    empty = pd.DataFrame(columns=["dataset", "method", "codec", "chunking", "compression_ratio_mean",
                                  "write_throughput_gbs_mean", "read_throughput_gbs_mean", "write_time_mean",
                                  "write_time_cv_percent", "read_time_cv_percent"])
    assert figs.top10_figure(empty, {}) is None
    assert figs.radar_figure(empty, ["blosc_lz4"]) is None
    assert figs.chunking_figure(empty) is None
    assert figs.sparsity_figure(pd.DataFrame(columns=["dataset", "sparsity", "ratio"]),
                                pd.DataFrame(columns=["dataset", "sparsity", "ratio"]), None, None, None, None) is None


# ----------------------------------------------------------------------------------------------- browser


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium) - the HTML is checked without it")
def test_report_renders_in_headless_chromium(built, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
    url = built.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(["chromium", *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img ") == len(FIGURE_NAMES)
    assert "Table 3. Best method per dataset" in dom.stdout
    assert ":CONSOLE(" not in dom.stderr  # no console message (errors included) while loading
    shot = tmp_path / "page.png"
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(["chromium", *flags, f"--user-data-dir={profile}", f"--screenshot={shot}",
                              "--window-size=1400,3000", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    image = imread(shot)
    assert image.shape[:2] == (3000, 1400)
    assert image[..., :3].std() > 0.05  # not a blank page
