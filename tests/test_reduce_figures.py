"""Figures of a reduction: written as valid PNG/SVG, one circle pair per detector, pixel axes without R calibration;
drawn from a reduced file alone; the reduce report page and its section in the benchmark report."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.patches import Circle

from stempress.data.base import ArraySource
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.reduce.imaging import VirtualDetectors, default_reducers
from stempress.reduce.output import read_reduced
from stempress.reduce.sufficiency import parse_targets
from stempress.report.reduce_figures import (
    detector_radii,
    figures_from_reduced,
    figures_from_source,
    mean_pattern_figure,
    reduced_view,
    reduction_figures,
    scan_axes,
    virtual_images_figure,
)
from stempress.report.reduce_report import FIGURES, REPORT_HTML, write_reduced_report
from stempress.store.reduced import reduce_to_file
from stempress.store.reducing import run_reducers, source_calibration

SMOKE = "synthetic:smoke/4D_Diff"
KEYS = ("virtual_images", "dpc_field", "idpc_phase", "mean_pattern")


@pytest.fixture(scope="module")
def smoke():
    source = open_source(SMOKE)
    cal = source_calibration(source)
    reducers = default_reducers(cal)
    results = run_reducers(source, reducers, calibration=cal)
    virtual = next(r for r in reducers if isinstance(r, VirtualDetectors))
    return source, cal, results, virtual


def test_figures_from_source_writes_valid_png_and_svg(tmp_path: Path):
    written = figures_from_source(SMOKE, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{k}.{ext}" for k in KEYS for ext in ("png", "svg"))
    for path in written:
        assert path.is_file() and path.stat().st_size > 1000
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_mean_pattern_draws_one_circle_pair_per_detector(smoke):
    _, cal, results, virtual = smoke
    masks = virtual.masks(cal.det_shape, cal)
    fig = mean_pattern_figure(results["mean_pattern"]["mean"], cal, detector_radii(masks, cal))
    circles = [p for p in fig.axes[0].patches if isinstance(p, Circle)]
    gids = sorted(c.get_gid() for c in circles)
    assert gids == sorted(f"detector:{n}:{e}" for n in masks for e in ("inner", "outer"))
    for circle in circles:  # centred on the calibrated centre, which is the origin of the mrad axes
        assert circle.center == (0.0, 0.0)
    exact = {d.name: d.radii_px(cal) for d in virtual.detectors}
    by_gid = {c.get_gid(): c.get_radius() for c in circles}
    assert by_gid["detector:ADF:inner"] == pytest.approx(exact["ADF"][0] * cal.q_pixel_size, rel=0.1)
    assert by_gid["detector:BF:outer"] < by_gid["detector:ADF:inner"] < by_gid["detector:HAADF:inner"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("HAADF") and "∞" in t for t in labels)


def test_mask_radii_match_annuli(smoke):
    _, cal, _, virtual = smoke
    from_masks = detector_radii(virtual.masks(cal.det_shape, cal), cal)
    exact = detector_radii(virtual.detectors, cal)
    assert math.isinf(from_masks["HAADF"][1]) and math.isinf(exact["HAADF"][1])
    assert from_masks["BF"][0] == 0.0
    for name, (inner, outer) in exact.items():
        assert from_masks[name][0] == pytest.approx(inner, abs=1.0)
        if not math.isinf(outer):
            assert from_masks[name][1] == pytest.approx(outer, abs=1.0)


def test_scan_axes_in_nm_when_calibrated(smoke):
    _, cal, results, _ = smoke
    assert scan_axes(cal) == (pytest.approx(0.5), "nm")
    fig = virtual_images_figure(results["virtual"], cal)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["virtual BF", "virtual ADF", "virtual HAADF"]
    assert fig.axes[0].get_xlabel() == "scan x (nm)"
    assert fig.axes[0].get_xlim()[1] == pytest.approx(7.5 * 0.5)


def test_uncalibrated_cube_gets_pixel_axes(tmp_path: Path):
    cube = open_source(SMOKE).read_rows(0, 8)
    source = ArraySource(np.ascontiguousarray(cube))  # no metadata: no R or Q calibration
    cal = source_calibration(source)
    assert scan_axes(cal) == (1.0, "px") and not cal.angular
    written = figures_from_source(source, tmp_path)
    assert len(written) == 8 and all(p.is_file() for p in written)
    assert "scan x (px)" in (tmp_path / "dpc_field.svg").read_text()
    reducers = default_reducers(cal)
    results = run_reducers(source, reducers, calibration=cal)
    virtual = next(r for r in reducers if isinstance(r, VirtualDetectors))
    fig = mean_pattern_figure(results["mean_pattern"]["mean"], cal, detector_radii(virtual.detectors, cal))
    assert fig.axes[0].get_xlabel() == "$k_x$ from centre (px)"


def test_partial_results_draw_what_they_can(smoke, tmp_path: Path):
    _, cal, results, virtual = smoke
    written = reduction_figures({"com": results["com"]}, cal, virtual.detectors, tmp_path)
    assert sorted(p.stem for p in written) == ["dpc_field", "dpc_field", "idpc_phase", "idpc_phase"]
    with pytest.raises(StempressError, match="nothing to draw"):
        reduction_figures({"other": {}}, cal, virtual.detectors, tmp_path)


# -- from a reduced file ------------------------------------------------------------------------------------
FULL = ["bf", "adf:inner=1.1,outer=2", "haadf:inner=2", "com", "mean_pattern"]


@pytest.fixture(scope="module")
def reduced_files(tmp_path_factory) -> dict[str, Path]:
    """A file with every drawable target, and one with a BF image and radial profiles only."""
    folder = tmp_path_factory.mktemp("reduced")
    return {"full": reduce_to_file(open_source(SMOKE), FULL, folder / "full.h5"),
            "bf": reduce_to_file(open_source(SMOKE), ["bf", "radial:bins=8"], folder / "bf.h5")}


def test_figures_from_a_reduced_file_draw_the_detectors_the_reduction_used(reduced_files, tmp_path: Path):
    written = figures_from_reduced(reduced_files["full"], tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{k}.{ext}" for k in KEYS for ext in ("png", "svg"))
    assert all(p.stat().st_size > 1000 for p in written)
    view = reduced_view(*read_reduced(reduced_files["full"]))
    cal = view.calibration
    assert cal == source_calibration(open_source(SMOKE))
    want = {t.kind.upper(): t.reducer(cal).detectors[0].radii_px(cal) for t in parse_targets(FULL[:3])}
    assert {d.name: d.radii_px(cal) for d in view.detectors} == want
    assert want["ADF"] == pytest.approx((1.1 * cal.bf_radius_px, 2.0 * cal.bf_radius_px))
    svg = (tmp_path / "mean_pattern.svg").read_text()
    for name in want:
        assert f'id="detector:{name}:inner"' in svg and f'id="detector:{name}:outer"' in svg
    assert set(view.results) == {"virtual", "com", "mean_pattern"} and list(view.results["virtual"]) == list(want)


def test_two_targets_with_one_output_name_keep_their_labels(tmp_path: Path):
    path = reduce_to_file(open_source(SMOKE), ["adf:inner=1,outer=2", "adf:inner=2,outer=3"], tmp_path / "r.h5")
    view = reduced_view(*read_reduced(path))
    assert list(view.results["virtual"]) == ["adf:inner=1.0,outer=2.0", "adf:inner=2.0,outer=3.0"]
    assert [d.name for d in view.detectors] == list(view.results["virtual"])
    assert view.detectors[0].radii_px(view.calibration)[1] == view.detectors[1].radii_px(view.calibration)[0]


def test_the_dpc_rotation_comes_from_the_record_when_there_is_one(reduced_files):
    results, record = read_reduced(reduced_files["full"])
    fitted = dict(record, derived={"com": {"rotation_deg": 30.0, "transpose": True, "curl_fraction": 0.1}})
    view = reduced_view(results, fitted)
    assert (view.rotation_deg, view.transpose, view.rotation_fitted, view.curl_fraction) == (30.0, True, True, 0.1)
    unknown = reduced_view(results, dict(record, derived={"com": {"rotation_deg": math.nan}}))
    assert (unknown.rotation_deg, unknown.transpose, unknown.rotation_fitted) == (0.0, False, False)


class _Page(HTMLParser):
    """Headings, notes, embedded images and table cells of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.figures: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        if tag == "figure":
            self.figures.append(found.get("id") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_reduce_report_embeds_every_figure_and_tables_the_provenance(reduced_files, tmp_path: Path):
    html = write_reduced_report(reduced_files["full"], tmp_path)
    assert html == tmp_path / REPORT_HTML
    page = parse_page(html)
    assert page.figures == [f"reduced-{k}" for k in FIGURES]
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    text = " ".join(page.text)
    _, record = read_reduced(reduced_files["full"])
    assert record["source"]["sha256"] in text and "calibration: r_pixel_size" in text
    assert "com_x" in text and "adf:inner=1.1,outer=2.0" in text
    assert "Recommendations" not in text and "not drawn" not in text
    assert "fitted on the CoM maps" in text or "rotation 0°" in text
    assert (tmp_path / "figures" / "mean_pattern.svg").is_file()


def test_reduce_report_says_why_a_figure_is_absent_and_drops_stale_ones(reduced_files, tmp_path: Path):
    write_reduced_report(reduced_files["full"], tmp_path)
    page = parse_page(write_reduced_report(reduced_files["bf"], tmp_path))  # rebuilt in the same folder
    assert page.figures == ["reduced-virtual_images"]
    text = " ".join(page.text)
    assert "no mean_pattern target" in text and "no com target" in text and "Radial profiles" in text
    assert sorted(p.stem for p in (tmp_path / "figures").iterdir()) == ["virtual_images", "virtual_images"]


def test_a_reduced_file_with_nothing_to_draw_still_gets_its_tables(tmp_path: Path):
    path = reduce_to_file(open_source(SMOKE), ["radial:bins=4"], tmp_path / "r.h5")
    page = parse_page(write_reduced_report(path, tmp_path / "report"))
    assert page.figures == [] and "radial:bins=4" in " ".join(page.text)


def stempress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, timeout=300)


def test_cli_reduce_report_and_benchmark_report_with_reduced_sections(reduced_files, tmp_path: Path):
    from stempress.bench.api import run_bench

    out = tmp_path / "reduced.h5"
    made = stempress("reduce", SMOKE, "--target", "bf", "--target", "com", "--out", str(out), "--report",
                     str(tmp_path / "view"))
    assert made.returncode == 0, made.stderr
    page = parse_page(tmp_path / "view" / REPORT_HTML)
    assert page.figures == ["reduced-virtual_images", "reduced-dpc_field", "reduced-idpc_phase"]

    results = tmp_path / "bench"
    run_bench(suite="smoke", runs=1, methods="gzip_1", chunkings=["balanced"], out=results)
    built = stempress("report", str(results), "--reduced", str(out), "--reduced", str(reduced_files["full"]))
    assert built.returncode == 0, built.stderr
    html = results / "report" / "report.html"
    page = parse_page(html)
    assert [f for f in page.figures if f.startswith("reduced")] == (
        ["reduced1-virtual_images", "reduced1-dpc_field", "reduced1-idpc_phase"]
        + [f"reduced2-{k}" for k in FIGURES])
    text = html.read_text()
    assert "Reduction: reduced.h5" in text and "Reduction: full.h5" in text
    assert 'href="figures/reduced2/mean_pattern.svg"' in text
    assert (results / "report" / "figures" / "reduced2" / "mean_pattern.svg").is_file()
    bad = stempress("report", str(results), "--reduced", str(results / "results.csv"))
    assert bad.returncode == 1 and "cannot open" in bad.stderr


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium) - the HTML is checked without it")
def test_reduce_report_renders_in_headless_chromium(reduced_files, tmp_path: Path):
    html = write_reduced_report(reduced_files["full"], tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(["chromium", *flags, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],
                             capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r"<img ", dom.stdout)) == 4 and "Mean pattern with the virtual detectors" in dom.stdout
    assert ":CONSOLE(" not in dom.stderr
