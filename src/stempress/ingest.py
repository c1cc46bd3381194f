"""``ingest``: one read of a source feeds every output asked for (archive, reduced images, counted events), each
written atomically, instead of one read per command.

Why: a detector file (or a stream) is read at the disk's speed once; ``compress``, ``reduce`` and ``count`` read it
three times. The outputs are the same files the separate commands write (the same sinks), so a test can compare
them byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stempress.cores import resolve_workers
from stempress.data.base import Dataset4D, check_shape_dtype, nbytes
from stempress.data.calibration import Calibration
from stempress.data.stream import StreamSource
from stempress.engine import run
from stempress.errors import StempressError
from stempress.events.counting import CountingParams, CountReport
from stempress.exec.base import Executor
from stempress.exec.select import make_executor
from stempress.progress import Progress
from stempress.reduce.engine import single_blas_thread
from stempress.sinks.archive import ArchiveResult, ArchiveSink, ArchiveSpec
from stempress.sinks.events import EventSink
from stempress.sinks.reduced import ReducedFileSink
from stempress.sinks.shards import ShardedArchiveSink
from stempress.store.compress import AUTO, DEFAULT_CODEC, resolve_codec
from stempress.store.reducing import source_calibration


@dataclass(frozen=True)
class IngestReport:
    """What one pass wrote: ``bytes_read`` is what the engine took from the source (its size, once)."""

    archive: ArchiveResult | None
    reduced: Path | None
    bytes_read: int
    raw_bytes: int
    seconds: float
    outputs: list[Path] = field(default_factory=list)
    events: CountReport | None = None

    def summary(self) -> str:
        lines = [f"read {self.bytes_read / 1024**3:.3f} GiB once ({self.bytes_read / max(1, self.raw_bytes):.2f}x "
                 f"the cube) in {self.seconds:.2f} s"]
        if self.archive is not None:
            a = self.archive
            lines.append(f"archive {a.path}: {a.codec.name}, ratio {self.raw_bytes / a.file_bytes:.2f}, "
                         + ("parallel direct-chunk" if a.direct else f"filter pipeline ({a.fallback_reason})"))
        if self.reduced is not None:
            lines.append(f"reduced {self.reduced}")
        if self.events is not None:
            lines.append(self.events.summary())
        return "\n".join(lines)


def ingest(source: Dataset4D | StreamSource, *, archive: Path | str | None = None, codec: str = DEFAULT_CODEC,
           chunks: str | tuple[int, ...] | None = None, layout: str = "emd", reduce: Sequence[str] = (),
           reduced: Path | str | None = None, calibration: Calibration | None = None,
           events: Path | str | None = None, event_format: str | None = None, counting: CountingParams | None = None,
           event_inputs: Mapping[str, str] | None = None, workers: int | None = None,
           executor: str | Executor | None = None, force: bool = False,
           progress: Progress | None = None, shards: bool = False) -> IngestReport:
    """Write ``archive`` (as ``compress`` would), the ``reduce`` targets into ``reduced`` (as ``reduce`` would) and
    the electrons as ``events`` (as ``count`` would: counted with ``counting`` first when given, else the frames
    must be counts; ``event_inputs`` go into the counting record) from ONE read of ``source`` (a file source, or
    a stream such as ``live.LiveSource``: then give ``calibration``, as nothing can be measured before the frames
    arrive). Every output is refused before the pass if it exists (unless ``force``). ``shards``: the archive as
    one file per partition plus a master file (as ``compress(shards=True)``)."""
    sinks = output_sinks(source, archive=archive, codec=codec, chunks=chunks, layout=layout, reduce=reduce,
                         reduced=reduced, calibration=calibration, events=events, event_format=event_format,
                         counting=counting, event_inputs=event_inputs, force=force, shards=shards)
    return run_outputs(source, sinks, workers=workers, executor=executor, progress=progress)


def output_sinks(source: Dataset4D | StreamSource, *, archive: Path | str | None = None,
                 codec: str = DEFAULT_CODEC, chunks: str | tuple[int, ...] | None = None, layout: str = "emd",
                 reduce: Sequence[str] = (), reduced: Path | str | None = None,
                 calibration: Calibration | None = None, events: Path | str | None = None,
                 event_format: str | None = None, counting: CountingParams | None = None,
                 event_inputs: Mapping[str, str] | None = None, force: bool = False,
                 shards: bool = False, event_coder: Executor | None = None) -> list[Any]:
    """The sinks of ``ingest``'s outputs (checked, nothing written yet), for a caller that adds sinks of its own to
    the same pass (a live scan's snapshots) before ``run_outputs``. ``event_coder``: worker processes for a
    stream's entropy-coded events (``sinks.events.EventSink``'s ``coder``)."""
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if bool(reduce) != (reduced is not None):
        raise StempressError("--reduce TARGET and --reduced RED.h5 go together; give both or neither")
    if archive is None and reduced is None and events is None:
        raise StempressError("ingest needs at least one output: --archive OUT.h5, --reduce TARGET --reduced RED.h5 "
                             "and/or --events EV.h5")
    if events is None and (counting is not None or event_format is not None):
        raise StempressError("counting options and --event-format shape the events: give --events EV.h5 too")
    _distinct(archive, reduced, events)
    if codec.strip().lower() == AUTO:
        raise StempressError(f"codec auto samples the source before writing, which a live stream cannot offer; give "
                             f"a codec such as {DEFAULT_CODEC}" if not isinstance(source, Dataset4D) else
                             "codec auto benchmarks a sample before the pass, above ingest: resolve it first with "
                             "stempress.bench.recommend.resolve_auto (as `stempress ingest --codec auto` does), or "
                             f"give a codec such as {DEFAULT_CODEC}")
    if not isinstance(source, Dataset4D) and reduced is not None and calibration is None:
        calibration = Calibration.from_metadata(source.metadata, shape[2:])
        if calibration.bf_radius_px is None:
            raise StempressError("reducing a live stream needs the beam centre and bright-field radius before the "
                                 "frames arrive; give --centre ROW,COL and --bf-radius PIXELS")
    sinks: list[Any] = []
    if archive is not None:
        spec = ArchiveSpec(Path(archive), resolve_codec(codec), chunks or "balanced", layout, force=force)
        sinks.append(ShardedArchiveSink(spec) if shards else ArchiveSink(spec))
    if reduced is not None:
        measured = calibration if calibration is not None else source_calibration(source)
        sinks.append(ReducedFileSink(source, list(reduce), reduced, calibration=measured, force=force))
    if events is not None:
        sinks.append(EventSink(events, counting, fmt=event_format, force=force, inputs=event_inputs,
                               coder=event_coder))
    return sinks


def run_outputs(source: Dataset4D | StreamSource, sinks: Sequence[Any], *, workers: int | None = None,
                executor: str | Executor | None = None, progress: Progress | None = None) -> IngestReport:
    """One engine pass of ``source`` through ``sinks`` (``output_sinks``' and any of the caller's; only the
    outputs' results are reported)."""
    consumed = [0]

    def counted(done: int, total: int) -> None:
        consumed[0] = done
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    pool = make_executor(executor, resolve_workers(workers))
    try:
        with single_blas_thread():
            results = run(source, sinks, executor=pool, progress=counted)
    finally:
        if pool is not executor:  # an executor the caller gave stays theirs to close
            pool.close()
    seconds = time.perf_counter() - started
    written = {s.name: r for s, r in zip(sinks, results, strict=True)}  # the engine's names, distinct in a run
    archive_result = written.get("archive")
    reduced_path = written.get("reduced")
    event_report = written.get("events")
    outputs = [p for p in (archive_result.path if archive_result else None, reduced_path) if p is not None]
    outputs += event_report.files if event_report is not None else []
    return IngestReport(archive_result, reduced_path, consumed[0], nbytes(source), seconds, outputs, event_report)


def _distinct(*outputs: Path | str | None) -> None:
    """Two outputs of one pass cannot share a file (nor a raw_csr set's binary files)."""
    from stempress.events.libertem import raw_csr_files

    seen: set[Path] = set()
    for out in (Path(p) for p in outputs if p is not None):
        files = [out, *raw_csr_files(out).values()] if out.suffix.lower() == ".toml" else [out]
        for path in (f.resolve() for f in files):
            if path in seen:
                raise StempressError(f"{out}: two outputs of this ingest are the same file; give each its own name")
            seen.add(path)


__all__ = ["IngestReport", "ingest", "output_sinks", "run_outputs"]
