"""Command line: parse, call the Python API, render progress and tables. No logic lives here."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stempress.codecs.chunking import parse_chunkings
from stempress.errors import StempressError
from stempress.sizes import human_size

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure, store and reduce 4D-STEM data.", pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)

#: Seconds between plain progress lines when the output is not a terminal (a log file, CI, nohup).
PLAIN_PROGRESS_EVERY_S = 30.0


# -- progress ------------------------------------------------------------------------------------------------
class ProgressReporter:
    """``update(done, total, last="")`` for a long step: a Rich bar on a terminal, plain lines elsewhere.

    Nothing is drawn before the first update, so a command that refuses its input (checked before the work
    starts) shows no bar above its one-line error. Off a terminal a line is printed at the first update, then
    at most every ``PLAIN_PROGRESS_EVERY_S`` seconds, and when the step completes. ``unit`` is ``items``
    (done/total) or ``bytes`` (sizes, and the rate on a bar). Thread-safe: writers report from worker threads.
    """

    def __init__(self, label: str, unit: str = "items", transient: bool = False) -> None:
        self.label, self.unit, self.transient = label, unit, transient
        self._lock = threading.Lock()
        self._bar = None
        self._task = None
        self._started = time.monotonic()
        self._last_line = -float("inf")
        self._finished = False
        self._rates: tuple[float, int, float] | None = None
        self._first: tuple[float, float] | None = None

    def show_rates(self, per_frame: float, workers: int, bytes_per: float = 1.0) -> None:
        """Show frames/s, GB/s (raw, 10^9) and the workers beside the bar: ``per_frame`` units of progress make a
        frame, one unit is ``bytes_per`` bytes (averages since the first update)."""
        self._rates = (float(per_frame), int(workers), float(bytes_per))

    def _rate_text(self, done: float) -> str:
        """Rates since the first update (not since the bar was made: a cluster's start is not work)."""
        per_frame, workers, bytes_per = self._rates  # type: ignore[misc]
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        seconds, gained = now - self._first[0], done - self._first[1]
        if seconds <= 0 or per_frame <= 0:
            return f"{workers} workers"
        return (f"{gained / per_frame / seconds:,.0f} frames/s, {gained * bytes_per / seconds / 1e9:.3g} GB/s, "
                f"{workers} workers")

    def __call__(self, done: float, total: float | None = None, last: str = "") -> None:
        stop_if_interrupted()
        with self._lock:
            if not last and self._rates is not None:
                last = self._rate_text(done)
            if console.is_terminal:
                self._draw(done, total, last)
            else:
                self._print(done, total, last)

    def _draw(self, done: float, total: float | None, last: str) -> None:
        if self._bar is None:
            self._bar = self._make_bar()
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, last="")
        self._bar.update(self._task, completed=done, total=total, last=last)

    def _make_bar(self):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        count = ([DownloadColumn(binary_units=True), TransferSpeedColumn()] if self.unit == "bytes"
                 else [MofNCompleteColumn()])
        return Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), *count, TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=console, transient=self.transient)

    def _print(self, done: float, total: float | None, last: str) -> None:
        now = time.monotonic()
        complete = total is not None and done >= total
        if self._finished or not (complete or now - self._last_line >= PLAIN_PROGRESS_EVERY_S):
            return
        self._last_line, self._finished = now, complete
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - self._started))
        console.print(f"{self.label}: {self._amount(done, total)} {elapsed}" + (f" {last}" if last else ""),
                      markup=False, highlight=False, soft_wrap=True)

    def _amount(self, done: float, total: float | None) -> str:
        share = f" ({100 * done / total:.0f}%)" if total else ""
        if self.unit == "bytes":
            return f"{human_size(done)}" + (f" of {human_size(total)}" if total else "") + share
        return f"{done:g}" + (f"/{total:g}" if total is not None else "") + share

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def progress_reporter(label: str, *, unit: str = "items", transient: bool = False) -> Iterator[ProgressReporter]:
    """The one progress display of every command (see ``ProgressReporter``); stopped however the block ends."""
    reporter = ProgressReporter(label, unit, transient)
    try:
        yield reporter
    finally:
        reporter.close()


def parse_scan_shape(text: str | None) -> tuple[int, int] | None:
    """'256x256' -> (256, 256)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise StempressError(f"--scan-shape {text!r} is not a scan shape; write it as ROWSxCOLUMNS, e.g. 256x256")
    return int(parts[0]), int(parts[1])


def parse_centre(text: str | None) -> tuple[float, float] | None:
    """'63.5,64' -> (63.5, 64.0): the beam centre (detector row, column) in pixels."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        y, x = (float(p) for p in parts)
    except ValueError:
        raise StempressError(f"--centre {text!r} is not a detector position; write it as ROW,COLUMN in pixels, "
                             "e.g. 63.5,64") from None
    return y, x


def cli_calibration(cube, centre: str | None, bf_radius: float | None):
    """The calibration the user gave with --centre / --bf-radius, the rest from the source; None if neither."""
    if centre is None and bf_radius is None:
        return None
    from stempress.store.reducing import source_calibration

    return source_calibration(cube, centre=parse_centre(centre), bf_radius=bf_radius)


@app.command()
def bench(
    sources: Annotated[
        list[str] | None, typer.Argument(help="Files to benchmark (EMD/HDF5, NXmx master, .mib, .npy).")
    ] = None,
    suite: Annotated[str | None, typer.Option(help="Built-in synthetic suite: paper-like or smoke.")] = None,
    methods: Annotated[str, typer.Option(help="paper, all, or codec names separated by commas.")] = "paper",
    chunks: Annotated[str, typer.Option(help="paper, or chunkings/shapes: balanced,16x16x128x128")] = "paper",
    paths: Annotated[str, typer.Option(help="filter (HDF5's one-thread pipeline, the study's), parallel, or both: "
                                       "filter,parallel")] = "filter",
    workers: Annotated[int | None, typer.Option(help="Threads of the parallel path (default: all usable cores).")]
    = None,
    runs: Annotated[int, typer.Option(min=1, help="Runs of the whole grid (the study's protocol: --runs 10).")]
    = 2,
    protocol: Annotated[str, typer.Option(help="warm (the study's: page cache) or cold (fsync + evict).")] = "warm",
    layout: Annotated[str, typer.Option(help="Where each HDF5 test file holds the cube: study (dataset 'data' at "
                                        "the root, as the study's script: its ratios to the byte) or emd (the "
                                        "EMD 1.0 path; a few kB of groups more per file).")] = "study",
    out: Annotated[Path | None, typer.Option(help="Results folder (default results/bench-DATE-TIME).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where the test files are written (default: --out).")] = None,
    time_limit: Annotated[
        float, typer.Option(help="Seconds allowed per write or read before a method is skipped.")
    ] = 60.0,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside HDF5 sources.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the randomised order.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite results already in --out.")] = False,
    paper_dir: Annotated[Path | None, typer.Option(help="Folder with the study's statistics.csv and "
                                                   "dataset_inventory.csv to compare with (default: the study's "
                                                   "published tables, shipped with stempress).")] = None,
) -> None:
    """Benchmark lossless codecs: write, read back, verify, time. No arguments: the paper-like suite."""
    from stempress.atomic import exclusive_folder
    from stempress.bench.api import check_protocol, default_results_folder
    from stempress.bench.measure import parse_paths
    from stempress.report.bench import run_bench_with_report

    check_protocol(protocol)  # before the results folder is made
    out = out or default_results_folder()
    chosen_chunkings, chosen_paths, scan = parse_chunkings(chunks), parse_paths(paths), parse_scan_shape(scan_shape)
    with saying_new_folders(folder=out), exclusive_folder(out), progress_reporter("benchmark") as bar:

        def show(event) -> None:
            last = ""
            if event.row is not None:
                r = event.row
                last = f"{r['dataset']} {r['method']}: " + (
                    f"{r['compression_ratio']:.2f}x" if r["status"] == "ok" else r["status"])
            bar(event.done, event.total, last or event.message)

        report = run_bench_with_report(
            sources=sources or [], suite=suite, methods=methods, chunkings=chosen_chunkings,
            paths=chosen_paths, workers=workers, runs=runs,
            protocol=protocol, layout=layout, out=out, workdir=workdir, time_limit_s=time_limit, dataset=dataset,
            scan_shape=scan, seed=seed, force=force, paper_dir=paper_dir, on_progress=show,
        )
    if report.nothing_measured:
        render_frame(report.problems_table, "Cells without a number")
    else:
        render_summary(report.summary)
        for line in report.problems:
            errors.print(f"[yellow]{line}[/]")
    console.print(f"results: {report.out}")
    if report.report is not None:
        console.print(f"report: {report.report}")
    if report.nothing_measured:
        raise StempressError(report.nothing_measured)
    if report.errors:
        raise StempressError(f"{report.errors} measurement(s) failed (see 'reason' in {report.out}/results.csv)")


def render_frame(frame, title: str) -> None:
    """Any small table as text, one column per field."""
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


def render_summary(summary) -> None:
    table = Table(title="Mean over datasets (per-dataset means of the runs)")
    paths = "path" in summary.columns and (summary["path"] == "parallel").any()
    table.add_column("method", no_wrap=True, min_width=14)
    table.add_column("chunking", no_wrap=True, min_width=12)
    if paths:
        table.add_column("path", no_wrap=True)
    for column in ("ratio", "write GiB/s", "read GiB/s", "CV w %", "CV r %"):
        table.add_column(column, justify="right")
    for row in summary.itertuples():
        labels = [row.codec, row.chunking, *([row.path] if paths else [])]
        table.add_row(*labels, f"{row.ratio:.2f}", f"{row.write_gibs:.3f}", f"{row.read_gibs:.3f}",
                      f"{row.write_cv_percent:.1f}", f"{row.read_cv_percent:.1f}")
    console.print(table)


@app.command()
def compress(
    source: Annotated[str, typer.Argument(help="Any source: EMD/HDF5, NXmx master, .mib, .npy, synthetic:...")],
    out: Annotated[Path, typer.Argument(help="Output HDF5 file.")],
    codec: Annotated[str, typer.Option(help="Codec name (stempress codecs), auto (benchmark a sample), or "
                                       "entropy_poisson (integer counts entropy-coded: the smallest lossless file "
                                       "for counted electrons, read back by every stempress command).")]
    = "blosc_zstd",
    chunks: Annotated[str | None, typer.Option(help="Chunking: balanced (default), real_space, single_frame or "
                                               "16x16x128x128; for entropy_poisson its scan rows set the coded "
                                               "chunks (default about 8 MiB of frames).")] = None,
    workers: Annotated[int | None, typer.Option(help="Compression threads, processes for entropy_poisson "
                                                "(default: all usable cores).")] = None,
    layout: Annotated[str, typer.Option(help="emd (py4DSTEM/emdfile layout with calibration) or plain (HDF5 "
                                        "codecs; entropy_poisson has its own layout, with the calibration).")]
    = "emd",
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Workers compress the chunks; this "
                                             "process writes the one file.")] = None,
    shards: ShardsOption = False,
) -> None:
    """Compress a cube into a standard HDF5 file on all cores, with per-chunk checksums; never a half file."""
    from stempress.data.open import scan_shape_note
    from stempress.store.compress import AUTO
    from stempress.store.compress import compress as compress_cube

    if codec.strip().lower() == AUTO:  # benchmark a sample first: the bench machinery loads only for auto
        from stempress.bench.recommend import compress_auto as compress_cube

    chunking = parse_chunkings(chunks) if chunks is not None else [None]
    if len(chunking) != 1:
        raise StempressError(f"--chunks {chunks!r}: give one chunking, e.g. balanced or 16x16x128x128")
    with saying_new_folders(out), dask_executor(dask) as executor, \
            open_cli_source(source, dataset, scan_shape) as cube, progress_reporter("compress", unit="bytes") as bar:
        show_rates(bar, cube, executor, workers)
        report = compress_cube(cube, out, codec=codec, chunks=chunking[0], workers=workers, layout=layout,
                               force=force, progress=bar, executor=executor, shards=shards)
        note = scan_shape_note(cube)
    if report.chosen_why:
        console.print(report.chosen_why, highlight=False, soft_wrap=True)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    warn([note] if note else [])


# -- counting options, shared by count and ingest --events --------------------------------------------------
ThresholdUnit = Annotated[str, typer.Option(help="adu, or sigma (multiples of --read-noise).")]
ReadNoise = Annotated[str | None, typer.Option(help="Read-noise sigma in ADU for --threshold-unit sigma: a number, a "
                                               ".npy or file.h5:/dataset (det_y, det_x).")]
Dark = Annotated[str, typer.Option(help="Dark reference in ADU: a number, a .npy or file.h5:/dataset (det_y, det_x).")]
Gain = Annotated[str, typer.Option(help="Gain in ADU per electron: a number, a .npy or file.h5:/dataset "
                                   "(det_y, det_x).")]
Method = Annotated[str, typer.Option(help="pixel (round each hit pixel to electrons) or cluster (one electron per "
                                     "connected cluster, at its centroid).")]
Connectivity = Annotated[int, typer.Option(help="cluster: 1 joins edge neighbours, 2 also corners.")]
ClusterCount = Annotated[str, typer.Option(help="cluster: one electron per cluster, or the rounded sum.")]
THRESHOLD_HELP = ("A pixel is hit when its ADU above dark exceed this (ADU, or read-noise sigmas with --threshold-unit "
                  "sigma).")


# -- the outputs ingest and live share -----------------------------------------------------------------------
ArchiveOption = Annotated[Path | None, typer.Option(help="Write the cube compressed here (as compress does).")]
ArchiveCodecOption = Annotated[str, typer.Option(help="Codec of the archive (stempress codecs).")]
ArchiveChunksOption = Annotated[str | None, typer.Option(help="Chunking of the archive (default balanced).")]
ShardsOption = Annotated[bool, typer.Option(help="Write one HDF5 file per partition into OUT.shards/ (each written "
                                            "where it is compressed: no single writer) and OUT as a master file "
                                            "whose virtual dataset shows one cube.")]
ReduceTargetsOption = Annotated[list[str] | None, typer.Option(help="A reduce target (repeat): bf, adf, haadf, "
                                                                    "com, ...")]
ReducedOption = Annotated[Path | None, typer.Option(help="Write the reduce targets here (as reduce does).")]
EventsOption = Annotated[Path | None, typer.Option(help="Write the electrons as events here (as count does): a stempy "
                                                   ".h5, a raw_csr .toml, or with --event-format entropy an .h5.")]
EventFormatOption = Annotated[str | None, typer.Option(help="stempy, raw_csr or entropy (default: raw_csr for a .toml "
                                                       "--events, else stempy).")]
ThresholdOption = Annotated[float | None, typer.Option(help=THRESHOLD_HELP + " Given: the frames are counted before "
                                                       "--events is written; not given: they must be counts already.")]


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="Any source: EMD/HDF5, NXmx master, .mib, .npy, synthetic:...")],
    archive: ArchiveOption = None,
    codec: ArchiveCodecOption = "blosc_zstd",
    chunks: ArchiveChunksOption = None,
    reduce: ReduceTargetsOption = None,
    reduced: ReducedOption = None,
    events: EventsOption = None,
    event_format: EventFormatOption = None,
    threshold: ThresholdOption = None,
    threshold_unit: ThresholdUnit = "adu",
    read_noise: ReadNoise = None,
    dark: Dark = "0",
    gain: Gain = "1",
    method: Method = "pixel",
    connectivity: Connectivity = 1,
    cluster_count: ClusterCount = "one",
    centre: Annotated[str | None, typer.Option(help="Beam centre ROW,COL in detector pixels.")] = None,
    bf_radius: Annotated[float | None, typer.Option(help="Bright-field disk radius in detector pixels.")] = None,
    workers: Annotated[int | None, typer.Option(help="Workers (default: all usable cores).")] = None,
    executor: Annotated[str, typer.Option(help="Where work runs: threads, processes or inline (see --dask).")]
    = "threads",
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    force: Annotated[bool, typer.Option(help="Replace outputs that exist.")] = False,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Replaces --executor.")] = None,
    shards: ShardsOption = False,
) -> None:
    """Read a source ONCE and write every output asked for (--archive, --reduce with --reduced, --events), each
    the file the separate command (compress, reduce, count) writes, each atomically."""
    from stempress.events.counting import counting_options
    from stempress.ingest import ingest as ingest_source

    chunking = one_chunking(chunks)
    parse_centre(centre)
    counting, references = counting_options(threshold, threshold_unit=threshold_unit, read_noise=read_noise,
                                            dark=dark, gain=gain, method=method, connectivity=connectivity,
                                            cluster_count=cluster_count)
    outputs = [p for p in (archive, reduced, events) if p is not None]
    with saying_new_folders(*outputs), dask_executor(dask) as on_dask, \
            open_cli_source(source, dataset, scan_shape) as cube, progress_reporter("ingest", unit="bytes") as bar:
        show_rates(bar, cube, on_dask, workers)
        calibration = cli_calibration(cube, centre, bf_radius) if reduced is not None else None
        if archive is not None and codec.strip().lower() == "auto":
            from stempress.bench.recommend import resolve_auto

            codec = resolve_auto(codec, cube, chunking, archive)
        report = ingest_source(cube, archive=archive, codec=codec, chunks=chunking, reduce=reduce or [],
                               reduced=reduced, calibration=calibration, events=events, event_format=event_format,
                               counting=counting, event_inputs={"source": source, **references}, workers=workers,
                               executor=on_dask or executor, force=force, progress=bar, shards=shards)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    warn(report.events.warnings if report.events is not None else [])


def one_chunking(chunks: str | None) -> str | tuple[int, ...] | None:
    """--chunks of ingest and live: one chunking, or None for the default."""
    chunking = parse_chunkings(chunks) if chunks is not None else [None]
    if len(chunking) != 1:
        raise StempressError(f"--chunks {chunks!r}: give one chunking, e.g. balanced or 16x16x128x128")
    return chunking[0]


@app.command()
def live(
    url: Annotated[str, typer.Argument(help="The detector's stream: merlin://HOST:PORT (Merlin's data port, "
                                       "6342), dectris://HOST:PORT (SIMPLON stream v1, 9999) or "
                                       "dectris2://HOST:PORT (Stream V2, CBOR, 31001; ?channel=NAME takes "
                                       "that channel, default the first).")],
    scan_shape: Annotated[str, typer.Option(help="Scan positions ROWSxCOLS (the stream does not say).")],
    archive: ArchiveOption = None,
    codec: Annotated[str | None, typer.Option(help="Codec of the archive (stempress codecs; default blosc_zstd, "
                                              "blosc_lz4_bitshuffle for a 1-bit stream).")] = None,
    chunks: ArchiveChunksOption = None,
    reduce: ReduceTargetsOption = None,
    reduced: ReducedOption = None,
    events: EventsOption = None,
    event_format: EventFormatOption = None,
    threshold: ThresholdOption = None,
    threshold_unit: ThresholdUnit = "adu",
    read_noise: ReadNoise = None,
    dark: Dark = "0",
    gain: Gain = "1",
    method: Method = "pixel",
    connectivity: Connectivity = 1,
    cluster_count: ClusterCount = "one",
    centre: Annotated[str | None, typer.Option(help="Beam centre ROW,COL in detector pixels (needed to reduce).")]
    = None,
    bf_radius: Annotated[float | None, typer.Option(help="Bright-field disk radius in detector pixels (needed to "
                                                    "reduce).")] = None,
    workers: Annotated[int | None, typer.Option(help="Workers (default: all usable cores).")] = None,
    executor: Annotated[str, typer.Option(help="Where work runs: threads, processes or inline.")] = "threads",
    timeout: Annotated[float, typer.Option(help="Seconds without data before the stream counts as stalled.")]
    = 10.0,
    buffer_mb: Annotated[int, typer.Option(help="Frames held between network and writers, in MB; when full, the "
                                           "detector is held back.")] = 256,
    preview: Annotated[Path | None, typer.Option(help="Redraw the --reduce targets' images and the mean pattern as "
                                                 "PNGs in this folder about once a second (missing positions in "
                                                 "magenta); adds mean_pattern to the reduced file.")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Exit 0 even when frames are missing.")] = False,
    force: Annotated[bool, typer.Option(help="Replace outputs that exist.")] = False,
) -> None:
    """Receive a scan from a detector's network stream and write the --archive, --reduced and --events outputs
    as it arrives (ingest's outputs), every frame accounted for; missing frames are marked in each output's
    ``received`` mask (NaN in reduced images; listed in the event file's provenance). Ctrl-C ends the scan with
    what arrived (again: stop at once). Exits non-zero when frames are missing, unless --allow-missing."""
    from stempress.acquire import receive
    from stempress.events.counting import counting_options
    from stempress.live import open_live
    from stempress.sinks.events import stream_coder
    from stempress.store.reducing import given_calibration

    shape = parse_scan_shape(scan_shape)
    chunking = one_chunking(chunks)
    point = parse_centre(centre)
    if reduce and reduced is None and preview is None:
        raise StempressError("--reduce TARGET and --reduced RED.h5 go together (or --reduce with --preview DIR "
                             "alone, to watch the images without keeping them)")
    if preview is not None and not reduce:
        raise StempressError("--preview draws the reduce targets' images: give --reduce TARGET (with --centre and "
                             "--bf-radius; --reduced RED.h5 keeps them)")
    if reduce and (point is None or bf_radius is None):
        raise StempressError("reducing a live stream needs --centre ROW,COL and --bf-radius PIXELS (nothing can be "
                             "measured before the frames arrive)")
    counting, references = counting_options(threshold, threshold_unit=threshold_unit, read_noise=read_noise,
                                            dark=dark, gain=gain, method=method, connectivity=connectivity,
                                            cluster_count=cluster_count)
    outputs = [p for p in (archive, reduced, events) if p is not None]
    if not outputs and preview is None:
        raise StempressError("live needs at least one output: --archive OUT.h5, --reduce TARGET --reduced RED.h5, "
                             "--events EV.h5 and/or --preview DIR")
    # entropy-coded events: coded in one worker process of this command's (on processes: the run's workers)
    entropy = (events is not None and (event_format or "").strip().lower() == "entropy"
               and executor.strip().lower() != "processes")
    with saying_new_folders(*outputs), progress_reporter("live", unit="bytes") as bar, \
            _previewing(preview, force) as watch, stream_coder(entropy, workers) as coder:  # off this one's GIL
        source = open_live(url, shape, timeout=timeout, queue_bytes=buffer_mb * 1024**2)  # type: ignore[arg-type]
        calibration = given_calibration(source, centre=point, bf_radius=bf_radius) if reduce else None
        with _ctrl_c_stops(source):
            report = receive(source, archive=archive, codec=codec, chunks=chunking, reduce=reduce or [],
                             reduced=reduced, calibration=calibration, events=events, event_format=event_format,
                             counting=counting, event_inputs={"source": url, **references}, watch=watch,
                             workers=workers, executor=executor, force=force, event_coder=coder,
                             progress=lambda done, total: bar(done, total, source.status(done)))
    account = source.account
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if report.archive is not None and "archive_codec_default" in source.metadata:
        console.print(source.metadata["archive_codec_default"], highlight=False, soft_wrap=True)
    warn(report.events.warnings if report.events is not None else [])
    console.print(account.summary(), highlight=False, soft_wrap=True)
    if account.ended == STOPPED_BY_CTRL_C:
        errors.print(f"[red]interrupted:[/] stempress live stopped by Ctrl-C; the outputs hold the {account.received}"
                     f" frames received, marked incomplete ({account.missing} missing)", highlight=False,
                     soft_wrap=True)
        raise SystemExit(130)
    if account.missing and not allow_missing:
        _fail(f"{account.missing} of {account.expected} frames missing ({_escape(account.ended)}); the outputs hold "
              "what arrived, marked in their received mask; pass --allow-missing to accept that")


STOPPED_BY_CTRL_C = "stopped by Ctrl-C"


@contextmanager
def _previewing(folder: Path | None, force: bool) -> Iterator[Any]:
    """live --preview: a PNG writer on its own thread while the scan runs (None without --preview)."""
    if folder is None:
        yield None
        return
    from stempress.report.live_preview import PreviewWriter

    writer = PreviewWriter(folder, force=force)
    try:
        yield writer
    except BaseException:
        with contextlib.suppress(StempressError):  # the error in flight says more than a failed drawing
            writer.close()
        raise
    writer.close()


@contextmanager
def _ctrl_c_stops(source) -> Iterator[None]:
    """The first Ctrl-C ends the live scan (the block in hand is finished, the outputs written); the next one
    stops the command at once, as everywhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def stop(_signum: int, _frame: object) -> None:
        source.stop(STOPPED_BY_CTRL_C)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@app.command()
def serve(
    source: Annotated[str, typer.Argument(help="Any source to replay: EMD/HDF5, NXmx, .mib, .npy, synthetic:...")],
    as_: Annotated[str, typer.Option("--as", help="The detector to act as: merlin, dectris (SIMPLON stream v1) "
                                     "or dectris2 (Stream V2, CBOR).")] = "merlin",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one, printed).")] = 0,
    api_port: Annotated[int, typer.Option(help="Port of the detector's control interface: Merlin's control port "
                                          "(6341 on a real one), DECTRIS's SIMPLON REST API (0: a free one, "
                                          "printed).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    rate: Annotated[float, typer.Option(help="Frames per second (0: as fast as the receiver takes them).")] = 0.0,
    encoding: Annotated[str | None, typer.Option(help="DECTRIS data encoding: bs16-lz4< (default), bs32-lz4<, "
                                                 "bs8-lz4<, lz4< or < for dectris; bslz4 (default), lz4 or none "
                                                 "for dectris2.")] = None,
    merlin_format: Annotated[str | None, typer.Option(help="Merlin frame format: binary (U08/U16/U32) or raw "
                                                      "(R64 chip readout at the counter depth; 256x256 or 512x512 "
                                                      "frames). Default: a .mib as stored, else binary.")] = None,
    drop: Annotated[float, typer.Option(help="Probability a frame is not sent.")] = 0.0,
    duplicate: Annotated[float, typer.Option(help="Probability a frame is sent twice.")] = 0.0,
    reorder: Annotated[float, typer.Option(help="Probability a frame is swapped with the next.")] = 0.0,
    corrupt: Annotated[float, typer.Option(help="Probability a frame's header or length is corrupt.")] = 0.0,
    stall: Annotated[float, typer.Option(help="Seconds to pause half way through.")] = 0.0,
    disconnect_after: Annotated[int | None, typer.Option(help="Close the stream after this many frames.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws (the same seed, the same faults).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a receiver.")] = 600.0,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
) -> None:
    """Act as a detector: send SOURCE once, as Merlin's TCP data stream or a DECTRIS ZeroMQ stream (v1 or V2), to
    the first receiver (stempress live, LiberTEM-live), at --rate, with the faults asked for; then say what was
    sent. A .mib file goes out record for record, byte for byte."""
    from stempress.live.serve import Faults, libertem_live_call
    from stempress.live.serve import serve as serve_source

    faults = Faults(drop, duplicate, reorder, corrupt, stall, None, disconnect_after, seed)
    with open_cli_source(source, dataset, scan_shape) as cube:
        api: list[int] = []

        def listening(bound: int) -> None:
            console.print(f"serving {cube.name} {tuple(cube.shape)} {cube.dtype} as {as_} on {host}:{bound}, "
                          f"control API on {host}:{api[0]}", highlight=False, soft_wrap=True)
            console.print(f"LiberTEM-live: {libertem_live_call(as_, host, bound, api[0], cube.shape[:2], encoding)}",
                          highlight=False, soft_wrap=True)

        log = serve_source(cube, as_, port=port, host=host, rate=rate, faults=faults, encoding=encoding,
                           timeout=timeout, ready=listening, api_port=api_port, api_ready=api.append,
                           merlin_format=merlin_format)
    console.print(f"sent {log.sent} messages for {log.frames} frames in {log.seconds:.2f} s "
                  f"({log.sent / max(log.seconds, 1e-9):,.0f}/s; {log.ended}): dropped {len(log.dropped)}, "
                  f"duplicated {len(log.duplicated)}, reordered {len(log.reordered)}, corrupt {len(log.corrupted)}",
                  highlight=False, soft_wrap=True)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="A file written by stempress compress or count (or any cube file "
                                         "stempress reads).")],
    against: Annotated[str | None, typer.Option(help="Source to compare with bit for bit.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside PATH (default: auto-detect).")] = None,
    against_dataset: Annotated[str | None, typer.Option(help="Dataset path inside the --against source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS of a .mib / NXmx frame stack (the "
                                                   "--against source, or PATH).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding threads, processes for an entropy-coded file "
                                                "(default: all usable cores).")] = None,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Workers decode PATH (any kind) and "
                                             "check it (and compare with --against) by partitions of the scan; "
                                             "both files must be visible to them.")] = None,
) -> None:
    """Re-read every chunk, check its checksums and (with --against) compare bit-exact; names the first bad chunk.

    PATH: a stempress HDF5 cube (or any chunked HDF5 cube), an event file (stempy .h5, raw_csr .toml,
    entropy-coded .h5), or a .mib / .npy / NXmx file (decoded whole). Without stored checksums and without
    --against the result is "decoded, not verified", never OK.
    """
    from contextlib import nullcontext

    from stempress.store.verify import verify as verify_file

    shape = parse_scan_shape(scan_shape)
    reference = open_cli_source(against, against_dataset, scan_shape) if against else nullcontext()
    with dask_executor(dask) as executor, reference as source:
        report = verify_file(path, against=source, workers=workers, dataset=dataset, scan_shape=shape,
                             executor=executor)
    if report.note:  # checks asked for on the workers that ran here, and why
        console.print(f"verify: {report.note}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise StempressError(report.summary())
    console.print(report.summary(), highlight=False, soft_wrap=True)


@app.command("plugin-path")
def plugin_path(
    folder_only: Annotated[bool, typer.Option("--folder", help="Print only the folder (MATLAB's setenv, Windows' "
                                              "set HDF5_PLUGIN_PATH=...).")] = False,
) -> None:
    """Print the HDF5_PLUGIN_PATH line that lets HyperSpy, h5dump, HDFView and MATLAB decode Blosc, Zstd, LZ4,
    Bitshuffle and BZip2 files: eval "$(stempress plugin-path)" (or add the line to your shell profile)."""
    from stempress.store.readers import export_line
    from stempress.store.readers import plugin_path as folder

    typer.echo(str(folder()) if folder_only else export_line())  # plain text: no wrapping of a long path


def refuse_filled_folders(force: bool, **folders: Path | None) -> None:
    """Folders of figures or a report replace files of the same names: refuse a folder that already holds files,
    before any work, unless --force."""
    for option, folder in folders.items():
        if folder is not None and not force and Path(folder).is_dir() and any(Path(folder).iterdir()):
            raise StempressError(f"{folder} already holds files that --{option} would replace; pass --force to "
                                 "replace them, or choose an empty or new folder")


DASK_HELP = ("Run on Dask: a scheduler address (tcp://host:8786) or local[:N] (a cluster of N worker processes "
             "here, default all cores). Workers reopen the source by path, so it must be visible to them.")


@contextmanager
def dask_executor(where: str | None):
    """The command's executor for ``--dask`` (closed when the command ends; a scheduler given by address stays
    up), or None without it."""
    if where is None:
        yield None
        return
    from stempress.exec.dask import DaskExecutor

    with DaskExecutor(where) as executor:
        yield executor


def show_rates(bar: ProgressReporter, cube, executor, workers: int | None, *, rows: bool = False) -> None:
    """frames/s, GB/s and the workers on a command's bar (progress in source bytes, or in scan rows)."""
    import numpy as np

    from stempress.cores import resolve_workers

    frame_bytes = int(np.prod(cube.shape[2:])) * np.dtype(cube.dtype).itemsize
    count = executor.workers if executor is not None else resolve_workers(workers)
    if rows:
        bar.show_rates(1 / cube.shape[1], count, frame_bytes * cube.shape[1])
    else:
        bar.show_rates(frame_bytes, count)


def open_cli_source(spec: str, dataset: str | None, scan_shape: str | None):
    """A source from the command line's words."""
    from stempress.data.open import open_source

    return open_source(spec, dataset=dataset, scan_shape=parse_scan_shape(scan_shape))


CENTRE_HELP = ("Beam centre ROW,COLUMN in detector pixels, e.g. 63.5,64 (default: from the file's metadata, else "
               "measured on the mean pattern).")
BF_RADIUS_HELP = "Bright-field disk radius in detector pixels (default: from the metadata, else measured)."


@app.command()
def reduce(
    source: Annotated[str, typer.Argument(help="Any source: EMD/HDF5, NXmx, .mib, .npy, events, synthetic:...")],
    target: Annotated[list[str], typer.Option(help="bf, abf, adf[:inner=..,outer=..,units=bf|px|mrad], haadf, com, "
                                              "mean_pattern, radial[:bins=..]; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output HDF5 file.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT, and files in the --figures / --report folders.")]
    = False,
    figures: Annotated[Path | None, typer.Option(help="Also draw virtual images, DPC, iDPC and the mean pattern "
                                                 "with the default detectors, recomputed from SOURCE in a second "
                                                 "pass, into this folder (PNG + SVG).")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write DIR/index.html (self-contained) with the figures of "
                                                "OUT itself (what the targets computed) and its provenance.")] = None,
    centre: Annotated[str | None, typer.Option(help=CENTRE_HELP)] = None,
    bf_radius: Annotated[float | None, typer.Option(help=BF_RADIUS_HELP)] = None,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Workers reduce partitions of the scan; "
                                             "the results are the same bits as without.")] = None,
) -> None:
    """Compute the targets in one streaming pass and write them with provenance, in an HDF5 file that
    py4DSTEM (py4DSTEM.read) and HyperSpy (hs.load(OUT, file_format="hspy"); an OUT named .hspy needs no
    file_format) open."""
    from stempress.reduce.sufficiency import parse_targets
    from stempress.store.readers import reduced_open_line
    from stempress.store.reduced import reduce_to_file

    chosen = parse_targets(target)  # a bad target is one line, before any bar is drawn
    parse_centre(centre)
    refuse_filled_folders(figures=figures, report=report, force=force)
    with saying_new_folders(out), dask_executor(dask) as executor, \
            open_cli_source(source, dataset, scan_shape) as cube, progress_reporter("reduce", unit="bytes") as bar:
        show_rates(bar, cube, executor, 1)  # inline without --dask
        path = reduce_to_file(cube, chosen, out, force=force, progress=bar,
                              calibration=cli_calibration(cube, centre, bf_radius), executor=executor)
    console.print(f"wrote {path}: {', '.join(target)}")
    console.print(reduced_open_line(path), highlight=False, soft_wrap=True)
    if figures is not None:
        from stempress.report.reduce_figures import figures_from_source

        with open_cli_source(source, dataset, scan_shape) as cube:
            drawn = figures_from_source(cube, figures)
        console.print(f"figures: {', '.join(str(p) for p in drawn)}", soft_wrap=True)
    if report is not None:
        from stempress.report.reduce_report import write_reduced_report

        console.print(f"report: {write_reduced_report(path, report)}", soft_wrap=True)


@app.command()
def plan(
    source: Annotated[str, typer.Argument(help="Any source: EMD/HDF5, NXmx, .mib, .npy, events, synthetic:...")],
    target: Annotated[list[str], typer.Option(help="Inference targets, as for reduce; repeat for several.")],
    tolerance: Annotated[float, typer.Option(help="Largest relative RMS error each target may have.")] = 0.01,
    max_positions: Annotated[int, typer.Option(help="Scan positions sampled for the checks.")] = 1024,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    write: Annotated[Path | None, typer.Option(help="Write the chosen representation to this file.")] = None,
    force: Annotated[bool, typer.Option(help="Replace the --write file if it exists.")] = False,
    centre: Annotated[str | None, typer.Option(help=CENTRE_HELP)] = None,
    bf_radius: Annotated[float | None, typer.Option(help=BF_RADIUS_HELP)] = None,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Workers run the passes over the cube "
                                             "(compressing, reducing); the table is the same as without.")] = None,
) -> None:
    """Cost table of representations and the least burdensome one whose sufficiency checks all pass."""
    from stempress.plan import plan as make_plan
    from stempress.plan import write_representation

    if write is not None:
        from stempress.atomic import check_new_output

        check_new_output(write, force)  # before the checks run, not after minutes of them
    with saying_new_folders(write), dask_executor(dask) as executor, \
            open_cli_source(source, dataset, scan_shape) as cube:
        calibration = cli_calibration(cube, centre, bf_radius)
        table, choice = make_plan(cube, target, tolerance, max_positions=max_positions, calibration=calibration,
                                  executor=executor)
        written = (write_representation(cube, choice, target, write, force=force, calibration=calibration,
                                        executor=executor) if write else None)
    shown = Table(title=f"Cost table (tolerance {tolerance:g} relative RMS)")
    for column in ("representation", "bytes", "reduction", "recovers", "assumes", "error", "passes"):
        shown.add_column(column, justify="right" if column in ("bytes", "reduction", "error") else "left")
    for row in table.itertuples():
        shown.add_row(str(row.representation), f"{row.bytes:,}", f"{row.reduction:,.1f}x", str(row.recovers),
                      str(row.assumes), "n/a" if row.error != row.error else f"{row.error:.3g}",
                      "yes" if row.passes else "[red]no[/]")
    console.print(shown)
    console.print(f"least burdensome representation that passes every check: [green]{choice}[/]")
    if written is not None:
        console.print(f"wrote {written}", soft_wrap=True)


@app.command()
def recommend(
    source: Annotated[str, typer.Argument(help="File (or synthetic:...) to sample and benchmark.")],
    use: Annotated[str, typer.Option("--for", help="archive, acquisition, analysis or balanced.")] = "balanced",
    rate: Annotated[float | None, typer.Option(help="Detector write rate to keep up with, GiB/s (acquisition).")]
    = None,
    methods: Annotated[str, typer.Option(help="paper, all, or codec names separated by commas.")] = "paper",
    chunks: Annotated[str, typer.Option(help="Chunkings to try: balanced, paper, or shapes.")] = "balanced",
    runs: Annotated[int, typer.Option(min=1, help="Runs per method on the sample.")] = 2,
    sample_mib: Annotated[float, typer.Option(help="Sample size in MiB (scan rows spread over the cube).")] = 256,
    time_limit: Annotated[float, typer.Option(help="Seconds allowed per write or read on the sample.")] = 30.0,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where sample files are written (default: a temp dir).")]
    = None,
) -> None:
    """Benchmark a sample of SOURCE and recommend a codec for a use case, with the numbers behind it."""
    from stempress.bench.ranking import gibs
    from stempress.bench.recommend import recommend_source

    with open_cli_source(source, dataset, scan_shape) as cube, \
            progress_reporter("sample benchmark", transient=True) as bar:
        choice, stats = recommend_source(
            cube, use, methods=methods, chunkings=parse_chunkings(chunks), runs=runs, workdir=workdir,
            max_sample_bytes=int(sample_mib * 1024**2), required_write_gibs=rate, time_limit_s=time_limit,
            on_progress=lambda e: bar(e.done, e.total),
        )
    if choice.meets_rate is False:
        errors.print(f"[yellow]no method measured here writes --rate {rate:g} GiB/s; the choice below is the "
                     "fastest with a useful ratio[/]", highlight=False)
    console.print(f"[bold]{use}:[/] [green]{choice.method}[/]  ratio {choice.ratio:.2f}x, write "
                  f"{gibs(choice.write_gibs)} GiB/s, read {gibs(choice.read_gibs)} GiB/s")
    console.print(choice.why, highlight=False)
    if choice.alternatives:
        console.print("alternatives: " + ", ".join(choice.alternatives), highlight=False)
    for line in stats.attrs.get("problems", []):
        errors.print(f"[yellow]{line}[/]", highlight=False)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="A folder written by stempress bench.")],
    paper_dir: Annotated[Path | None, typer.Option(help="The study's tables (default: its published "
                                                  "tables, shipped with stempress).")] = None,
    reduced: Annotated[list[Path] | None, typer.Option(help="A file written by stempress reduce: adds its figures "
                                                       "and provenance as a section; repeat for several.")] = None,
) -> None:
    """Tables, figures and a self-contained HTML report from benchmark results."""
    from stempress.report import build_report

    html = build_report(results_dir, paper_dir, reduced or [])
    console.print(f"report: {html}")


@app.command()
def codecs(
    methods: Annotated[str, typer.Option(help="paper, all, or codec names separated by commas.")] = "all",
) -> None:
    """List the codec catalog: names, parameters, availability."""
    from stempress.codecs.catalog import select_codecs

    table = Table(title=f"Codec catalog ({methods})")
    for column in ("name", "family", "sets", "parameters", "available"):
        table.add_column(column)
    for codec in select_codecs(methods):
        reason = codec.unavailable_reason()
        params = ", ".join(f"{k}={v}" for k, v in codec.params.items())
        table.add_row(codec.name, codec.family, ",".join(sorted(codec.sets)), params,
                      "yes" if reason is None else f"[red]no[/]: {reason}")
    console.print(table)


@app.command()
def simulate(
    spec: Annotated[str, typer.Argument(help="Suite member (smoke/4D_Diff) or synthetic:diffraction?scan=..&det=..")],
    out: Annotated[Path, typer.Argument(help="Output HDF5 file, EMD 1.0 as py4DSTEM writes it (name it .emd and "
                                        "HyperSpy's hs.load opens it without file_format).")],
    truth: Annotated[bool, typer.Option(help="Also save the true expected-count map.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Generate a synthetic cube to a file, block by block (works for cubes larger than memory)."""
    from stempress.data.emd import EMD_DATA_PATH
    from stempress.data.open import open_source
    from stempress.data.suites import as_synthetic
    from stempress.store.readers import cube_open_lines
    from stempress.store.write import write_hdf5

    source = open_source(as_synthetic(spec))
    with saying_new_folders(out), progress_reporter("simulate", unit="bytes") as bar:
        path = write_hdf5(source, out, truth=truth, force=force, progress=bar)
    console.print(f"wrote {path}: {source.shape} {source.dtype}")
    for line in cube_open_lines(path, "emd", EMD_DATA_PATH, ()):
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def count(
    source: Annotated[str, typer.Argument(help="Integrating-detector frames in ADU: EMD/HDF5, NXmx, .mib, .npy, "
                                         "synthetic:...")],
    out: Annotated[Path, typer.Option(help="Output events: a stempy .h5 file, a LiberTEM raw_csr .toml, or with "
                                      "--format entropy an entropy-coded .h5 (smallest; every stempress command "
                                      "reads all three).")],
    threshold: Annotated[float, typer.Option(help=THRESHOLD_HELP)],
    threshold_unit: ThresholdUnit = "adu",
    read_noise: ReadNoise = None,
    dark: Dark = "0",
    gain: Gain = "1",
    method: Method = "pixel",
    connectivity: Connectivity = 1,
    cluster_count: ClusterCount = "one",
    fmt: Annotated[str | None, typer.Option("--format", help="stempy, raw_csr or entropy (default: raw_csr for a "
                                            ".toml OUT, else stempy).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset path inside an HDF5 source.")] = None,
    scan_shape: Annotated[str | None, typer.Option(help="Scan shape ROWSxCOLS for .mib / NXmx sources.")] = None,
    workers: Annotated[int | None, typer.Option(help="Counting threads (default: all usable cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    dask: Annotated[str | None, typer.Option("--dask", help=DASK_HELP + " Workers count partitions of the scan "
                                             "and send back events; the file is the same as without.")] = None,
) -> None:
    """Count electrons in integrating-detector frames, block by block, and write them as events.

    Lossy with respect to ADC values: amplitudes, sub-threshold signal and overlapping electrons are lost.

    The parameters, the source's calibration and the provenance are recorded in OUT, with a checksum per chunk.
    """
    from contextlib import nullcontext

    from stempress.events.counting import counting_options, event_format
    from stempress.exec.select import make_executor
    from stempress.store.count import count_to_file

    params, references = counting_options(threshold, threshold_unit=threshold_unit, read_noise=read_noise, dark=dark,
                                          gain=gain, method=method, connectivity=connectivity,
                                          cluster_count=cluster_count)
    fmt = event_format(out, fmt)  # a bad name or format is one line, before any bar is drawn
    with saying_new_folders(out), dask_executor(dask) as on_dask, \
            open_cli_source(source, dataset, scan_shape) as cube, \
            progress_reporter("count (scan rows)", transient=True) as bar, \
            make_executor("threads", workers) if on_dask is None else nullcontext(on_dask) as pool:
        show_rates(bar, cube, pool, None, rows=True)
        report = count_to_file(cube, out, params, fmt=fmt, force=force, inputs={"source": source, **references},
                               progress=bar, executor=pool)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    warn(report.warnings)


def warn(lines: list[str]) -> None:
    """Things that look wrong but stopped nothing: one yellow line each, on stderr."""
    for line in lines:
        errors.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


# -- errors, notes and interrupts -----------------------------------------------------------------------------
class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised where the main thread is, so every ``with`` block (partial files) cleans up.

    Not a KeyboardInterrupt: Typer turns that into a silent exit 130, and the user should hear what stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The Ctrl-C or SIGTERM received and not yet raised again by ``stop_if_interrupted``. Python drops an exception
#: raised by a signal handler while it runs a finalizer or a weakref callback ("Exception ignored"): the command
#: would then run to its end as if never stopped, so the next progress report raises it again.
_pending_signal: int | None = None


def _interrupt(signum: int, _frame: object) -> None:
    global _pending_signal
    _pending_signal = signum
    signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C stops at once
    raise Interrupted(signum)


def stop_if_interrupted() -> None:
    """Raise, in the main thread, a stop signal whose first raise may have been lost (once per signal)."""
    global _pending_signal
    if _pending_signal is not None and threading.current_thread() is threading.main_thread():
        signum, _pending_signal = _pending_signal, None
        raise Interrupted(signum)


class _Notes(logging.Handler):
    """The library's notes (``stempress`` logger: a folder created, a dead writer's leftover removed) as one
    ``note:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        errors.print(f"[yellow]note:[/] {record.getMessage()}", highlight=False, soft_wrap=True)


def _command(argv: list[str]) -> str:
    """The subcommand named on the command line, for messages."""
    return next((a for a in argv if not a.startswith("-")), "")


def _outputs_said(journal, removed: bool = True) -> str:
    """What a stopped command leaves: nothing, or the outputs that were complete before it stopped (and, with
    ``removed``, which unfinished ones were deleted)."""
    gone = [str(p) for p in dict.fromkeys(journal.discarded) if p not in journal.written]
    removed = f"; the unfinished {', '.join(gone)} removed" if gone and removed else ""
    if not any(p.exists() for p in journal.written):
        return "no output was written" + removed
    kept = [p for p in dict.fromkeys(journal.written) if p.exists()]  # not a scratch file deleted since
    if len(kept) > 3:
        return f"kept the {len(kept)} files complete before that in {os.path.commonpath(kept)}" + removed
    return "kept what was complete: " + ", ".join(map(str, kept)) + removed


@contextmanager
def saying_new_folders(*outputs: Path | None, folder: Path | None = None) -> Iterator[None]:
    """Around a command that writes the files ``outputs`` (or the results ``folder``) the user named: after it
    succeeds, say which missing folders it created for them (a mistyped path should not grow a folder tree
    unnoticed); if it fails or is interrupted, remove those it created that stayed empty."""
    from stempress.atomic import missing_folders

    missing = {Path(p): missing_folders(Path(p).parent) for p in outputs if p is not None}
    own = missing_folders(Path(folder)) if folder is not None else []
    if folder is not None:
        missing[Path(folder)] = own[:-1]
    try:
        yield
    except BaseException:
        for made in sorted({*own, *(f for fs in missing.values() for f in fs)}, key=lambda f: -len(f.parts)):
            with contextlib.suppress(OSError):
                made.rmdir()  # only an empty folder goes
        raise
    for path, folders in missing.items():
        if folders and folders[0].is_dir():
            errors.print(f"[yellow]note:[/] created folder {_escape(str(folders[0]))} for {_escape(str(path))}",
                         highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    raise SystemExit(1)


def main() -> None:
    """Entry point: user errors and OS errors become one red line and exit status 1; Ctrl-C or SIGTERM says
    which command stopped and what it left, and exits 130 or 143."""
    from stempress.atomic import WRITE_ERRNOS, watch_outputs
    from stempress.errors import os_error_message

    notes = logging.getLogger("stempress")
    notes.addHandler(_Notes())
    notes.setLevel(logging.INFO)
    notes.propagate = False
    global _pending_signal
    _pending_signal = None
    before = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    command = " ".join(filter(None, ("stempress", _command(sys.argv[1:]))))
    with watch_outputs() as journal, _handlers_restored(before):
        try:
            app()
            stop_if_interrupted()  # a stop whose raise was lost after the last progress report: still said
        except StempressError as exc:
            kept = f"; {_outputs_said(journal, removed=False)}" if any(p.exists() for p in journal.written) else ""
            _fail(f"{_escape(str(exc))}{_escape(kept)}")
        except Interrupted as exc:
            name = signal.Signals(exc.signum).name
            errors.print(f"[red]interrupted:[/] {command} stopped by {name}; {_escape(_outputs_said(journal))}",
                         highlight=False, soft_wrap=True)
            raise SystemExit(128 + exc.signum) from None
        except OSError as exc:  # the environment, met outside an output's own checks (a results folder, a source)
            if os.environ.get("STEMPRESS_TRACEBACK"):
                raise
            _fail(_escape(_os_error_line(exc, WRITE_ERRNOS, os_error_message)))


@contextmanager
def _handlers_restored(before: dict[int, Any]) -> Iterator[None]:
    """Put the signal handlers back when ``main`` returns, so a host that calls it (a test, a notebook) keeps its
    own Ctrl-C and SIGTERM. Meanwhile a stop raised where Python drops it (a finalizer) prints no "Exception
    ignored" traceback: ``stop_if_interrupted`` raises it again."""
    hook = sys.unraisablehook

    def quiet_lost_stop(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            hook(unraisable)

    sys.unraisablehook = quiet_lost_stop
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for signum, handler in before.items():
            signal.signal(signum, handler)



def _os_error_line(exc: OSError, write_errnos: set[int], os_error_message) -> str:
    """One line for an OS error no output check caught: about writing when only a write can cause it (a full
    disk, a read-only disk, a file where a folder should be, no permission for a path that does not exist yet),
    else about the path as it is."""
    import errno

    path = exc.filename
    if path is None:
        return f"{exc.strerror or str(exc).splitlines()[0]} (STEMPRESS_TRACEBACK=1 shows where)"
    writing = exc.errno in write_errnos or exc.errno in (errno.ENOTDIR, errno.EEXIST) or (
        exc.errno in (errno.EACCES, errno.EPERM) and not Path(path).exists())
    if writing:
        return os_error_message(exc, path, role="output")
    return f"{path}: {exc.strerror or str(exc).splitlines()[0]}; check the path and its permissions"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
