"""Figures of a reduction: virtual images, the CoM/DPC field, the iDPC phase and the mean pattern with detectors.

Why: a reduced file is only trusted once someone has looked at it; these show each summary with its scan
axes in physical units (nm when the scan is calibrated, else pixels) and the detector geometry that made
it, so a misplaced centre or a mis-sized annulus is visible at a glance. Built on ``Figure`` (no pyplot),
like the benchmark report, and written as PNG + SVG with ``save_figure``. ``figures_from_reduced`` draws
them from a reduced file alone (what was computed, with its own calibration and detectors);
``figures_from_source`` recomputes the default detectors from the cube.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from stempress.data.base import Dataset4D
from stempress.errors import StempressError
from stempress.reduce.calibration import PIXEL_UNITS, Calibration
from stempress.reduce.engine import Results
from stempress.reduce.imaging import (
    Annulus,
    VirtualDetectors,
    curl,
    default_reducers,
    divergence,
    dpc_field,
    integrated_phase,
    radius_map,
)
from stempress.reduce.output import read_reduced, reduced_calibration
from stempress.reduce.sufficiency import parse_target
from stempress.report.figures import new_figure, save_figure
from stempress.store.reducing import run_reducers, source_calibration

#: Scan length units converted to nm for the axes.
NM_PER_UNIT = {"nm": 1.0, "A": 0.1, "Å": 0.1, "angstrom": 0.1, "pm": 1e-3, "um": 1e3, "µm": 1e3}
#: Arrows per side of the quiver plot, at most: denser is unreadable.
QUIVER_ARROWS = 16
DETECTOR_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
Radii = tuple[float, float]


# -- units -------------------------------------------------------------------------------------------------
def scan_axes(calibration: Calibration) -> tuple[float, str]:
    """Scan step and its unit for the axes: nm where the R calibration is a length, else 1 px."""
    units = calibration.r_units.strip()
    if units in PIXEL_UNITS or calibration.r_pixel_size <= 0:
        return 1.0, "px"
    if units in NM_PER_UNIT:
        return calibration.r_pixel_size * NM_PER_UNIT[units], "nm"
    return calibration.r_pixel_size, units


def _extent(shape: tuple[int, ...], step: float) -> tuple[float, float, float, float]:
    """imshow extent putting pixel (i, j)'s centre at (j * step, i * step), y down."""
    ny, nx = shape[:2]
    return -0.5 * step, (nx - 0.5) * step, (ny - 0.5) * step, -0.5 * step


def _image(fig: Figure, ax: Any, data: np.ndarray, calibration: Calibration, title: str, bar: str,
           **kwargs: Any) -> Any:
    step, units = scan_axes(calibration)
    shown = ax.imshow(data, extent=_extent(data.shape, step), interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"scan x ({units})")
    ax.set_ylabel(f"scan y ({units})")
    fig.colorbar(shown, ax=ax, label=bar, shrink=0.9)
    return shown


def _symmetric(data: np.ndarray) -> dict[str, Any]:
    """A diverging colour map centred on zero, so the sign of a component reads at once."""
    top = float(np.nanmax(np.abs(data))) if data.size else 0.0
    top = top if top > 0 else 1.0
    return {"cmap": "RdBu_r", "vmin": -top, "vmax": top}


# -- detector radii ----------------------------------------------------------------------------------------
def detector_radii(detectors: Mapping[str, np.ndarray] | Sequence[Annulus], calibration: Calibration
                   ) -> dict[str, Radii]:
    """Inner and outer radius (px, ``inf`` for open) of each detector: exact for ``Annulus``; for a mask,
    the nearest and farthest of its pixels, 0 when it holds the pixel nearest the centre, open when it takes
    every pixel beyond its inner edge."""
    if not isinstance(detectors, Mapping):
        return {d.name: d.radii_px(calibration) for d in detectors}
    out: dict[str, Radii] = {}
    for name, mask in detectors.items():
        on = np.asarray(mask) != 0
        if not on.any():
            raise StempressError(f"detector {name!r} covers no pixel; nothing to draw")
        r = radius_map(on.shape, calibration)
        inner = 0.0 if bool(on.flat[np.argmin(r)]) else float(r[on].min())  # holds the centre: a disk
        beyond = r >= inner
        outer = math.inf if bool(on[beyond].all()) else float(r[on].max())
        out[str(name)] = (inner, outer)
    return out


# -- the four figures --------------------------------------------------------------------------------------
def virtual_images_figure(images: Mapping[str, np.ndarray], calibration: Calibration) -> Figure:
    """One panel per virtual detector image (counts)."""
    if not images:
        raise StempressError("no virtual images to draw")
    n = len(images)
    fig = new_figure(3.6 * n, 3.4)
    for ax, (name, image) in zip(np.atleast_1d(fig.subplots(1, n)), images.items(), strict=True):
        _image(fig, ax, np.asarray(image, np.float64), calibration, f"virtual {name}", "counts", cmap="gray")
    return fig


def _com_units(calibration: Calibration) -> tuple[float, str]:
    """CoM shifts as angles where the detector is calibrated in mrad, else detector pixels."""
    return (calibration.q_pixel_size, "mrad") if calibration.angular else (1.0, "px")


def dpc_figure(com_y: np.ndarray, com_x: np.ndarray, calibration: Calibration, bf_image: np.ndarray | None = None,
               *, rotation_deg: float = 0.0, transpose: bool = False) -> Figure:
    """The DPC field's components, its magnitude, a decimated quiver over the BF image, divergence and curl."""
    scale, field_units = _com_units(calibration)
    g_y, g_x = dpc_field(com_y, com_x, rotation_deg=rotation_deg, transpose=transpose)
    g_y, g_x = g_y * scale, g_x * scale
    step, units = scan_axes(calibration)
    fig = new_figure(11.5, 7.0)
    axes = fig.subplots(2, 3)
    _image(fig, axes[0, 0], g_x, calibration, "DPC $g_x$", f"$g_x$ ({field_units})", **_symmetric(g_x))
    _image(fig, axes[0, 1], g_y, calibration, "DPC $g_y$", f"$g_y$ ({field_units})", **_symmetric(g_y))
    _image(fig, axes[0, 2], np.hypot(g_y, g_x), calibration, "|g|", f"|g| ({field_units})", cmap="magma")
    back = bf_image if bf_image is not None else np.hypot(g_y, g_x)
    _image(fig, axes[1, 0], np.asarray(back, np.float64), calibration,
           "field over BF" if bf_image is not None else "field over |g|", "counts" if bf_image is not None
           else f"|g| ({field_units})", cmap="gray")
    ny, nx = g_y.shape
    every = max(1, math.ceil(max(ny, nx) / QUIVER_ARROWS))
    rows, cols = np.arange(every // 2, ny, every), np.arange(every // 2, nx, every)
    yy, xx = np.meshgrid(rows * step, cols * step, indexing="ij")
    sub_y, sub_x = g_y[np.ix_(rows, cols)], g_x[np.ix_(rows, cols)]
    # angles="xy": arrows follow the data axes, so +g_y points down the (inverted) scan-y axis
    axes[1, 0].quiver(xx, yy, sub_x, sub_y, color="#ffb000", angles="xy", pivot="mid", width=0.006)
    div = divergence(g_y, g_x, (step, step))
    rot = curl(g_y, g_x, (step, step))
    _image(fig, axes[1, 1], div, calibration, "divergence", f"div g ({field_units}/{units})", **_symmetric(div))
    _image(fig, axes[1, 2], rot, calibration, "curl (≈0 at the right rotation)", f"curl g ({field_units}/{units})",
           **_symmetric(rot))
    fig.suptitle(f"CoM / DPC field (rotation {rotation_deg:g}°{', transposed' if transpose else ''})", fontsize=11)
    return fig


def idpc_figure(com_y: np.ndarray, com_x: np.ndarray, calibration: Calibration, *, rotation_deg: float = 0.0,
                transpose: bool = False, highpass: float = 0.0) -> Figure:
    """The iDPC phase: the potential whose gradient is the DPC field (field units times scan units)."""
    scale, field_units = _com_units(calibration)
    g_y, g_x = dpc_field(com_y, com_x, rotation_deg=rotation_deg, transpose=transpose)
    step, units = scan_axes(calibration)
    phase = integrated_phase(g_y * scale, g_x * scale, step=(step, step), highpass=highpass)
    fig = new_figure(5.0, 4.2)
    _image(fig, fig.subplots(), phase, calibration, "iDPC phase (∝ projected potential)",
           f"phase ({field_units}·{units})", cmap="inferno")
    return fig


def mean_pattern_figure(mean: np.ndarray, calibration: Calibration, radii: Mapping[str, Radii]) -> Figure:
    """The mean pattern on a log scale, each detector's inner and outer edge drawn as a labelled circle pair
    around the calibrated centre (mrad about the centre when the detector is calibrated, else px). Circles
    carry ``gid`` ``detector:NAME:inner|outer``; an open outer edge is drawn dashed at the detector's reach."""
    pattern = np.asarray(mean, np.float64)
    scale, units = _com_units(calibration)
    cy, cx = calibration.centre_y, calibration.centre_x
    ny, nx = pattern.shape
    extent = ((-0.5 - cx) * scale, (nx - 0.5 - cx) * scale, (ny - 0.5 - cy) * scale, (-0.5 - cy) * scale)
    positive = pattern[pattern > 0]
    low = float(positive.min()) if positive.size else 1e-3
    high = float(pattern.max()) if positive.size else 1.0
    fig = new_figure(6.4, 5.4)
    ax = fig.subplots()
    shown = ax.imshow(np.where(pattern > 0, pattern, low), extent=extent, interpolation="nearest", cmap="gray",
                      norm=LogNorm(vmin=low, vmax=max(high, low * 10)))
    fig.colorbar(shown, ax=ax, label="mean counts per pixel (log)", shrink=0.9)
    reach = float(radius_map(pattern.shape, calibration).max())
    for i, (name, (inner, outer)) in enumerate(radii.items()):
        color = DETECTOR_COLORS[i % len(DETECTOR_COLORS)]
        open_end = math.isinf(outer)
        for edge, radius, style in (("inner", inner, "-"), ("outer", reach if open_end else outer,
                                                           "--" if open_end else "-")):
            ax.add_patch(Circle((0.0, 0.0), radius * scale, fill=False, edgecolor=color, linestyle=style,
                                linewidth=1.3, gid=f"detector:{name}:{edge}"))
        span = f"{inner * scale:.3g}–{'∞' if open_end else f'{outer * scale:.3g}'} {units}"
        ax.plot([], [], color=color, linewidth=1.3, label=f"{name}: {span}")  # legend entry; labels never overlap
    ax.plot([0.0], [0.0], marker="+", color="#ffb000", markersize=9, linestyle="none", label="centre")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85, title="virtual detectors", title_fontsize=8)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(f"$k_x$ from centre ({units})")
    ax.set_ylabel(f"$k_y$ from centre ({units})")
    ax.set_title(f"mean pattern, centre ({cy:.1f}, {cx:.1f}) px ({calibration.origin})", fontsize=10)
    return fig


# -- drivers -----------------------------------------------------------------------------------------------
def reduction_figures(results: Mapping[str, Mapping[str, np.ndarray]], calibration: Calibration,
                      detectors: Mapping[str, np.ndarray] | Sequence[Annulus], out_dir: Path, *,
                      virtual: str = "virtual", com: str = "com", mean: str = "mean_pattern",
                      rotation_deg: float = 0.0, transpose: bool = False, highpass: float = 0.0) -> list[Path]:
    """Draw every figure the results allow (``virtual_images``, ``dpc_field``, ``idpc_phase``,
    ``mean_pattern``) into ``out_dir`` as PNG + SVG; returns the files written. ``results`` is
    ``run_reducers``'s output; ``virtual``/``com``/``mean`` name the reducers to take each part from;
    ``detectors`` (masks by name, or the ``Annulus`` es) give the circles on the mean pattern."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure] = {}
    images = dict(results.get(virtual, {}))
    if images:
        figures["virtual_images"] = virtual_images_figure(images, calibration)
    if com in results:
        com_y, com_x = results[com]["com_y"], results[com]["com_x"]
        bf_image = images.get("BF")
        figures["dpc_field"] = dpc_figure(com_y, com_x, calibration, bf_image, rotation_deg=rotation_deg,
                                          transpose=transpose)
        figures["idpc_phase"] = idpc_figure(com_y, com_x, calibration, rotation_deg=rotation_deg,
                                            transpose=transpose, highpass=highpass)
    if mean in results:
        figures["mean_pattern"] = mean_pattern_figure(results[mean]["mean"], calibration,
                                                      detector_radii(detectors, calibration))
    if not figures:
        raise StempressError(f"nothing to draw: the results hold {sorted(results)}, none of {virtual!r}, {com!r}, "
                             f"{mean!r}; pass the names of the reducers to draw")
    written: list[Path] = []
    for key, fig in figures.items():
        written.extend(save_figure(fig, out_dir, key))
    return written


def figures_from_source(source: Dataset4D | str, out_dir: Path, *, rows: int | None = None) -> list[Path]:
    """Calibrate ``source`` (its metadata, else its mean pattern), run the default reducers in one pass and
    draw all four figures into ``out_dir``; for ``stempress reduce --figures DIR``."""
    if isinstance(source, str):
        from stempress.data.open import open_source

        source = open_source(source)
    calibration = source_calibration(source)
    reducers = default_reducers(calibration)
    results = run_reducers(source, reducers, rows=rows, calibration=calibration)
    detectors = next(r.detectors for r in reducers if isinstance(r, VirtualDetectors))
    return reduction_figures(results, calibration, [d for d in detectors if isinstance(d, Annulus)], out_dir)


@dataclass(frozen=True)
class ReducedView:
    """What a reduced file offers the figures, in ``reduction_figures``'s terms: detector images by display
    name, the first CoM target's maps, the mean pattern, and each detector as an ``Annulus`` in pixels."""

    results: Results
    calibration: Calibration
    detectors: list[Annulus]
    #: The scan/detector rotation the reduction fitted on the CoM maps (0 and False where none was recorded).
    rotation_deg: float = 0.0
    transpose: bool = False
    rotation_fitted: bool = False
    #: How much curl the fitted rotation leaves (0: confident; near 0.5: the maps are mostly noise).
    curl_fraction: float | None = None


def reduced_view(results: Mapping[str, Mapping[str, np.ndarray]], record: Mapping[str, Any]) -> ReducedView:
    """Regroup ``read_reduced``'s output: the detector targets' images under ``"virtual"`` (named by their
    output, e.g. ``ADF``, or by their target label when two share one), the first ``com`` target under
    ``"com"``, ``mean_pattern`` under ``"mean_pattern"``; each detector's radii come from its target and the
    file's calibration, exactly as the reduction computed them."""
    calibration = reduced_calibration(record)
    targets = [(parse_target(label), arrays) for label, arrays in results.items()]
    rings = {t.label: r.detectors[0] for t, _ in targets
             if isinstance(r := t.reducer(calibration), VirtualDetectors) and isinstance(r.detectors[0], Annulus)}
    names = [key for t, arrays in targets if t.label in rings for key in arrays]
    regrouped: dict[str, dict[str, np.ndarray]] = {}
    virtual: dict[str, np.ndarray] = {}
    detectors: list[Annulus] = []
    com: str | None = None
    for target, arrays in targets:
        if target.label in rings:
            for key, image in arrays.items():
                name = key if names.count(key) == 1 else target.label
                virtual[name] = image
                detectors.append(Annulus(name, *rings[target.label].radii_px(calibration), "px"))
        elif target.kind == "com" and com is None:
            com, regrouped["com"] = target.label, dict(arrays)
        elif target.kind == "mean_pattern":
            regrouped["mean_pattern"] = dict(arrays)
    if virtual:
        regrouped["virtual"] = virtual
    fitted = dict(record.get("derived", {}).get(com, {})) if com is not None else {}
    rotation, curl = fitted.get("rotation_deg"), fitted.get("curl_fraction")
    if isinstance(rotation, int | float) and math.isfinite(rotation):
        return ReducedView(regrouped, calibration, detectors, float(rotation), bool(fitted.get("transpose")), True,
                           float(curl) if isinstance(curl, int | float) else None)
    return ReducedView(regrouped, calibration, detectors)


def figures_from_reduced(path: Path | str, out_dir: Path) -> list[Path]:
    """Every figure a reduced file allows, drawn from the file alone into ``out_dir`` (PNG + SVG): the mean
    pattern only when the file holds the ``mean_pattern`` target, the DPC figures only with ``com`` (at the
    rotation the reduction fitted, where it recorded one)."""
    return draw_reduced(reduced_view(*read_reduced(path)), out_dir)


def draw_reduced(view: ReducedView, out_dir: Path) -> list[Path]:
    """``reduction_figures`` for a reduced file's view."""
    return reduction_figures(view.results, view.calibration, view.detectors, out_dir, rotation_deg=view.rotation_deg,
                             transpose=view.transpose)
