"""``reduce``: the reduce targets of a source computed in one engine pass and written as the reduced file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stempress.atomic import check_new_output
from stempress.data.base import Dataset4D
from stempress.engine import run
from stempress.progress import Progress
from stempress.reduce.calibration import Calibration
from stempress.reduce.engine import single_blas_thread
from stempress.reduce.sufficiency import Target
from stempress.sinks.reduced import ReducedFileSink
from stempress.store.reducing import source_calibration


def reduce_to_file(source: Dataset4D, targets: str | Sequence[str | Target], out: Path | str, *,
                   force: bool = False, progress: Progress | None = None, calibration: Calibration | None = None,
                   executor: Any = None) -> Path:
    """Compute every target in one pass (``engine.run``) and write the reduced file, whole or not at all.
    ``calibration`` defaults to ``source_calibration(source)``. NaN or infinite values in float frames are taken
    as 0 (a dead-pixel mask); the file's provenance (``excluded``) and a note say how many and where."""
    if calibration is None:
        check_new_output(Path(out), force)  # an existing file is refused before the calibration is measured
        calibration = source_calibration(source)
    sink = ReducedFileSink(source, targets, out, calibration=calibration, force=force)
    with single_blas_thread():
        (path,) = run(source, [sink], executor=executor, progress=progress)
    return path
