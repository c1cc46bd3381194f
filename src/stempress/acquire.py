"""A live scan as it fills: ``receive`` writes ``ingest``'s outputs from a detector stream (one engine pass, the
same sinks) and hands a ``Snapshot`` of the partial results to ``watch`` about once a second; ``live_scan`` is
the same pass on a thread of its own, iterated for its snapshots, so a notebook can plot the scan while it runs.

Snapshots are taken between blocks by ``sinks.snapshot.SnapshotSink`` (a few scan-sized copies) and consumed
elsewhere (a preview writer's thread, the caller of ``live_scan``): nothing slow runs on the receive path, and a
slow consumer sees the latest snapshot, never a queue of old ones."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stempress.data.calibration import Calibration
from stempress.errors import StempressError
from stempress.events.counting import CountingParams
from stempress.exec.base import Executor
from stempress.ingest import IngestReport, output_sinks, run_outputs
from stempress.live.archive_codec import stream_codec
from stempress.live.receiver import LiveSource, open_live
from stempress.progress import Progress
from stempress.reduce.imaging import default_reducers
from stempress.reduce.protocol import Reducer
from stempress.reduce.sufficiency import parse_targets
from stempress.sinks.reduce import ReducerSink
from stempress.sinks.reduced import ReducedFileSink
from stempress.sinks.snapshot import Snapshot, SnapshotSink
from stempress.store.compress import DEFAULT_CODEC
from stempress.store.reducing import given_calibration

#: Seconds between snapshots: a person watching a scan needs no more.
SNAPSHOT_EVERY_S = 1.0


def receive(source: LiveSource, *, archive: Path | str | None = None, codec: str | None = None,
            chunks: str | tuple[int, ...] | None = None, reduce: Sequence[str] = (),
            reduced: Path | str | None = None, reducers: Sequence[Reducer] | None = None,
            calibration: Calibration | None = None, events: Path | str | None = None,
            event_format: str | None = None, counting: CountingParams | None = None,
            event_inputs: Mapping[str, str] | None = None, watch: Callable[[Snapshot], None] | None = None,
            every: float = SNAPSHOT_EVERY_S, workers: int | None = None, executor: str | Executor | None = None,
            force: bool = False, progress: Progress | None = None,
            event_coder: Executor | None = None) -> IngestReport:
    """``ingest``'s outputs (``archive``, ``reduce`` targets into ``reduced``, ``events``) from ``source`` in one
    pass; with ``watch``, also a ``Snapshot`` every ``every`` seconds and one at the end. The images come from the
    ``reduce`` targets (then the mean pattern is added to them, for the snapshots) or from ``reducers`` (kept in
    memory, no file); ``reduce`` targets without ``reduced`` are reduced in memory too. ``event_coder``: worker
    processes (yours, left open) that entropy-code the events off this process's GIL, as ``stempress live`` gives
    (``sinks.events.stream_coder``; a script keeps its work under ``if __name__ == "__main__":``)."""
    if reducers is not None and reduce:
        raise StempressError("give reducers (objects, in memory) or reduce targets (names), not both")
    if reduce and reduced is None and watch is None:
        raise StempressError("reduce targets without reduced=RED.h5 are only seen by a watcher; give reduced= (or "
                             "watch=, or use live_scan)")
    targets = list(reduce)
    if watch is not None and targets and "mean_pattern" not in {t.kind for t in parse_targets(targets)}:
        targets.append("mean_pattern")  # the snapshots show it; one more column of the fused projection
    if calibration is None and (targets or (reducers is None and watch is not None)):
        calibration = _calibration(source, needed=bool(targets))
    if codec is None:
        codec = _default_codec(source) if archive is not None else DEFAULT_CODEC
    files = archive is not None or reduced is not None or events is not None
    sinks: list[Any] = output_sinks(source, archive=archive, codec=codec, chunks=chunks,
                                    reduce=targets if reduced is not None else (), reduced=reduced,
                                    calibration=calibration, events=events, event_format=event_format,
                                    counting=counting, event_inputs=event_inputs, force=force,
                                    event_coder=event_coder) if files else []
    in_memory = reducers if reducers is not None else (
        [t.reducer(calibration, name=t.label) for t in parse_targets(targets)] if targets and reduced is None else
        default_reducers(calibration) if watch is not None and not targets and calibration is not None else [])
    reducer_sink = next((s.inner for s in sinks if isinstance(s, ReducedFileSink)), None)
    if in_memory:
        reducer_sink = ReducerSink(in_memory, calibration, name="images")
        sinks.append(reducer_sink)
    if watch is not None:
        sinks.append(SnapshotSink(reducer_sink, source, watch, every=every))  # last: it reads the others' results
    if not sinks:
        raise StempressError("nothing to do with the stream: give an output (archive, reduced, events), reducers "
                             "or a watcher of its snapshots")
    return run_outputs(source, sinks, workers=workers, executor=executor, progress=progress)


def _default_codec(source: LiveSource) -> str:
    """The archive codec when the user named none (``live.archive_codec``); a choice other than the usual default
    is recorded in the stream's metadata (the archive's provenance) and said by ``stempress live``."""
    chosen = stream_codec(source.metadata, source.dtype)
    if chosen is None:
        return DEFAULT_CODEC
    source.metadata["archive_codec_default"] = chosen[1]
    return chosen[0]


def _calibration(source: LiveSource, *, needed: bool) -> Calibration | None:
    """The stream's own calibration when it carries a beam centre and BF radius; else an error when reducers need
    one, None when they were only a default."""
    found = Calibration.from_metadata(source.metadata, source.shape[2:])
    if found.bf_radius_px is not None:
        return found
    if needed:
        raise StempressError("reducing a live stream needs the beam centre and bright-field radius before the frames "
                             "arrive; give calibration= (or centre= and bf_radius=), --centre and --bf-radius")
    return None


class LiveScan:
    """A live scan on a thread of its own: iterate it for ``Snapshot`` s (the latest one each time, the final one
    last); ``report`` holds ``IngestReport`` once it ended, ``source`` the stream (its ``account``). Leaving the loop
    early stops the scan (the outputs keep what arrived, marked incomplete)."""

    def __init__(self, source: LiveSource, **options: Any) -> None:
        self.source = source
        self.report: IngestReport | None = None
        self._latest: Snapshot | None = None
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(options,), name="stempress-live-scan", daemon=True)
        self._thread.start()

    def _run(self, options: dict[str, Any]) -> None:
        try:
            self.report = receive(self.source, watch=self._offer, **options)
        except BaseException as exc:  # handed to the iterating thread
            self._error = exc
            self.source.close()  # refused before the pass (an output exists): the detector is not left waiting
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _offer(self, snapshot: Snapshot) -> None:
        with self._cond:
            self._latest = snapshot  # a slow reader skips snapshots; the final one is never replaced
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Snapshot]:
        try:
            while True:
                with self._cond:
                    while self._latest is None and not self._done:
                        self._cond.wait(0.5)
                    snapshot, self._latest = self._latest, None
                    done = self._done
                if snapshot is not None:
                    yield snapshot
                    if snapshot.final:
                        break
                elif done:
                    break
            self._thread.join()
            if self._error is not None:
                raise self._error
        finally:
            if self._thread.is_alive():  # the loop was left early
                self.stop()

    def stop(self, reason: str = "stopped by the caller") -> None:
        """End the scan now: the block in hand is finished and the outputs keep what arrived."""
        self.source.stop(reason)
        self._thread.join()


def live_scan(url: str, scan_shape: tuple[int, int], *, reducers: Sequence[Reducer] | None = None,
              centre: tuple[float, float] | None = None, bf_radius: float | None = None,
              calibration: Calibration | None = None, every: float = SNAPSHOT_EVERY_S, timeout: float = 10.0,
              **options: Any) -> LiveScan:
    """Connect to ``url`` (``merlin://``, ``dectris://`` or ``dectris2://HOST:PORT``) and receive a scan of
    ``scan_shape``, yielding a ``Snapshot`` about every ``every`` seconds::

        for snap in live_scan("merlin://detector:6342", (256, 256), centre=(127.5, 127.5), bf_radius=12):
            show(snap.image("BF"), snap.received)

    ``reducers`` default to BF/ADF/HAADF, CoM and the mean pattern when the calibration (``calibration``, or
    ``centre`` and ``bf_radius``) is known. ``options``: ``receive``'s outputs and settings (``archive=``,
    ``events=``, ``reduce=`` with ``reduced=``, ``workers=``, ...)."""
    source = open_live(url, scan_shape, timeout=timeout)
    try:
        if calibration is None and centre is not None and bf_radius is not None:
            calibration = given_calibration(source, centre=centre, bf_radius=bf_radius)  # type: ignore[arg-type]
        return LiveScan(source, reducers=reducers, calibration=calibration, every=every, **options)
    except BaseException:
        source.close()
        raise


__all__ = ["LiveScan", "Snapshot", "live_scan", "receive"]
