"""report.html: one self-contained page (figures as base64 PNG, tables as HTML, CSS inline, no JavaScript).

Self-contained so it can be mailed, attached to a lab notebook or opened from a USB stick: nothing is
fetched, and the only links are relative ones to the CSV/Markdown/SVG files beside it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from stempress.bench.results import atomic_write
from stempress.report.tables import display_frame, numeric_columns


@dataclass
class TableBlock:
    """A table with its caption and the files it was written to (paths relative to the page)."""

    key: str
    title: str
    caption: str
    frame: pd.DataFrame
    files: list[str] = field(default_factory=list)
    collapsed: bool = False


@dataclass
class FigureBlock:
    """A figure: the PNG is embedded, the SVG linked."""

    key: str
    title: str
    caption: str
    png: Path
    files: list[str] = field(default_factory=list)


@dataclass
class NoteBlock:
    """Why something the reader expects is not there."""

    text: str


@dataclass
class Section:
    title: str
    blocks: list[TableBlock | FigureBlock | NoteBlock] = field(default_factory=list)
    intro: str = ""


@dataclass
class Page:
    title: str
    facts: list[tuple[str, str]]
    notes: list[str]
    recommendations: list[Any]
    findings: list[str]
    sections: list[Section]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:1.5rem 2rem 4rem;color:#1d2430;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{border-bottom:2px solid #d8dee8;padding-bottom:.2rem;margin-top:2.4rem}
h3{margin:1.6rem 0 .4rem}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;font-size:.9rem;background:#f5f7fa;
padding:.8rem 1rem;border-radius:6px}.facts dt{font-weight:600;color:#4a5568}.facts dd{margin:0;word-break:break-word}
.notes{background:#fff8e1;border-left:4px solid #f0b400;padding:.6rem 1rem;border-radius:4px}
.note{color:#7a5b00;font-style:italic}
.recs{display:grid;grid-template-columns:repeat(auto-fit,minmax(270px,1fr));gap:1rem}
.rec{border:1px solid #d8dee8;border-radius:8px;padding:.8rem 1rem;background:#fbfcfe}
.rec h3{margin:0 0 .3rem;font-size:1.05rem;text-transform:capitalize}.rec .method{font-size:1.15rem;font-weight:700}
.rec .nums{font-variant-numeric:tabular-nums;margin:.3rem 0}.rec p{font-size:.86rem;margin:.3rem 0}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0}
th,td{border:1px solid #d8dee8;padding:.25rem .5rem;vertical-align:top}th{background:#eef2f7;text-align:left}
tr:nth-child(even) td{background:#f9fafc}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
figure{margin:1rem 0 2rem}figure img{max-width:100%;height:auto;border:1px solid #e2e8f0}
figcaption,.caption{font-size:.88rem;color:#4a5568;margin:.3rem 0}.files{font-size:.8rem;color:#718096}
details summary{cursor:pointer;font-weight:600;margin:.4rem 0}
"""


def _text(value: Any) -> str:
    return escape(str(value), quote=True)


def _files(files: list[str]) -> str:
    if not files:
        return ""
    links = " · ".join(f'<a href="{_text(f)}">{_text(Path(f).name)}</a>' for f in files)
    return f'<div class="files">files: {links}</div>'


def html_table(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table, numbers right-aligned, every cell escaped."""
    shown = display_frame(frame)
    right = numeric_columns(frame)
    head = "".join(f"<th>{_text(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = "".join(f'<td class="num">{_text(v)}</td>' if c in right else f"<td>{_text(v)}</td>"
                        for c, v in zip(shown.columns, row, strict=True))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _block(block: TableBlock | FigureBlock | NoteBlock) -> str:
    if isinstance(block, NoteBlock):
        return f'<p class="note">{_text(block.text)}</p>'
    if isinstance(block, FigureBlock):
        return (f'<figure id="{_text(block.key)}"><h3>{_text(block.title)}</h3>'
                f'<img src="{png_data_uri(block.png)}" alt="{_text(block.title)}">'
                f"<figcaption>{_text(block.caption)}</figcaption>{_files(block.files)}</figure>")
    caption = f'<p class="caption">{_text(block.caption)}</p>' if block.caption else ""
    table = html_table(block.frame) if not block.frame.empty else '<p class="note">(no rows)</p>'
    inner = f"{caption}{table}{_files(block.files)}"
    if block.collapsed:
        inner = f"<details><summary>show {len(block.frame)} rows</summary>{inner}</details>"
    return f'<section id="{_text(block.key)}"><h3>{_text(block.title)}</h3>{inner}</section>'


def _recommendation(rec: Any) -> str:
    alternatives = getattr(rec, "alternatives", []) or []
    alt = f"<p>alternatives: {_text(', '.join(map(str, alternatives)))}</p>" if alternatives else ""
    return (f'<div class="rec"><h3>{_text(rec.use_case)}</h3><div class="method">{_text(rec.codec)}</div>'
            f"<div>chunking {_text(rec.chunking)} (<code>{_text(rec.method)}</code>)</div>"
            f'<div class="nums">ratio {rec.ratio:.2f}x · write {rec.write_gibs:.3g} GiB/s · '
            f"read {rec.read_gibs:.3g} GiB/s</div><p>{_text(rec.why)}</p>{alt}</div>")


def run_facts(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """The machine, protocol and versions a reader needs to judge the numbers, from metadata.json."""
    packages = metadata.get("packages", {}) or {}
    libraries = metadata.get("codec_libraries", {}) or {}
    cores = metadata.get("cpu_cores_logical")
    usable = metadata.get("cpu_cores_usable")
    datasets = metadata.get("datasets") or []
    facts = [
        ("date", metadata.get("date")),
        ("stempress", packages.get("stempress")),
        ("protocol", metadata.get("protocol")),
        ("HDF5 layout", layout_fact(metadata)),
        ("runs", metadata.get("runs")),
        ("seed", metadata.get("seed")),
        ("time limit (s)", metadata.get("time_limit_s")),
        ("warm-up", metadata.get("warmup")),
        ("CPU", metadata.get("cpu_model")),
        ("cores", None if cores is None else f"{cores} logical, {usable} usable"),
        ("memory (GiB)", metadata.get("memory_total_gib")),
        ("Blosc threads", metadata.get("blosc_nthreads")),
        ("platform", metadata.get("platform")),
        ("Python", metadata.get("python")),
        ("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if k != "stempress") or None),
        ("HDF5", libraries.get("hdf5")),
        ("c-blosc2", libraries.get("c-blosc2")),
        ("datasets", ", ".join(f"{d.get('name')} {tuple(d.get('shape', ()))} {d.get('dtype')}" for d in datasets)
         or None),
        ("command", " ".join(map(str, metadata.get("command_line", []))) or None),
    ]
    return [(k, str(v)) for k, v in facts if v is not None and v != ""]


def layout_fact(metadata: dict[str, Any]) -> str | None:
    """Where the measured HDF5 files held the cube: the ratios depend on it by a few kB per file."""
    if not metadata:
        return None
    layout, path = metadata.get("layout"), metadata.get("dataset_path")
    if layout is None:
        return ("not recorded: results written before the layout was, with the cube at the EMD 1.0 path "
                "/version_1/data/datacubes/datacube_000/data")
    told = {"study": "as the study's script writes it", "emd": "the EMD 1.0 path, as the study's cubes are stored"}
    return f"{layout}: dataset {path} ({told.get(layout, 'as chosen')})"


def render_sections(sections: list[Section]) -> str:
    """Each section's heading (anchored ``s<i>`` for a table of contents), intro and blocks."""
    return "".join(f'<h2 id="s{i}">{_text(s.title)}</h2>' + (f"<p>{_text(s.intro)}</p>" if s.intro else "")
                   + "".join(_block(b) for b in s.blocks) for i, s in enumerate(sections))


def page_html(title: str, body: str) -> str:
    """A self-contained page: the shared style, the title as heading, then ``body``."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_text(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_text(title)}</h1>{body}</body></html>\n")


def render(page: Page) -> str:
    """The whole page as one string."""
    facts = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in page.facts)
    notes = ("<div class=\"notes\"><strong>Notes</strong><ul>" + "".join(f"<li>{_text(n)}</li>" for n in page.notes)
             + "</ul></div>") if page.notes else ""
    recs = ('<div class="recs">' + "".join(_recommendation(r) for r in page.recommendations) + "</div>"
            if page.recommendations else '<p class="note">No recommendation could be made (see notes).</p>')
    findings = ("<ul>" + "".join(f"<li>{_text(f)}</li>" for f in page.findings) + "</ul>"
                if page.findings else '<p class="note">No comparison with the study (see notes).</p>')
    toc = "".join(f'<li><a href="#s{i}">{_text(s.title)}</a></li>' for i, s in enumerate(page.sections))
    return page_html(page.title, f"<dl class=\"facts\">{facts}</dl>{notes}"
                     f"<h2>Recommendations</h2>{recs}<h2>Ours vs the study</h2>{findings}"
                     f"<h2>Contents</h2><ul>{toc}</ul>{render_sections(page.sections)}")


def write_html(path: Path, page: Page) -> Path:
    """Write the page whole or not at all."""
    text = render(page)
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
