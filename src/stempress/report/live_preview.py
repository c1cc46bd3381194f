"""``--preview DIR``: a live scan's virtual images and mean pattern redrawn as PNGs while it runs.

Why a thread of its own: drawing a figure takes tens of milliseconds, which the receiver must never wait for.
``PreviewWriter`` is a snapshot watcher (``acquire.receive(watch=...)``): it keeps only the latest snapshot and
draws it when it is free, so however slow the drawing, the scan is not held back and no backlog grows. Each PNG
is written under a temporary name and renamed (``atomic_output``), so a viewer reloading it never sees half a
file. Positions without a frame (missing, or not received yet) are NaN and drawn in ``MISSING_COLOR``."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stempress.atomic import atomic_output
from stempress.errors import StempressError
from stempress.sinks.snapshot import Snapshot

MISSING_COLOR = "#ff00ff"
PREVIEW_DPI = 80


class PreviewWriter:
    """Call it with each ``Snapshot``; ``close()`` draws the last one and stops the thread. ``folder`` may exist,
    but PNGs in it from an earlier run are refused unless ``force`` (they are replaced on every redraw)."""

    def __init__(self, folder: Path | str, *, force: bool = False) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise StempressError(f"{self.folder} is a file; give --preview a folder for the PNGs")
        if not force and self.folder.is_dir() and any(self.folder.glob("*.png")):
            raise StempressError(f"{self.folder} already holds PNGs; pass --force to redraw over them, or give "
                                 "--preview a new folder")
        self.drawn = 0
        self.files: list[Path] = []
        self.error: BaseException | None = None
        self._latest: Snapshot | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="stempress-live-preview", daemon=True)
        self._thread.start()

    def __call__(self, snapshot: Snapshot) -> None:
        with self._cond:
            self._latest = snapshot
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                snapshot, self._latest = self._latest, None
                if snapshot is None:
                    return
            try:
                self.files = draw_snapshot(snapshot, self.folder)
                self.drawn += 1
            except Exception as exc:  # a preview must not end the scan; close() reports it
                self.error = exc

    def close(self) -> None:
        """Draw what is pending, then stop; a drawing error is raised here, after the scan's outputs are safe."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self.error is not None:
            raise StempressError(f"--preview {self.folder}: drawing failed: {self.error}") from self.error


def draw_snapshot(snapshot: Snapshot, folder: Path) -> list[Path]:
    """Every 2-D image of ``snapshot`` as ``folder/REDUCER_OUTPUT.png`` (scan images with NaN shown as missing,
    detector patterns as they are); returns the files written."""
    written = []
    scan_shape = snapshot.received.shape
    frames = snapshot.frames
    caption = (f"{frames.get('received', 0)}/{frames.get('expected', 0)} frames, missing so far "
               f"{int(snapshot.received[:snapshot.rows_done].size - snapshot.received[:snapshot.rows_done].sum())}"
               + (" (final)" if snapshot.final else ""))
    for reducer, outputs in snapshot.images.items():
        for key, image in outputs.items():
            if np.ndim(image) != 2:
                continue
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{reducer}_{key}")
            written.append(_draw(np.asarray(image, np.float64), folder / f"{name}.png", f"{reducer}/{key}", caption,
                                 scan=image.shape == scan_shape))
    return written


def _draw(image: np.ndarray, out: Path, title: str, caption: str, *, scan: bool) -> Path:
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["gray" if scan else "inferno"].with_extremes(bad=MISSING_COLOR)
    finite = image[np.isfinite(image)]
    vmin, vmax = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) if finite.size else (0, 1)
    shown = ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-12),
                      interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(caption + ("; magenta: no frame yet or missing" if scan else ""), fontsize=7)
    with atomic_output(out, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=PREVIEW_DPI)
    return out
