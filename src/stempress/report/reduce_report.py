"""A reduced file as a report: its figures next to tables of what was computed, from what, and how.

Read from the reduced file alone (``read_reduced``), never from the source cube, so the report can be rebuilt
anywhere the small file goes and shows exactly what was stored. ``reduced_section`` is one section of the
benchmark report (``stempress report RESULTS_DIR --reduced FILE``); ``write_reduced_report`` writes a
self-contained ``index.html`` with the PNG/SVG figures beside it (``stempress reduce ... --report DIR``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stempress.bench.results import atomic_write
from stempress.errors import StempressError
from stempress.reduce.engine import Results
from stempress.reduce.output import read_reduced
from stempress.report.html import FigureBlock, NoteBlock, Section, TableBlock, page_html, render_sections
from stempress.report.reduce_figures import ReducedView, draw_reduced, reduced_view

REPORT_HTML = "index.html"
FIGURES_DIR = "figures"
#: Every figure ``reduction_figures`` can draw: title, caption, and why it is absent when it is.
FIGURES: dict[str, tuple[str, str, str]] = {
    "virtual_images": (
        "Virtual images",
        "Each virtual detector's image: the counts inside its ring at every scan position, scan axes in the "
        "file's R calibration.",
        "the file holds no detector target (bf, abf, adf, haadf, annulus)"),
    "dpc_field": (
        "CoM / DPC field",
        "The centre-of-mass shift of every frame as a field (detector px, or mrad when calibrated): components, "
        "magnitude, arrows over the BF image (or |g|), divergence and curl.",
        "the file holds no com target"),
    "idpc_phase": (
        "iDPC phase",
        "The potential whose gradient is the DPC field (Fourier integration), proportional to the projected "
        "electrostatic potential.",
        "the file holds no com target"),
    "mean_pattern": (
        "Mean pattern with the virtual detectors",
        "The mean diffraction pattern (log scale) with each detector's inner and outer edge drawn about the "
        "calibrated centre, exactly as the reduction used them; a dashed outer edge is open (to the corner).",
        "the file holds no mean_pattern target (reduce with --target mean_pattern to check the detectors "
        "against the pattern)"),
}


def targets_table(results: Results, record: Mapping[str, Any]) -> pd.DataFrame:
    """One row per stored array: its target, shape, type, units, range and what computing it assumed."""
    units = record.get("parameters", {}).get("units", {})
    rows = []
    for label, arrays in results.items():
        for key, array in arrays.items():
            values = np.asarray(array)
            finite = values[np.isfinite(values)] if values.dtype.kind in "fc" else values.ravel()
            rows.append({"target": label, "output": key, "shape": " × ".join(map(str, values.shape)) or "scalar",
                         "dtype": values.dtype.name, "units": units.get(label, {}).get(key, ""),
                         "min": float(finite.min()) if finite.size else None,
                         "max": float(finite.max()) if finite.size else None})
    return pd.DataFrame(rows, columns=["target", "output", "shape", "dtype", "units", "min", "max"])


def provenance_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """The provenance as field/value rows: source, calibration, software, time."""
    source = record.get("source", {})
    rows: list[tuple[str, Any]] = [
        ("source", source.get("path") or source.get("name")),
        ("source shape", " × ".join(map(str, source.get("shape", [])))),
        ("source dtype", source.get("dtype")),
        ("source sha256", f"{source.get('sha256')} ({source.get('sha256_of')})"),
        ("targets", ", ".join(record.get("targets", []))),
        ("time (UTC)", record.get("time")),
    ]
    rows += [(f"calibration: {k}", _plain(v)) for k, v in (record.get("calibration") or {}).items()]
    rows += [(f"software: {k}", v) for k, v in (record.get("software") or {}).items() if v is not None]
    return pd.DataFrame(rows, columns=["field", "value"])


def _rotation_note(view: ReducedView) -> str:
    if view.rotation_fitted:
        curl = ("" if view.curl_fraction is None else f"; curl fraction {view.curl_fraction:.2f}, where 0 is a "
                "confident fit and 0.5 a field of noise")
        return (f"Drawn at the scan/detector rotation the reduction fitted on the CoM maps ({view.rotation_deg:.1f}°"
                f"{', detector axes transposed' if view.transpose else ''}{curl}).")
    return "Drawn at rotation 0°: the file records no fitted rotation, so a large curl means one is needed."


def _plain(value: Any) -> Any:
    return ", ".join(map(str, value)) if isinstance(value, list) else value


def reduced_section(path: Path | str, figures_dir: Path, link: str, *, key: str = "reduced",
                    title: str | None = None) -> Section:
    """The report section of one reduced file. Figures are written to ``figures_dir`` (PNG embedded, SVG
    linked as ``link/NAME.svg`` relative to the page); a figure the file cannot give is a note saying why."""
    path = Path(path)
    results, record = read_reduced(path)
    view = reduced_view(results, record)
    try:
        written = draw_reduced(view, figures_dir)
    except StempressError:  # nothing drawable (e.g. radial profiles only): the notes below say so
        written = []
    pngs = {p.stem: p for p in written if p.suffix == ".png"}
    blocks: list[TableBlock | FigureBlock | NoteBlock] = [TableBlock(
        f"{key}-targets", "Targets", "Every array in the file (one pass over the source), with its range; the "
        "same arrays open in py4DSTEM (py4DSTEM.read) and HyperSpy (hs.load(..., file_format='hspy')).",
        targets_table(results, record))]
    for name, (heading, caption, missing) in FIGURES.items():
        if name in ("dpc_field", "idpc_phase"):
            caption += " " + _rotation_note(view)
        if name in pngs:
            blocks.append(FigureBlock(f"{key}-{name}", heading, caption, pngs[name],
                                      [f"{link}/{name}.svg", f"{link}/{name}.png"]))
        else:
            blocks.append(NoteBlock(f"{heading}: not drawn, {missing}."))
            for suffix in (".png", ".svg"):  # a rebuilt report must not keep an old figure it no longer shows
                (Path(figures_dir) / f"{name}{suffix}").unlink(missing_ok=True)
    if any(label.startswith("radial") for label in results):
        blocks.append(NoteBlock("Radial profiles are listed in the table, not drawn."))
    blocks.append(TableBlock(
        f"{key}-provenance", "Provenance", "What the reduction was computed from and with: the file records it "
        "as JSON in its stempress_provenance attribute (py4DSTEM: root metadata; HyperSpy: original_metadata).",
        provenance_table(record)))
    parameters = {k: v for k, v in record.get("parameters", {}).items() if k not in ("outputs", "units")}
    intro = f"{path.name}: targets {', '.join(results)}" + (f"; parameters {json.dumps(parameters)}"
                                                           if parameters else "") + "."
    return Section(title or f"Reduction: {path.name}", blocks, intro)


def write_reduced_report(path: Path | str, out_dir: Path) -> Path:
    """``out_dir/index.html`` (self-contained) and ``out_dir/figures/*.png|svg`` for one reduced file."""
    out_dir = Path(out_dir)
    section = reduced_section(path, out_dir / FIGURES_DIR, FIGURES_DIR)
    # the benchmark page's recommendation and comparison headings do not apply: sections only
    text = page_html(f"stempress reduction: {Path(path).name}", render_sections([section]))
    return atomic_write(out_dir / REPORT_HTML, lambda p: p.write_text(text, encoding="utf-8"))
