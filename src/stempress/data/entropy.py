"""A lossless, model-driven entropy code for counted cubes: each pixel's count coded against Poisson(lambda_i).

Why: a counted cube is ~99 % zeros with a few electrons per pixel, so a general-purpose compressor (Blosc zstd)
spends bits on structure it must rediscover in every chunk, while the physics already says each count is close
to Poisson(lambda_i) around the mean pattern. Coding against that model approaches the Poisson entropy bound
(PAPER.md, "Useful limits"). The arithmetic is constriction's ANS coder (a maintained library), not ours.

Model (fitted once, stored in the file, shared by every chunk; see ``entropy_model``):

* ``lambda_i``: the mean count of detector pixel ``i`` over the scan positions the model saw, smoothed so a pixel
  never hit while fitting stays codable. ``write_entropy_coded`` fits it on the whole cube (first passes; it reads
  the source two or three times); the ``EntropyCodedFormat`` file codec, which sees its blocks once, fits it on the
  first block only, with one group (the benchmark prints both).
* Groups of scan positions (format 5): where the pattern varies over the scan (grains, thickness), positions are
  clustered (``entropy_groups``: k-means, fixed seed, an extra pass of the full fit) and each group gets its own
  class map over the shared classes, where that pays for storing it; one group (the mean pattern alone) is always
  a candidate, so a cube that does not vary pays nothing. The encoder puts each position in the group whose map
  gives its counts the highest likelihood (integer arithmetic: the same in every process) and codes that group
  per position in the chunk.
* Pixels are grouped into classes of near-equal lambda, on the log grid (classes per octave) that makes the stored
  model plus the data's ideal code length smallest: a short scan cannot pay for a fine grid's map. Bright classes
  code every pixel's count against a Poisson table; dark (sparse) classes code only their events: how many, the gap
  before each (geometric, split Golomb-style into a tabled quotient, tabled high bits and uniform low bits) and each
  count. Values outside a table's window are escaped and stored raw (uint64), so any non-negative integers
  round-trip.

Coding: per chunk of ``chunk_rows`` scan rows, each run of symbols that share a table is one vectorised
``encode_reverse`` call into constriction's ANS coder; each chunk is its own ANS stream, so any scan-row range
decodes alone. The work per chunk grows with the bright pixels and the electrons, not with the dark zeros. With
groups, a chunk holds each position's group (uniform symbols) and then each group's positions coded as above.
constriction holds the GIL, so given an ``executor`` of several worker processes (``stempress.exec``'s
``ProcessExecutor``, which the commands pass in; this layer takes it by its interface) chunks are coded and decoded
there (``entropy_parallel``); they are written in order, so the file is the same byte for byte whatever the worker
count. The default is this process alone (no executor): worker processes import the caller's main module, so a
script must keep its work under ``if __name__ == "__main__":`` to use them, and a library call should not fail in
a script that does not.

File (format version 5; 4 is the same with one class map): HDF5; attrs ``format``, ``version``, ``shape``,
``dtype``, ``constriction_version``, ``checksum_algorithm`` and ``model_crc`` (strings fixed-length: a
variable-length one costs a global heap, ~4 kB); ``model/packed`` (the whole model as one xz stream,
``entropy_model.pack_model``); ``chunks/index`` (n_chunks + 1 rows: first scan row, first word, first escape),
``chunks/words`` (uint32 ANS words), ``chunks/escapes`` (uint64), ``chunks/crc`` (n_chunks rows: the CRC of the
chunk's words and of its escapes). Few datasets, the small ones compact
(inside their object headers), on purpose: on a sparse cube the model and HDF5's metadata were 2.5-12 % of the
file (version 3: ~20-26 kB; version 4: ~6-11 kB). Versions 2 and 3 kept one gzip'd dataset per model array
(``model/class_of_pixel``, ``class_int``, ``class_float``, ``table_offsets``, ``tables``); they still read.

Integrity: an ANS stream decodes any bytes into some counts, so a flipped bit would read back as wrong counts with
no error. Versions 3 to 5 keep a CRC (``data.checksums``: CRC32C, else CRC32) of each chunk's coded bytes,
checked the first time a read touches the chunk, and ``model_crc`` over the model's datasets and the chunk index,
checked on open; a mismatch is a ``ChecksumError`` naming the chunk and its scan rows. Version 2 files (no
checksums) still read; ``has_checksums`` tells them apart by the ``checksum_algorithm`` attribute.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output
from stempress.data.base import (
    Block,
    Dataset4D,
    SourceBase,
    check_shape_dtype,
    iter_blocks,
    rows_for_budget,
)
from stempress.data.checksums import ALGORITHM, checksum_function
from stempress.data.entropy_coder import ChunkCoder, constriction_version
from stempress.data.entropy_groups import ScanGroups
from stempress.data.entropy_model import (
    CLASS_INT,
    LAMBDA_FLOOR,
    PACKED_VERSION,
    SPARSE_BELOW,
    PoissonModel,
    fit_model,
    pack_model,
    unpack_model,
)
from stempress.data.entropy_parallel import ChunkExecutor, ChunkPool, ModelBlob, parallel
from stempress.data.event_checksums import ChecksumError
from stempress.data.events import check_counts_dtype, refuse_non_counts
from stempress.errors import StempressError

#: The float columns of a version 2-3 file's ``model/class_float`` (its ``model/class_int`` has ``CLASS_INT``'s).
CLASS_FLOAT = ("class_lambda", "p_event")

FORMAT_NAME = "stempress-entropy"
FORMAT_VERSION = 5
#: Versions this stempress reads: 2 has no checksums (read as before), 3 adds them, 4 packs the model into one
#: compressed dataset, 5 adds groups of scan positions (a class map each, the group coded per position).
READABLE_VERSIONS = (2, 3, 4, 5)
#: Root attribute naming the checksum algorithm: its presence is the marker of a file with checksums.
CHECKSUM_ATTR = "checksum_algorithm"
#: Root attribute: the CRC over the model's datasets and the chunk index (``header_crc``).
MODEL_CRC_ATTR = "model_crc"
#: Default dense bytes per coded chunk (the unit of random access, and of the work a process is handed).
DEFAULT_CHUNK_BYTES = 8 * 1024**2
#: Dense bytes per block that ``EntropyCodedFormat.read`` hands out: under glibc's 32 MiB ceiling for serving an
#: allocation from the heap, so a dropped block's memory is reused; a larger block is a fresh mapping faulted in
#: page by page (a 2-process read was ~10 % slower with 64 MiB blocks; ``benchmarks/event_codec.py`` shows the
#: speeds, not this comparison).
STREAM_BLOCK_BYTES = 16 * 1024**2


def default_chunk_rows(shape: tuple[int, ...], dtype: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Scan rows per coded chunk for about ``chunk_bytes`` of dense data (at least one row)."""
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    return max(1, min(int(shape[0]), chunk_bytes // max(1, row)))


class ChunkWriter:
    """Appends coded chunks to an open HDF5 file, in scan-row order (the file codec and the live stream's coder)."""

    def __init__(self, f: h5py.File, model: PoissonModel, shape: tuple[int, int, int, int], dtype: np.dtype):
        self.f, self.shape, self.dtype = f, shape, dtype
        # the coder's version is recorded: its fixed-point quantisation of the tables is part of the bitstream
        f.attrs.update({"format": _fixed(FORMAT_NAME), "version": FORMAT_VERSION, "shape": np.asarray(shape, np.int64),
                        "dtype": _fixed(dtype.str), "constriction_version": _fixed(constriction_version()),
                        CHECKSUM_ATTR: _fixed(ALGORITHM)})
        self._crc = checksum_function(ALGORITHM)
        self.crcs: list[tuple[int, int]] = []
        m = f.create_group("model")
        packed = pack_model(model, shape[2:])
        m.create_dataset("packed", data=packed, **_small(packed.nbytes))
        if model.grid is not None:  # what the fit chose, for the record (decoding needs only the classes)
            m.attrs.update({"sparse_classes_per_octave": model.grid[0], "classes_per_octave": model.grid[1]})
        m.attrs.update({"sparse_below": SPARSE_BELOW, "lambda_floor": LAMBDA_FLOOR})
        self.chunks = f.create_group("chunks")
        # held until finish: one contiguous dataset each wastes no chunk tail and needs no chunk index
        self.words: list[np.ndarray] = []
        self.escapes: list[np.ndarray] = []
        self.row_starts, self.word_offsets, self.escape_offsets = [0], [0], [0]
        self.next_row = 0  # rows handed out to be coded (some may still be in a worker)

    def pieces(self, blocks: Iterable[Block], chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Each block checked, then cut into chunks of ``chunk_rows`` scan rows: (rows, (positions, pixels)).
        Chunks start at multiples of ``chunk_rows`` whatever the blocks (rows left over at a block's end wait for
        the next one), so the file does not depend on how the caller cut the cube."""
        frame = self.shape[2] * self.shape[3]
        received = self.next_row
        held: list[np.ndarray] = []  # rows of the chunk being assembled across blocks
        for block in blocks:
            data = np.ascontiguousarray(block.data)
            if block.start != received or data.shape[1:] != self.shape[1:] or data.dtype != self.dtype:
                raise StempressError(f"entropy codec: block at row {block.start} of shape {data.shape} "
                                     f"{data.dtype} does not continue cube {self.shape} {self.dtype} at row "
                                     f"{received}; feed whole scan rows in order, in the declared dtype")
            refuse_non_counts(data, block.start, "entropy codec")  # counts only, with the events' message
            received += data.shape[0]
            a = 0
            if held:
                a = min(data.shape[0], chunk_rows - sum(h.shape[0] for h in held))
                held.append(data[:a])
                if sum(h.shape[0] for h in held) < chunk_rows:
                    continue
                part = np.concatenate(held)
                held = []
                self.next_row += part.shape[0]
                yield part.shape[0], part.reshape(-1, frame)
            while a < data.shape[0]:
                part = data[a:a + chunk_rows]
                a += part.shape[0]
                if part.shape[0] < chunk_rows and received < self.shape[0]:
                    held.append(part)
                    break
                self.next_row += part.shape[0]
                yield part.shape[0], part.reshape(-1, frame)
        if held:
            part = np.concatenate(held)
            self.next_row += part.shape[0]
            yield part.shape[0], part.reshape(-1, frame)

    def append(self, rows: int, words: np.ndarray, raw: np.ndarray) -> None:
        """The next chunk's ANS words and escaped values."""
        self.words.append(words)
        self.crcs.append((self._crc(words), self._crc(np.asarray(raw, np.uint64))))
        self.word_offsets.append(self.word_offsets[-1] + words.size)
        self.escapes.append(np.asarray(raw, np.uint64))
        self.escape_offsets.append(self.escape_offsets[-1] + raw.size)
        self.row_starts.append(self.row_starts[-1] + rows)

    def finish(self) -> None:
        if self.row_starts[-1] != self.shape[0]:
            raise StempressError(f"entropy codec: got {self.row_starts[-1]} scan rows, cube has {self.shape[0]}; "
                                 "feed every row")
        words = np.concatenate(self.words) if self.words else np.zeros(0, np.uint32)
        self.chunks.create_dataset("words", data=words)
        escapes = np.concatenate(self.escapes) if self.escapes else np.zeros(0, np.uint64)
        # usually none or few; many (an integrating detector's huge values) are gzip'd
        self.chunks.create_dataset("escapes", data=escapes, **({"compression": "gzip", "shuffle": True}
                                                               if escapes.size > 1024 else _small(escapes.nbytes)))
        index = np.stack([np.asarray(v, np.int64) for v in (self.row_starts, self.word_offsets, self.escape_offsets)],
                         axis=1)
        crcs = np.asarray(self.crcs, np.uint32).reshape(-1, 2)
        self.chunks.create_dataset("index", data=index, **_small(index.nbytes))
        self.chunks.create_dataset("crc", data=crcs, **_small(crcs.nbytes))
        self.f.attrs[MODEL_CRC_ATTR] = header_crc(self.f, ALGORITHM)


#: Datasets up to this many bytes are stored compact (in their object header: no separate allocation).
COMPACT_BYTES = 32 * 1024


def _small(nbytes: int) -> dict[str, Any]:
    """``create_dataset`` keywords for a small dataset: compact layout (HDF5's limit is 64 kB)."""
    if not 0 < nbytes <= COMPACT_BYTES:
        return {}
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    return {"dcpl": dcpl}


def _fixed(text: str) -> np.bytes_:
    """A string attribute as fixed-length ASCII: h5py stores a ``str`` as a variable-length string, whose global
    heap costs a file ~4 kB (a sparse cube's whole entropy-coded file can be ~200 kB)."""
    return np.bytes_(text.encode("ascii"))


def attr_text(f: h5py.File, key: str) -> str | None:
    """A string attribute as ``str``, written fixed-length (version 4) or variable-length (before); None if absent."""
    value = f.attrs.get(key)
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def header_crc(f: h5py.File, algorithm: str) -> int:
    """CRC over what every chunk's decoding depends on: the model's datasets (by name) and the chunk index."""
    crc = checksum_function(algorithm)
    parts = [np.ascontiguousarray(f["model"][name][...]).view(np.uint8).reshape(-1) for name in sorted(f["model"])]
    parts.append(np.ascontiguousarray(f["chunks/index"][...]).view(np.uint8).reshape(-1))
    return crc(np.concatenate(parts))


def _checked_header(shape: Any, dtype: Any, where: str) -> tuple[tuple[int, int, int, int], np.dtype]:
    shape = check_shape_dtype(tuple(shape), np.dtype(dtype), where)
    dtype = np.dtype(dtype)
    check_counts_dtype(dtype, where)
    return shape, dtype


def encode_blocks(path: Path, blocks: Iterable[Block], shape: Any, dtype: Any, *, model: PoissonModel | None = None,
                  chunk_rows: int | None = None, executor: ChunkExecutor | None = None) -> None:
    """Code blocks of scan rows into ``path`` (written in place; wrap in ``atomic_output``).

    With no ``model`` it is fitted on the first block (the blocks are seen once). ``executor``'s worker processes
    code the chunks (None or one worker: this process); the caller owns and closes it. The file is the same byte
    for byte either way.
    """
    shape, dtype = _checked_header(shape, dtype, "entropy codec")
    chunk_rows = chunk_rows or default_chunk_rows(shape, dtype)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    pool = parallel(executor) if shape[0] > chunk_rows else None  # one chunk: nothing to share out
    it = iter(blocks)
    first = next(it, None)
    if first is None:
        raise StempressError("entropy codec: no blocks to write; the cube has no scan rows")
    if model is None:
        model = _fit_block(first, shape)
    with h5py.File(path, "w", libver=("v110", "latest")) as f:  # compact object headers: a smaller file
        writer = ChunkWriter(f, model, shape, dtype)
        pieces = writer.pieces(itertools.chain([first], it), chunk_rows)
        slot_bytes = chunk_rows * int(np.prod(shape[1:])) * dtype.itemsize
        with contextlib.closing(_encoded(model, pieces, pool, slot_bytes)) as coded:
            for rows, (words, raw) in coded:
                writer.append(rows, words, raw)
        writer.finish()


def _fit_block(block: Block, shape: tuple[int, int, int, int]) -> PoissonModel:
    """The one-pass model, refusing non-counts before the file is created (``pieces`` checks again as it codes).
    One group: groups fitted on a first block's few rows gained little or lost on the cubes tried (grains at dose
    14000: 91.5 -> 92.1 % of the true bound; at 4000: 93.8 -> 93.5 %) and took seconds per write."""
    data = np.asarray(block.data)
    refuse_non_counts(data, block.start, "entropy codec")
    frames = data.reshape(-1, shape[2] * shape[3])
    return fit_model(frames.sum(axis=0, dtype=np.float64), frames.shape[0], shape[0] * shape[1])


def _encoded(model: PoissonModel, pieces: Iterable[tuple[int, np.ndarray]], executor: ChunkExecutor | None,
             slot_bytes: int) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """(rows, frames) -> (rows, (words, escapes)) in order, coded on ``executor``'s workers (None: here)."""
    pool = ChunkPool.open(ModelBlob.of(model), executor, slot_bytes) if executor is not None else None
    if pool is None:
        coder = ChunkCoder(model)
        for rows, frames in pieces:
            yield rows, coder.encode(frames)
        return
    with pool:
        yield from pool.encode(pieces)


def fit_source(source: Dataset4D, rows: int | None = None) -> PoissonModel:
    """The model from the whole cube: a first pass sums the mean pattern and samples the positions' patterns, a
    second (where the scan is long enough to group) sums each candidate group of positions (``entropy_groups``)."""
    det = (int(source.shape[2]), int(source.shape[3]))
    n_positions = int(source.shape[0]) * int(source.shape[1])
    total = np.zeros(det[0] * det[1], dtype=np.float64)
    groups = ScanGroups(n_positions, det)
    for block in iter_blocks(source, rows):
        refuse_non_counts(block.data, block.start, source.name)
        frames = block.data.reshape(-1, total.size)
        total += frames.sum(axis=0, dtype=np.float64)
        groups.sample(block.start * int(source.shape[1]), frames)
    if groups.wanted:
        groups.cluster()
        for block in iter_blocks(source, rows):
            groups.add(block.start * int(source.shape[1]), block.data.reshape(-1, total.size))
    return fit_model(total, n_positions, groupings=groups.groupings())


def write_entropy_coded(source: Dataset4D, out: Path | str, *, chunk_rows: int | None = None,
                        fit: str = "full", force: bool = False, executor: ChunkExecutor | None = None) -> Path:
    """Write ``source`` entropy-coded to ``out`` atomically; ``fit`` is ``"full"`` (two passes, best ratio) or
    ``"first"`` (model from the first block, one pass); ``executor`` as for ``encode_blocks``."""
    shape, dtype = _checked_header(source.shape, source.dtype, source.name)
    if fit not in ("full", "first"):
        raise ValueError(f"fit must be 'full' or 'first', got {fit!r}")
    rows = rows_for_budget(source)
    model = fit_source(source, rows) if fit == "full" else None
    out = Path(out)
    with atomic_output(out, force=force) as tmp:
        encode_blocks(tmp, iter_blocks(source, rows), shape, dtype, model=model, chunk_rows=chunk_rows,
                      executor=executor)
    return out


def _load_model(f: h5py.File) -> PoissonModel:
    m = f["model"]
    if int(f.attrs["version"]) >= 4:
        try:
            return unpack_model(m["packed"][...], tuple(int(v) for v in f.attrs["shape"][2:]),
                                version=min(int(f.attrs["version"]), PACKED_VERSION))
        except (KeyError, ValueError) as exc:
            raise StempressError(f"the entropy file's model is unreadable ({exc}); the file is corrupt, "
                                 "rewrite it") from None
    # versions 2 and 3: one dataset per model array
    class_of_pixel = m["class_of_pixel"][...].reshape(-1).astype(np.int32)
    ints, floats = m["class_int"][...], m["class_float"][...]
    arrays: dict[str, np.ndarray] = {k: ints[:, i] for i, k in enumerate(CLASS_INT)}
    arrays |= {k: floats[:, i] for i, k in enumerate(CLASS_FLOAT)}
    arrays["sparse"] = arrays["sparse"].astype(bool)
    return PoissonModel(lam=arrays["class_lambda"][class_of_pixel], class_of_pixel=class_of_pixel,
                        table_offsets=m["table_offsets"][...], tables=m["tables"][...].astype(np.float64), **arrays)


class EntropyCodedSource(SourceBase):
    """A ``Dataset4D`` over an entropy-coded file: ``read_rows`` decodes only the chunks it overlaps, in
    ``executor``'s worker processes when it overlaps several (None or one worker: this process only; the caller
    owns the executor and closes it after the source)."""

    def __init__(self, path: Path | str, executor: ChunkExecutor | None = None):
        self.path = Path(path)
        self.executor = parallel(executor)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StempressError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        f = self._f
        if attr_text(f, "format") != FORMAT_NAME:
            f.close()
            raise StempressError(f"{self.path}: not a stempress entropy-coded file")
        if int(f.attrs["version"]) not in READABLE_VERSIONS:
            f.close()
            newer = int(f.attrs["version"]) > FORMAT_VERSION
            fix = "upgrade stempress" if newer else "re-encode the data with this stempress"
            raise StempressError(f"{self.path}: entropy-code format version {int(f.attrs['version'])}, this stempress "
                                 f"reads versions {READABLE_VERSIONS[0]}-{FORMAT_VERSION}; {fix}")
        self.name = self.path.stem
        self.shape = tuple(int(v) for v in f.attrs["shape"])  # type: ignore[assignment]
        self.dtype = np.dtype(attr_text(f, "dtype"))
        try:
            self._open_checksums(f)
            self.model = _load_model(f)
        except BaseException:
            f.close()
            raise
        c = f["chunks"]
        index = c["index"][...]
        self.row_starts, self._word_offsets, self._escape_offsets = index[:, 0], index[:, 1], index[:, 2]
        self._words, self._escapes = c["words"], c["escapes"]
        self.metadata: dict[str, Any] = {"codec": FORMAT_NAME, "n_chunks": int(self.row_starts.size - 1),
                                         "n_classes": self.model.n_classes, "n_groups": self.model.n_groups}
        self._cached: tuple[int, np.ndarray] | None = None  # the last chunk: block reads that straddle reuse it
        self._coder: ChunkCoder | None = None  # built on the first in-process decode
        self._blob: ModelBlob | None = None  # the model as the workers get it

    def _open_checksums(self, f: h5py.File) -> None:
        """The chunk CRCs of a version 3 file (None for version 2: read unchecked), the header checked now."""
        self.checksum_algorithm: str | None = None
        self._chunk_crcs: np.ndarray | None = None
        self._checked: set[int] = set()  # chunks whose bytes matched: each is checked once per open
        if CHECKSUM_ATTR not in f.attrs:
            if int(f.attrs["version"]) >= 3:  # written with checksums: their loss is damage, not an old file
                raise StempressError(f"{self.path}: the entropy file's checksums are missing; the file was altered "
                                     "after it was written: restore it from a copy or write it again")
            return
        algorithm = attr_text(f, CHECKSUM_ATTR)
        self._crc = checksum_function(algorithm)  # a one-line error where this machine lacks the algorithm
        n_chunks = int(f["chunks/index"].shape[0]) - 1
        try:
            crcs = f["chunks/crc"][...].reshape(-1, 2)
            stored = int(f.attrs[MODEL_CRC_ATTR])
        except (KeyError, ValueError) as exc:
            raise StempressError(f"{self.path}: the entropy file's checksums are incomplete ({exc}); the file was "
                                 "altered after it was written: restore it from a copy or write it again") from None
        if crcs.shape[0] != n_chunks:
            raise StempressError(f"{self.path}: the stored checksums describe {crcs.shape[0]} chunks, the file holds "
                                 f"{n_chunks}; the file was altered after it was written: restore it from a copy or "
                                 "write it again")
        if header_crc(f, algorithm) != stored:
            raise ChecksumError(f"{self.path}: the entropy model or chunk index fails its {algorithm} (corrupted on "
                                "disk); the file cannot be trusted: restore it from a copy or write it again",
                                -1, (0, int(f.attrs["shape"][0]) * int(f.attrs["shape"][1])))
        self.checksum_algorithm, self._chunk_crcs = algorithm, crcs

    @property
    def chunks_checked(self) -> int:
        """Chunks whose coded bytes matched their checksums since the file was opened."""
        return len(self._checked)

    def _check(self, i: int, words: np.ndarray, escapes: np.ndarray) -> None:
        """Raise ``ChecksumError`` (chunk and scan rows named) when chunk ``i``'s bytes are not the ones written."""
        if self._chunk_crcs is None or i in self._checked:
            return
        parts = (("words", np.asarray(words, np.uint32)), ("escapes", np.asarray(escapes, np.uint64)))
        for column, (part, data) in enumerate(parts):
            if self._crc(data) != int(self._chunk_crcs[i, column]):
                r0, r1 = int(self.row_starts[i]), int(self.row_starts[i + 1])
                rows = f"scan row {r0}" if r1 - r0 == 1 else f"scan rows {r0}-{r1 - 1}"
                raise ChecksumError(f"{self.path}: entropy-coded chunk {i} ({rows}): its coded {part} fail their "
                                    f"{self.checksum_algorithm} (corrupted on disk); the file cannot be trusted: "
                                    "restore it from a copy or write it again", i,
                                    (r0 * self.shape[1], r1 * self.shape[1]))
        self._checked.add(i)

    def _coded(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Chunk ``i``'s words, escapes (checked against their CRCs) and (positions, pixels) shape."""
        w0, w1 = int(self._word_offsets[i]), int(self._word_offsets[i + 1])
        e0, e1 = int(self._escape_offsets[i]), int(self._escape_offsets[i + 1])
        rows = int(self.row_starts[i + 1] - self.row_starts[i])
        escapes = self._escapes[e0:e1] if e1 > e0 else np.zeros(0, np.uint64)  # usually none: skip HDF5's call
        words = self._words[w0:w1]
        self._check(i, words, escapes)
        return words, escapes, (rows * self.shape[1], self.shape[2] * self.shape[3])

    def _chunk(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``i`` decoded (into ``out``, its exact rows, if given; else kept for the next read)."""
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        if self._coder is None:
            self._coder = ChunkCoder(self.model)
        words, escapes, (n, pixels) = self._coded(i)
        frames = None if out is None else out.reshape(n, pixels)  # a view: the rows are whole and contiguous
        chunk = self._coder.decode(words, escapes, n, self.dtype, out=frames).reshape(-1, *self.shape[1:])
        if out is None:
            self._cached = (i, chunk)
        return chunk

    def _spans(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(chunk, first row, end row) of every chunk that rows ``start:stop`` overlap."""
        first = max(int(np.searchsorted(self.row_starts, start, side="right")) - 1, 0)
        last = int(np.searchsorted(self.row_starts, stop, side="left"))
        return [(i, int(self.row_starts[i]), int(self.row_starts[i + 1])) for i in range(first, last)
                if self.row_starts[i] < self.row_starts[i + 1]]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        spans = self._spans(start, stop) if start < stop else []
        cached = self._cached[0] if self._cached is not None else -1
        for span in [span for span in spans if span[0] == cached]:  # first: a parallel decode replaces the cache
            self._copy(span, start, stop, out)
        todo = [span for span in spans if span[0] != cached]
        if len(todo) > 1 and self.executor is not None and self._decode_parallel(todo, start, stop, out):
            return out
        for span in todo:
            self._copy(span, start, stop, out)
        return out

    def _copy(self, span: tuple[int, int, int], start: int, stop: int, out: np.ndarray) -> None:
        i, r0, r1 = span
        a, b = max(r0, start), min(r1, stop)
        if (a, b) == (r0, r1) and out.flags.c_contiguous and (self._cached is None or self._cached[0] != i):
            self._chunk(i, out[a - start:b - start])  # a whole chunk: decoded in place, no copy
        else:
            out[a - start:b - start] = self._chunk(i)[a - r0:b - r0]

    def _decode_parallel(self, spans: list[tuple[int, int, int]], start: int, stop: int, out: np.ndarray) -> bool:
        """Decode the chunks of ``spans`` in the workers into ``out``; False where no pool can be had."""
        pool = self._pool(spans)
        if pool is None:
            return False
        with pool:
            self._place(pool.decode(self._items(spans)), start, stop, out)
        return True

    def _pool(self, spans: list[tuple[int, int, int]]) -> ChunkPool | None:
        """Workers for these chunks (None without an executor, or where no shared memory can be had: decode
        here)."""
        if self.executor is None:
            return None
        if self._blob is None:
            self._blob = ModelBlob.of(self.model)
        rows = max(r1 - r0 for _, r0, r1 in spans)
        return ChunkPool.open(self._blob, self.executor, rows * int(np.prod(self.shape[1:])) * self.dtype.itemsize)

    def _items(self, spans: list[tuple[int, int, int]]
               ) -> Iterator[tuple[tuple[int, int, int], np.ndarray, np.ndarray, tuple[int, int], np.dtype]]:
        """What ``ChunkPool.decode`` takes, per chunk; the words are read only as slots free up."""
        for span in spans:
            words, escapes, shape = self._coded(span[0])
            yield span, words, escapes, shape, self.dtype

    def _place(self, decoded: Iterator[tuple[tuple[int, int, int], np.ndarray]], start: int, stop: int,
               out: np.ndarray) -> None:
        """Copy each decoded chunk's rows into ``out``; keep a partly read one (the next block reads the rest).
        A function of its own so no view of a slot outlives the pool."""
        for (i, r0, r1), frames in decoded:
            a, b = max(r0, start), min(r1, stop)
            chunk = frames.reshape(r1 - r0, *self.shape[1:])
            out[a - start:b - start] = chunk[a - r0:b - r0]
            if (a, b) != (r0, r1):
                self._cached = (i, chunk.copy())

    def blocks(self, rows: int) -> Iterator[Block]:
        """Blocks of ``rows`` scan rows, top to bottom. With workers it is one stream of chunks, so the workers
        decode the next chunks while the caller uses a block (``read_rows`` per block would leave them idle)."""
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        spans = self._spans(0, self.shape[0])
        pool = self._pool(spans) if len(spans) > 1 else None
        if pool is None:
            for start in range(0, self.shape[0], rows):
                yield Block(start, self.read_rows(start, min(start + rows, self.shape[0])))
            return
        with pool:
            yield from self._assemble(pool.decode(self._items(spans)), rows)

    def _assemble(self, decoded: Iterator[tuple[tuple[int, int, int], np.ndarray]], rows: int) -> Iterator[Block]:
        """Decoded chunks, in order, cut into blocks of ``rows`` scan rows."""
        start, stop = 0, min(rows, self.shape[0])
        out = np.empty((stop, *self.shape[1:]), self.dtype)
        for (_, r0, r1), frames in decoded:
            chunk = frames.reshape(r1 - r0, *self.shape[1:])
            r = r0
            while r < r1:
                b = min(r1, stop)
                out[r - start:b - start] = chunk[r - r0:b - r0]
                r = b
                if r == stop:  # the slot stays untouched while the block is out: the next is asked for after
                    yield Block(start, out)
                    start, stop = stop, min(stop + rows, self.shape[0])
                    out = np.empty((stop - start, *self.shape[1:]), self.dtype)

    def block_rows(self) -> int:
        """Scan rows per block of ``blocks``: whole chunks, about ``STREAM_BLOCK_BYTES``. The workers stream the
        chunks whatever the block size, so a block only needs to be small enough for malloc to recycle it."""
        chunk = int(self.row_starts[1] - self.row_starts[0]) if self.row_starts.size > 1 else 1
        return rows_for_budget(self, STREAM_BLOCK_BYTES, multiple=chunk)

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

    def __init__(self, chunk_rows: int | None = None, executor: ChunkExecutor | None = None):
        """One process by default, like HDF5's filter pipeline that the catalog's other codecs run through; an
        ``executor`` of worker processes (the caller's to close) codes and decodes the chunks there."""
        self.chunk_rows, self.executor = chunk_rows, executor

    def write(self, path: Path, blocks: Iterable[Block], shape: Any, dtype: Any) -> list[Path]:
        path = Path(path)
        try:
            encode_blocks(path, blocks, shape, dtype, chunk_rows=self.chunk_rows, executor=self.executor)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return [path]

    def read(self, path: Path, shape: Any, dtype: Any, rows: int | None = None) -> Iterator[Block]:
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        with EntropyCodedSource(path, executor=self.executor) as src:
            if tuple(src.shape) != tuple(shape) or src.dtype != np.dtype(dtype):
                raise StempressError(f"{path}: holds {src.shape} {src.dtype}, not {tuple(shape)} {np.dtype(dtype)}; "
                                     "give the shape and dtype it was written with")
            yield from src.blocks(rows or src.block_rows())
