"""Choose the least burdensome representation that still answers the named inferences (part 2, principle 4).

``cost_table(source, ["bf", "com"], tolerance=0.01)`` lists candidate representations with their bytes, the
reduction against the raw cube, whether each recovers each target (exactly / within tolerance / not, checked by
computing the target from it and from the raw data on the same, seeded sample of scan positions), what each
assumes, and the errors; ``plan`` adds the choice: the fewest bytes among those whose checks all pass. The
table's ``attrs["provenance"]`` records source, hash, parameters, calibration, versions and time (principle 5).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stempress.data.base import Dataset4D, nbytes
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.provenance import provenance
from stempress.reduce.calibration import Calibration
from stempress.reduce.sufficiency import (
    EXACTLY,
    NOT,
    BinnedSource,
    Check,
    Target,
    gather,
    judge,
    parse_targets,
    sample_positions,
)
from stempress.store.reducing import compute, source_calibration

log = logging.getLogger("stempress")

#: Lossless codecs tried for the "best lossless" row (the smallest file wins); unavailable ones are skipped.
LOSSLESS_CODECS = ("blosc_zstd", "bitshuffle_zstd", "zstd_9")
#: Hash the whole file / cube up to this size, else only its first this many bytes.
Tolerance = float | Mapping[str, float]


@dataclass
class _Row:
    representation: str
    bytes: int
    assumes: tuple[str, ...]
    checks: list[Check]


def cost_table(source: Dataset4D, targets: str | Sequence[str | Target], tolerance: Tolerance = 0.01, *,
               calibration: Calibration | None = None, max_positions: int | None = 1024, seed: int = 0,
               codecs: Sequence[str] = LOSSLESS_CODECS, bins: Sequence[int] = (2, 4),
               events: bool | None = None, executor: Executor | None = None) -> pd.DataFrame:
    """One row per candidate representation; see the module docstring. ``tolerance``: the largest relative RMS
    error accepted, one number or one per target label. Checks run on all positions up to ``max_positions``, else
    on a random sample of that many (``seed``). ``events=None`` adds the event row when the data are counts.
    ``executor`` (e.g. a ``DaskExecutor``; the caller closes it) runs the passes over the cube: the lossless
    candidates' compression and the targets computed from the frames; the table is the same on any executor."""
    chosen = parse_targets(targets)
    tol = _tolerances(chosen, tolerance)
    cal = calibration if calibration is not None else source_calibration(source)
    positions = sample_positions(source.shape, max_positions, seed)
    view = gather(source, positions)
    det = tuple(source.shape[2:])
    reference = compute(chosen, view, cal, executor=executor)
    excluded = reference.nonfinite.summary() if reference.nonfinite is not None else None
    if reference.nonfinite is not None:
        log.warning("%s: %s (in the sampled frames)", source.name, reference.nonfinite.sentence())

    def from_frames(frames: Dataset4D, scale: int = 1) -> list[Check]:
        got = compute(chosen, frames, cal, scale, executor=executor)
        return [judge(t.label, got[t.label], reference[t.label], tol[t.label]) for t in chosen]

    raw_bytes = nbytes(source)
    rows = [_Row(f"raw {np.dtype(source.dtype).name} cube", raw_bytes, (), from_frames(view))]
    rows += _lossless_rows(source, positions, codecs, from_frames, executor)
    if events or (events is None and _is_counts(source)):
        try:
            rows += [_events_row(source, positions, from_frames), _entropy_row(source, positions, from_frames)]
        except StempressError as exc:
            if events:  # asked for: the reason is the answer
                raise
            log.warning("%s: no event rows: %s", source.name, exc)  # e.g. negative values in integrating data
    for b in bins:
        if det[0] // b and det[1] // b:
            binned = BinnedSource(view, int(b))
            size = int(np.prod(source.shape[:2])) * binned.shape[2] * binned.shape[3] * 4
            rows.append(_Row(f"binned {b}x{b} (float32 means)", size, ("mean-binned detector",),
                             from_frames(binned, int(b))))
    summaries = [_summary_row(t, chosen, source.shape, cal, reference, tol) for t in chosen]
    rows += summaries
    if len(chosen) > 1:
        rows.append(_Row("task summaries: " + ", ".join(t.label for t in chosen), sum(r.bytes for r in summaries),
                         _union(t.assumes for t in chosen),
                         [judge(t.label, reference[t.label], reference[t.label], tol[t.label]) for t in chosen]))
    table = _frame(rows, chosen, raw_bytes)
    table.attrs["provenance"] = provenance(source, chosen, tol, cal, max_positions=max_positions, seed=seed,
                                           codecs=list(codecs), bins=list(bins), sampled=positions is not None)
    if excluded is not None:
        table.attrs["provenance"]["excluded"] = excluded
    return table


def plan(source: Dataset4D, targets: str | Sequence[str | Target], tolerance: Tolerance = 0.01,
         **options: Any) -> tuple[pd.DataFrame, str]:
    """The cost table and the name of the smallest representation whose checks all pass (raw always does)."""
    table = cost_table(source, targets, tolerance, **options)
    passing = table[table["passes"]]
    if passing.empty:  # cannot happen while raw is a row; refuse rather than pick something that fails
        raise StempressError("no representation passes every check; loosen the tolerance")
    return table, str(passing.sort_values("bytes", kind="stable").iloc[0]["representation"])


def write_representation(source: Dataset4D, representation: str, targets: str | Sequence[str | Target],
                         out: Path, *, force: bool = False, calibration: Calibration | None = None,
                         executor: Executor | None = None) -> Path:
    """Write the representation a plan chose (its cost-table label) to ``out``: the plan's ``--write``
    (task summaries with ``calibration``, by default the source's own or measured; ``executor`` runs the
    compression or the reduction, as for ``compress`` and ``reduce``)."""
    from stempress.events.entropy_file import write_entropy_events
    from stempress.events.libertem import write_raw_csr
    from stempress.store.compress import compress
    from stempress.store.reduced import reduce_to_file
    from stempress.store.write import write_hdf5

    out = Path(out)
    chosen = parse_targets(targets)
    own = [t for t in chosen if f"{t.label} (reducer output)" == representation]
    if representation.startswith("raw "):
        return compress(source, out, codec="none", force=force, executor=executor).path
    if representation.startswith("lossless "):
        return compress(source, out, codec=representation.split()[1], force=force, executor=executor).path
    if representation.startswith("entropy-coded events"):
        return write_entropy_events(source, out, force=force)  # with the calibration and provenance
    if representation.startswith("events (CSR)"):
        return write_raw_csr(source, out.with_suffix(".toml"), force=force)
    if representation.startswith("binned "):
        scale = int(representation.split()[1].split("x")[0])
        binned = BinnedSource(source, scale, name=f"{source.name}-binned{scale}", metadata=dict(source.metadata))
        return write_hdf5(binned, out, force=force)
    if representation.startswith("task summaries") or own:
        return reduce_to_file(source, own or chosen, out, force=force, calibration=calibration, executor=executor)
    raise StempressError(f"representation {representation!r} is not one a plan writes; pick a cost-table row")


# -- rows --------------------------------------------------------------------------------------------------
def _lossless_rows(source: Dataset4D, positions: np.ndarray | None, codecs: Sequence[str],
                   from_frames: Callable[..., list[Check]], executor: Executor | None = None) -> list[_Row]:
    """Compress with each codec into a temp folder, keep the smallest file, and check it by reading it back."""
    from stempress.data.open import open_source
    from stempress.store.compress import compress, direct_codecs

    usable = [c for c in codecs if c in direct_codecs()]
    if not usable:
        return []
    with tempfile.TemporaryDirectory(prefix="stempress-plan-") as folder:
        reports = [compress(source, Path(folder) / f"{c}.h5", codec=c, executor=executor) for c in usable]
        best = min(reports, key=lambda r: r.file_bytes)
        with open_source(best.path) as back:
            checks = from_frames(gather(back, positions))
    return [_Row(f"lossless {best.codec}", int(best.file_bytes), (), checks)]


def _events_row(source: Dataset4D, positions: np.ndarray | None,
                from_frames: Callable[..., list[Check]]) -> _Row:
    from stempress.data.events import Events, EventsSource

    events = Events.from_source(source)
    return _Row("events (CSR)", events.nbytes, ("integer counts",),
                from_frames(gather(EventsSource(events), positions)))


def _entropy_row(source: Dataset4D, positions: np.ndarray | None,
                 from_frames: Callable[..., list[Check]]) -> _Row:
    """The counts through the Poisson-model entropy code, read back from the real file it writes."""
    from stempress.data.entropy import EntropyCodedSource, write_entropy_coded

    with tempfile.TemporaryDirectory(prefix="stempress-plan-") as folder:
        path = write_entropy_coded(source, Path(folder) / "events.h5")
        with EntropyCodedSource(path) as back:
            checks = from_frames(gather(back, positions))
        size = path.stat().st_size
    return _Row("entropy-coded events (Poisson model)", int(size), ("integer counts",), checks)


def _summary_row(own: Target, chosen: list[Target], shape: tuple[int, int, int, int], cal: Calibration,
                 reference: dict[str, dict[str, np.ndarray]], tol: dict[str, float]) -> _Row:
    """A reducer output stored alone: its own inference, nothing else (not computable: error NaN)."""
    checks = [judge(t.label, reference[t.label] if t == own else None, reference[t.label], tol[t.label])
              for t in chosen]
    return _Row(f"{own.label} (reducer output)", own.summary_nbytes(shape, cal), own.assumes, checks)


def _frame(rows: list[_Row], chosen: list[Target], raw_bytes: int) -> pd.DataFrame:
    records = []
    for row in rows:
        worst = _worst(c.rel_rms for c in row.checks)
        record: dict[str, Any] = {
            "representation": row.representation, "bytes": int(row.bytes),
            "reduction": raw_bytes / row.bytes if row.bytes else math.inf,
            "recovers": "; ".join(f"{c.target}: {c.recovers}" for c in row.checks),
            "assumes": ", ".join(row.assumes) or "-",
            "error": worst, "passes": all(c.recovers != NOT for c in row.checks)}
        for c in row.checks:
            record[f"recovers[{c.target}]"] = c.recovers
            record[f"rel_rms[{c.target}]"] = c.rel_rms
            record[f"max_abs[{c.target}]"] = c.max_abs
        records.append(record)
    return pd.DataFrame.from_records(records)


# -- helpers -----------------------------------------------------------------------------------------------
def _worst(errors: Any) -> float:
    """The largest error, NaN (not computable) when any target is: whatever order the targets came in."""
    values = list(errors)
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=0.0)


def _tolerances(chosen: list[Target], tolerance: Tolerance) -> dict[str, float]:
    if isinstance(tolerance, Mapping):
        missing = [t.label for t in chosen if t.label not in tolerance]
        if missing:
            raise StempressError(f"no tolerance given for target(s) {', '.join(missing)}")
        tol = {t.label: float(tolerance[t.label]) for t in chosen}
    else:
        tol = {t.label: float(tolerance) for t in chosen}
    bad = [k for k, v in tol.items() if not v >= 0]
    if bad:
        raise StempressError(f"tolerances must be >= 0 (relative RMS error); check {', '.join(bad)}")
    return tol


def _is_counts(source: Dataset4D) -> bool:
    return np.dtype(source.dtype).kind in "ui"


def _union(groups: Any) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out += [g for g in group if g not in out]
    return tuple(out)


# -- provenance --------------------------------------------------------------------------------------------
__all__ = ["EXACTLY", "LOSSLESS_CODECS", "cost_table", "plan", "provenance", "write_representation"]
