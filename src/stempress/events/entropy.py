"""A lossless, model-driven entropy code for counted cubes: each pixel's count coded against Poisson(lambda_i).

Why: a counted cube is ~99 % zeros with a few electrons per pixel, so a general-purpose compressor (Blosc zstd)
spends bits on structure it must rediscover in every chunk, while the physics already says each count is close
to Poisson(lambda_i) around the mean pattern. Coding against that model approaches the Poisson entropy bound
(PAPER.md, "Useful limits"). The arithmetic is constriction's ANS coder (a maintained library), not ours.

Model (fitted once, stored in the file, shared by every chunk):

* ``lambda_i``: the mean count of detector pixel ``i`` over the scan positions the model saw, smoothed toward the
  frame's overall mean (``(S_i + mean_j lambda_j) / (n + 1)``, one prior frame) so a pixel never hit while
  fitting stays cheap to code later.
  ``write_entropy_coded`` fits it on the whole cube (a first pass; it reads the source twice); the
  ``EntropyCodedFormat`` file codec, which sees its blocks once, fits it on the first block only. The cost of that
  choice is small when the first block holds many positions (the bench's 64 MiB blocks hold the whole counted
  cube) and grows as the first block shrinks; the benchmark prints both.
* Pixels are grouped into classes of near-equal lambda (``CLASSES_PER_OCTAVE`` log steps, ~4 % apart, which
  costs well under 1 % of the bound); each class has one categorical table over a window of counts
  ``[lo, lo + K)`` (Poisson(lambda_class) mass, +-``WINDOW_SIGMAS`` sigma, at most ``MAX_ALPHABET``) plus an
  escape symbol that gets the tail mass and at least ``ESCAPE_FLOOR``. Counts outside the window are escaped and
  stored raw (in the cube's dtype, gzip'd), so any non-negative integers round-trip, however large.
* The tables themselves are stored (float32) (not recomputed from lambda), so the decoder feeds constriction
  exactly the encoder's numbers on any platform.

Coding: per chunk of ``chunk_rows`` scan rows, all symbols of one class form one i.i.d. run coded with a single
vectorised ``encode_reverse(symbols, Categorical(table))`` call (a probability-matrix call per symbol would need
n_symbols x K floats; it was not timed). Each chunk is its own ANS stream, so any scan-row range decodes alone.

File: HDF5; attrs ``format``, ``version``, ``shape``, ``dtype``; ``model/class_of_pixel`` (gzip'd, the detector
shape), ``model/class_lambda``, ``model/lo``, ``model/table_offsets``, ``model/tables``;
``chunks/row_starts`` (n_chunks + 1), ``chunks/word_offsets`` + ``chunks/words`` (uint32 ANS words),
``chunks/escape_offsets`` + ``chunks/escapes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.special import gammaln

from stempress.atomic import atomic_output
from stempress.data.base import Block, Dataset4D, SourceBase, check_shape_dtype, iter_blocks, rows_for_budget
from stempress.errors import StempressError
from stempress.events.representation import check_counts_dtype, refuse_non_counts

FORMAT_NAME = "stempress-entropy"
FORMAT_VERSION = 1
#: Log-spaced lambda classes per factor of two.
CLASSES_PER_OCTAVE = 16
#: Lambdas below this share the lowest class (a never-hit pixel still keeps every count codable).
LAMBDA_FLOOR = 1e-7
#: Half-width of each class's coded window in Poisson sigmas (plus a few counts for tiny lambda).
WINDOW_SIGMAS = 8.0
#: Largest table per class: huge counts (integrating detectors, uint32) are escaped rather than tabled.
MAX_ALPHABET = 4096
#: Smallest escape probability: every count stays codable; costs ~1.4e-6 bits per count.
ESCAPE_FLOOR = 1e-6
#: Default dense bytes per coded chunk (the unit of random access).
DEFAULT_CHUNK_BYTES = 4 * 1024**2


@dataclass(frozen=True)
class PoissonModel:
    """Per-pixel classes and each class's categorical table (last entry = escape)."""

    lam: np.ndarray  # (n_pixels,) float64: the fitted mean pattern, flat (a file keeps only the class lambdas)
    class_of_pixel: np.ndarray  # (n_pixels,) int32 into the class arrays
    class_lambda: np.ndarray  # (n_classes,) float64
    lo: np.ndarray  # (n_classes,) int64: first count of each window
    table_offsets: np.ndarray  # (n_classes + 1,) int64 into ``tables``
    tables: np.ndarray  # float64 holding float32 values (what the file keeps), concatenated tables

    @property
    def n_classes(self) -> int:
        return int(self.class_lambda.size)

    def table(self, c: int) -> np.ndarray:
        return self.tables[self.table_offsets[c]:self.table_offsets[c + 1]]

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixels sorted by class (stable) and the class boundaries in that order."""
        order = np.argsort(self.class_of_pixel, kind="stable")
        bounds = np.searchsorted(self.class_of_pixel[order], np.arange(self.n_classes + 1))
        return order, bounds

    def bound_bits(self) -> float:
        """Poisson entropy (bits per frame) of the model's own class lambdas: what an ideal coder of it spends."""
        from stempress.bench.bounds import poisson_entropy_bits

        return float(np.sum(poisson_entropy_bits(self.class_lambda[self.class_of_pixel])))


def _poisson_table(lam: float) -> tuple[int, np.ndarray]:
    """Window start and the (K + 1) probabilities of counts lo..lo+K-1 and escape under Poisson(lam)."""
    sd = math.sqrt(lam)
    lo = max(0, math.floor(lam - WINDOW_SIGMAS * sd))
    hi = math.ceil(lam + WINDOW_SIGMAS * sd + 8)
    if hi - lo > MAX_ALPHABET:
        lo = max(0, round(lam) - MAX_ALPHABET // 2)
        hi = lo + MAX_ALPHABET
    k = np.arange(lo, hi, dtype=np.float64)
    p = np.exp(k * math.log(lam) - lam - gammaln(k + 1.0))
    escape = max(ESCAPE_FLOOR, 1.0 - float(p.sum()))
    # float32 is what the file stores; the encoder uses the same rounded numbers as any decoder will
    return lo, np.append(p, escape).astype(np.float32).astype(np.float64)


def fit_model(total: np.ndarray, n_positions: int) -> PoissonModel:
    """The model from per-pixel count sums over ``n_positions`` frames (see the module doc for the smoothing)."""
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    if n_positions < 1:
        raise ValueError("the model needs at least one frame")
    lam = (total + total.mean() / n_positions) / (n_positions + 1)  # one extra frame of the mean pattern's mean
    level = np.floor(np.log2(np.maximum(lam, LAMBDA_FLOOR) / LAMBDA_FLOOR) * CLASSES_PER_OCTAVE).astype(np.int64)
    _, class_of_pixel = np.unique(level, return_inverse=True)
    # each class codes with its members' mean lambda: the Poisson closest to them in KL
    class_lambda = np.bincount(class_of_pixel, weights=lam) / np.bincount(class_of_pixel)
    class_lambda = np.maximum(class_lambda, LAMBDA_FLOOR)
    los, tables = zip(*(_poisson_table(float(v)) for v in class_lambda), strict=True)
    offsets = np.zeros(len(tables) + 1, dtype=np.int64)
    np.cumsum([t.size for t in tables], out=offsets[1:])
    return PoissonModel(lam=lam, class_of_pixel=class_of_pixel.astype(np.int32), class_lambda=class_lambda,
                        lo=np.asarray(los, dtype=np.int64), table_offsets=offsets, tables=np.concatenate(tables))


def _constriction() -> Any:
    try:
        import constriction
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StempressError("the entropy codec needs constriction: pip install 'constriction>=0.4'") from exc
    return constriction


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("constriction")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


class _Coder:
    """Encodes and decodes chunks with one model; the per-class models are built once."""

    def __init__(self, model: PoissonModel):
        cs = _constriction()
        self.model = model
        self.order, self.bounds = model.order()
        self.inverse = np.argsort(self.order)
        self.models = [cs.stream.model.Categorical(model.table(c), perfect=False) for c in range(model.n_classes)]
        self.alphabet = np.diff(model.table_offsets) - 1  # K per class; symbol K = escape
        self._cs = cs

    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, pixels) counts -> ANS words and the escaped raw values (class-major order)."""
        by_class = np.ascontiguousarray(frames.T[self.order])  # (pixels, positions), classes contiguous
        coder = self._cs.stream.stack.AnsCoder()
        escapes: list[np.ndarray] = []
        for c in range(self.model.n_classes - 1, -1, -1):  # a stack: encode backwards, decode forwards
            values = by_class[self.bounds[c]:self.bounds[c + 1]].reshape(-1)
            if values.size == 0:
                continue
            k = int(self.alphabet[c])
            shifted = values.astype(np.int64) - int(self.model.lo[c])
            escaped = (shifted < 0) | (shifted >= k)
            symbols = np.where(escaped, k, shifted).astype(np.int32)
            coder.encode_reverse(symbols, self.models[c])
            escapes.append(values[escaped])
        escapes.reverse()
        raw = np.concatenate(escapes) if escapes else np.zeros(0, frames.dtype)
        return np.asarray(coder.get_compressed(), dtype=np.uint32), raw

    def decode(self, words: np.ndarray, escapes: np.ndarray, n_positions: int, dtype: np.dtype) -> np.ndarray:
        """The inverse of ``encode``: (positions, pixels) counts in ``dtype``."""
        by_class = np.empty((self.order.size, n_positions), dtype=dtype)
        coder = self._cs.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        used = 0
        for c in range(self.model.n_classes):
            a, b = int(self.bounds[c]), int(self.bounds[c + 1])
            if a == b:
                continue
            k = int(self.alphabet[c])
            symbols = coder.decode(self.models[c], (b - a) * n_positions)
            escaped = symbols == k
            n_esc = int(np.count_nonzero(escaped))
            if used + n_esc > escapes.size:
                raise StempressError("entropy-coded chunk holds fewer escaped values than its symbols need; "
                                     "the file is corrupt, rewrite it")
            values = symbols.astype(np.int64) + int(self.model.lo[c])
            out = by_class[a:b].reshape(-1)
            out[:] = values.astype(dtype, copy=False) if n_esc == 0 else np.where(escaped, 0, values).astype(dtype)
            if n_esc:
                out[escaped] = escapes[used:used + n_esc]
            used += n_esc
        if used != escapes.size:
            raise StempressError("entropy-coded chunk has unused escaped values; the file is corrupt, rewrite it")
        return np.ascontiguousarray(by_class[self.inverse].T)


def _check_block(data: np.ndarray, start: int, where: str) -> None:
    """Counts only: floats, negatives and NaN are refused with the events' message."""
    refuse_non_counts(data, start, where)


def default_chunk_rows(shape: tuple[int, ...], dtype: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Scan rows per coded chunk for about ``chunk_bytes`` of dense data (at least one row)."""
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    return max(1, min(int(shape[0]), chunk_bytes // max(1, row)))


class _Writer:
    """Appends coded chunks to an open HDF5 file."""

    def __init__(self, f: h5py.File, model: PoissonModel, shape: tuple[int, int, int, int], dtype: np.dtype):
        self.f, self.shape, self.dtype, self.coder = f, shape, dtype, _Coder(model)
        # the coder's version is recorded: its fixed-point quantisation of the tables is part of the bitstream
        f.attrs.update({"format": FORMAT_NAME, "version": FORMAT_VERSION, "shape": np.asarray(shape, np.int64),
                        "dtype": dtype.str, "constriction_version": _version()})
        m = f.create_group("model")
        small = {"compression": "gzip", "shuffle": True}
        class_dtype = np.uint8 if model.n_classes <= 256 else np.uint16
        m.create_dataset("class_of_pixel", data=model.class_of_pixel.reshape(shape[2:]).astype(class_dtype),
                         **small)
        for name in ("class_lambda", "lo", "table_offsets", "tables"):
            values = getattr(model, name)
            m.create_dataset(name, data=values.astype(np.float32) if name == "tables" else values)
        m.attrs.update({"classes_per_octave": CLASSES_PER_OCTAVE, "lambda_floor": LAMBDA_FLOOR,
                        "escape_floor": ESCAPE_FLOOR, "window_sigmas": WINDOW_SIGMAS})
        self.chunks = f.create_group("chunks")
        self.words: list[np.ndarray] = []  # held until finish: one contiguous dataset wastes no chunk tail
        self.escapes = self.chunks.create_dataset("escapes", shape=(0,), maxshape=(None,), dtype=dtype,
                                                  chunks=(1 << 14,), **small)
        self.row_starts, self.word_offsets, self.escape_offsets = [0], [0], [0]

    def _append(self, dataset: h5py.Dataset, values: np.ndarray, offsets: list[int]) -> None:
        n = offsets[-1]
        dataset.resize((n + values.size,))
        if values.size:
            dataset[n:] = values
        offsets.append(n + values.size)

    def add(self, block: Block, chunk_rows: int) -> None:
        data = np.ascontiguousarray(block.data)
        if block.start != self.row_starts[-1] or data.shape[1:] != self.shape[1:] or data.dtype != self.dtype:
            raise StempressError(f"entropy codec: block at row {block.start} of shape {data.shape} {data.dtype} "
                                 f"does not continue cube {self.shape} {self.dtype} at row {self.row_starts[-1]}; "
                                 "feed whole scan rows in order, in the declared dtype")
        _check_block(data, block.start, "entropy codec")
        frame = self.shape[2] * self.shape[3]
        for a in range(0, data.shape[0], chunk_rows):
            part = data[a:a + chunk_rows]
            words, raw = self.coder.encode(part.reshape(-1, frame))
            self.words.append(words)
            self.word_offsets.append(self.word_offsets[-1] + words.size)
            self._append(self.escapes, raw, self.escape_offsets)
            self.row_starts.append(self.row_starts[-1] + part.shape[0])

    def finish(self) -> None:
        if self.row_starts[-1] != self.shape[0]:
            raise StempressError(f"entropy codec: got {self.row_starts[-1]} scan rows, cube has {self.shape[0]}; "
                                 "feed every row")
        words = np.concatenate(self.words) if self.words else np.zeros(0, np.uint32)
        self.chunks.create_dataset("words", data=words)
        for name, values in (("row_starts", self.row_starts), ("word_offsets", self.word_offsets),
                             ("escape_offsets", self.escape_offsets)):
            self.chunks.create_dataset(name, data=np.asarray(values, dtype=np.int64))


def _checked_header(shape: Any, dtype: Any, where: str) -> tuple[tuple[int, int, int, int], np.dtype]:
    shape = check_shape_dtype(tuple(shape), np.dtype(dtype), where)
    dtype = np.dtype(dtype)
    check_counts_dtype(dtype, where)
    return shape, dtype


def encode_blocks(path: Path, blocks: Iterable[Block], shape: Any, dtype: Any, *, model: PoissonModel | None = None,
                  chunk_rows: int | None = None) -> None:
    """Code blocks of scan rows into ``path`` (written in place; wrap in ``atomic_output``).

    With no ``model`` it is fitted on the first block (the blocks are seen once).
    """
    shape, dtype = _checked_header(shape, dtype, "entropy codec")
    chunk_rows = chunk_rows or default_chunk_rows(shape, dtype)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    it = iter(blocks)
    with h5py.File(path, "w", libver=("v110", "latest")) as f:  # compact object headers: a smaller file
        writer: _Writer | None = None
        if model is not None:
            writer = _Writer(f, model, shape, dtype)
        for block in it:
            if writer is None:
                data = np.asarray(block.data)
                _check_block(data, block.start, "entropy codec")
                frames = data.reshape(-1, shape[2] * shape[3])
                writer = _Writer(f, fit_model(frames.sum(axis=0, dtype=np.float64), frames.shape[0]), shape, dtype)
            writer.add(block, chunk_rows)
        if writer is None:
            raise StempressError("entropy codec: no blocks to write; the cube has no scan rows")
        writer.finish()


def fit_source(source: Dataset4D, rows: int | None = None) -> PoissonModel:
    """First pass: the model from the whole cube's mean pattern."""
    total = np.zeros(source.shape[2] * source.shape[3], dtype=np.float64)
    for block in iter_blocks(source, rows):
        _check_block(block.data, block.start, source.name)
        total += block.data.reshape(-1, total.size).sum(axis=0, dtype=np.float64)
    return fit_model(total, source.shape[0] * source.shape[1])


def write_entropy_coded(source: Dataset4D, out: Path | str, *, chunk_rows: int | None = None,
                        fit: str = "full", overwrite: bool = False) -> Path:
    """Write ``source`` entropy-coded to ``out`` atomically; ``fit`` is ``"full"`` (two passes, best ratio) or
    ``"first"`` (model from the first block, one pass)."""
    shape, dtype = _checked_header(source.shape, source.dtype, source.name)
    if fit not in ("full", "first"):
        raise ValueError(f"fit must be 'full' or 'first', got {fit!r}")
    rows = rows_for_budget(source)
    model = fit_source(source, rows) if fit == "full" else None
    out = Path(out)
    with atomic_output(out, overwrite=overwrite) as tmp:
        encode_blocks(tmp, iter_blocks(source, rows), shape, dtype, model=model, chunk_rows=chunk_rows)
    return out


def _load_model(f: h5py.File) -> PoissonModel:
    m = f["model"]
    class_of_pixel = m["class_of_pixel"][...].reshape(-1).astype(np.int32)
    class_lambda = m["class_lambda"][...]
    return PoissonModel(lam=class_lambda[class_of_pixel], class_of_pixel=class_of_pixel,
                        class_lambda=class_lambda, lo=m["lo"][...],
                        table_offsets=m["table_offsets"][...], tables=m["tables"][...].astype(np.float64))


class EntropyCodedSource(SourceBase):
    """A ``Dataset4D`` over an entropy-coded file: ``read_rows`` decodes only the chunks it overlaps."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StempressError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        f = self._f
        if f.attrs.get("format") != FORMAT_NAME:
            f.close()
            raise StempressError(f"{self.path}: not a stempress entropy-coded file")
        if int(f.attrs["version"]) > FORMAT_VERSION:
            f.close()
            raise StempressError(f"{self.path}: format version {int(f.attrs['version'])} is newer than this "
                                 f"stempress reads ({FORMAT_VERSION}); upgrade stempress")
        self.name = self.path.stem
        self.shape = tuple(int(v) for v in f.attrs["shape"])  # type: ignore[assignment]
        self.dtype = np.dtype(str(f.attrs["dtype"]))
        self.model = _load_model(f)
        self._coder = _Coder(self.model)
        c = f["chunks"]
        self.row_starts = c["row_starts"][...]
        self._word_offsets, self._escape_offsets = c["word_offsets"][...], c["escape_offsets"][...]
        self._words, self._escapes = c["words"], c["escapes"]
        self.metadata: dict[str, Any] = {"codec": FORMAT_NAME, "n_chunks": int(self.row_starts.size - 1),
                                         "n_classes": self.model.n_classes}
        self._cached: tuple[int, np.ndarray] | None = None  # the last chunk: block reads that straddle reuse it

    def _chunk(self, i: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        w0, w1 = int(self._word_offsets[i]), int(self._word_offsets[i + 1])
        e0, e1 = int(self._escape_offsets[i]), int(self._escape_offsets[i + 1])
        r0, r1 = int(self.row_starts[i]), int(self.row_starts[i + 1])
        frames = self._coder.decode(self._words[w0:w1], self._escapes[e0:e1], (r1 - r0) * self.shape[1], self.dtype)
        chunk = frames.reshape(r1 - r0, *self.shape[1:])
        self._cached = (i, chunk)
        return chunk

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        first = int(np.searchsorted(self.row_starts, start, side="right")) - 1
        for i in range(max(first, 0), self.row_starts.size - 1):
            r0, r1 = int(self.row_starts[i]), int(self.row_starts[i + 1])
            if r0 >= stop:
                break
            a, b = max(r0, start), min(r1, stop)
            if a < b:
                out[a - start:b - start] = self._chunk(i)[a - r0:b - r0]
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> EntropyCodedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EntropyCodedFormat:
    """The entropy code as a bench ``FileFormat``: blocks come once, so the model is fitted on the first block."""

    name = "entropy_poisson"
    suffix = ".h5"

    def __init__(self, chunk_rows: int | None = None):
        self.chunk_rows = chunk_rows

    def write(self, path: Path, blocks: Iterable[Block], shape: Any, dtype: Any) -> list[Path]:
        path = Path(path)
        try:
            encode_blocks(path, blocks, shape, dtype, chunk_rows=self.chunk_rows)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return [path]

    def read(self, path: Path, shape: Any, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        with EntropyCodedSource(path) as src:
            if tuple(src.shape) != tuple(shape) or src.dtype != np.dtype(dtype):
                raise StempressError(f"{path}: holds {src.shape} {src.dtype}, not {tuple(shape)} {np.dtype(dtype)}; "
                                     "give the shape and dtype it was written with")
            step = rows or rows_for_budget(src)
            for start in range(0, src.shape[0], step):
                stop = min(start + step, src.shape[0])
                yield Block(start, src.read_rows(start, stop))
