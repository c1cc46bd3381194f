"""Figures of a reduction: written as valid PNG/SVG, one circle pair per detector, pixel axes without R calibration."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.patches import Circle

from stempress.data.base import ArraySource
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.reduce.calibration import source_calibration
from stempress.reduce.engine import run_reducers
from stempress.reduce.imaging import VirtualDetectors, default_reducers
from stempress.report.reduce_figures import (
    detector_radii,
    figures_from_source,
    mean_pattern_figure,
    reduction_figures,
    scan_axes,
    virtual_images_figure,
)

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
