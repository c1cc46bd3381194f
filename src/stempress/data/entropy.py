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
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def _corrupt(what: str) -> StempressError:
    return StempressError(f"entropy-coded chunk {what}; the file is corrupt, rewrite it")


def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def _count_scale(length: int, p: float) -> tuple[int, int]:
    """Expected events and the count's scale bits ``k`` (``2**k <= sigma``), from exact IEEE operations only."""
    mu = length * p
    sigma = math.sqrt(mu * (1.0 - p))
    return round(mu), (math.frexp(sigma)[1] - 1 if sigma >= 1.0 else 0)


class _Layout:
    """One group's class map as the coder walks it: pixels sorted by class (sparse classes first) and each class's
    slots in that order."""

    def __init__(self, model: PoissonModel, group: int):
        self.order, self.bounds = model.order(group)
        self.slot_of_pixel = np.empty_like(self.order)  # the inverse permutation, without a second sort
        self.slot_of_pixel[self.order] = np.arange(self.order.size)
        self.n_sparse_pixels = int(self.bounds[int(np.count_nonzero(model.sparse))])  # sparse classes come first
        self.classes = _Class.all_of(model, self.bounds)
        self.sparse_pixel = model.sparse[model.maps()[group]]
        self.dense_pixels = self.order[self.n_sparse_pixels:]


#: A group's log-lambdas are scaled by this and rounded for choosing a position's group: integer products and sums
#: are exact in float64, so the choice (coded in the chunk) is the same in every process and BLAS.
_GROUP_SCORE_SCALE = 1024.0
#: Pixels whose counts choose a position's group: those whose classes differ most between the groups (weighted by
#: their counts); more cost encoding time for little better choices.
_TELLING_PIXELS = 512
#: Counts above this are clipped when choosing a group (keeps those sums exact; the choice only has to be good).
_GROUP_SCORE_CLIP = 65535


class _Coder:
    """Encodes and decodes chunks with one model; the constriction models are built once.

    A chunk of a model with several groups first holds each position's group (uniform symbols), then each group's
    positions coded as a chunk of their own under its class map, group by group.
    """

    def __init__(self, model: PoissonModel):
        cs = _constriction()
        self.model, self._cs = model, cs
        self.layouts = [_Layout(model, g) for g in range(model.n_groups)]
        # a one-entry table (gap high bits when a gap has no remainder) codes nothing; constriction refuses it
        self.models = [cs.stream.model.Categorical(model.table(t), perfect=False) if model.table(t).size > 1
                       else None for t in range(model.n_tables)]
        # symbols before the escape (the gap-high table has none)
        self.sizes = [int(v) for v in np.diff(model.table_offsets) - 1]
        self.count_model = self.models[-1]
        self._uniform: dict[int, Any] = {}
        self._local = threading.local()
        if model.n_groups > 1:
            self.group_model = cs.stream.model.Uniform(model.n_groups)
            maps = model.maps()
            self.telling = _telling_pixels(model)
            log_q = np.round(np.log(model.class_lambda) * _GROUP_SCORE_SCALE)
            self.weights = np.ascontiguousarray((log_q[maps[:, self.telling]] - log_q[maps[0, self.telling]]).T)
            expected = model.class_lambda[maps[:, self.telling]].sum(axis=1)
            self.offsets = expected - expected[0]

    def _scratch(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A chunk-sized buffer kept between chunks (a fresh one would be faulted in page by page every time), one
        per thread: threads may share a source, and so its coder."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._local.buffer = np.empty(nbytes, np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def uniform(self, bits: int) -> Any:
        if bits not in self._uniform:
            self._uniform[bits] = self._cs.stream.model.Uniform(1 << bits)
        return self._uniform[bits]

    def groups(self, frames: np.ndarray) -> np.ndarray:
        """Each position's group: the one whose class map gives its counts the highest Poisson likelihood."""
        x = frames[:, self.telling]
        if x.dtype.itemsize > 2:
            x = np.minimum(x, _GROUP_SCORE_CLIP)
        # einsum, not BLAS: a BLAS product of this size starts threads that cost more CPU than they save
        score = np.einsum("np,pg->ng", x.astype(np.float64), self.weights) / _GROUP_SCORE_SCALE - self.offsets
        return np.argmax(score, axis=1).astype(np.int32)

    def _escaped(self, values: np.ndarray, table: int, lo: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Symbols of ``values - lo`` under a table with an escape, and the raw values the escape stands for."""
        k = self.sizes[table]
        small = values.dtype.itemsize <= 2 and abs(lo) < 2**30  # int32 arithmetic is exact: half the traffic
        shifted = values.astype(np.int32 if small else np.int64)
        if lo:
            shifted -= lo
        escaped = shifted.view(np.uint32 if small else np.uint64) >= k  # negatives wrap to huge: one compare
        if escaped.any():
            shifted[escaped] = k
            return shifted.astype(np.int32, copy=False), values[escaped]
        return shifted.astype(np.int32, copy=False), values[:0]

    def _sparse_events(self, layout: _Layout, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Events of the sparse pixels in class-major order: gaps before each, counts, per-class boundaries."""
        n = frames.shape[0]
        nz = np.flatnonzero(frames)
        pos, pix = np.divmod(nz, frames.shape[1])
        keep = layout.sparse_pixel[pix]
        keys = layout.slot_of_pixel[pix[keep]] * n + pos[keep]
        sort = np.argsort(keys)
        keys, values = keys[sort], frames.reshape(-1)[nz[keep][sort]]
        n_sparse = int(np.count_nonzero(self.model.sparse))
        starts = layout.bounds[:n_sparse + 1].astype(np.int64) * n
        edges = np.searchsorted(keys, starts)
        gaps = np.empty_like(keys)
        gaps[1:] = keys[1:] - keys[:-1] - 1
        firsts = edges[:-1][edges[:-1] < edges[1:]]
        gaps[firsts] = keys[firsts] - starts[:-1][edges[:-1] < edges[1:]]
        return gaps, values, edges

    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, pixels) counts -> ANS words and the escaped raw values (in decoding order)."""
        coder = self._cs.stream.stack.AnsCoder()
        if len(self.layouts) == 1:
            escapes = self._encode_group(coder, self.layouts[0], frames)
        else:
            labels = self.groups(frames)
            order, ends = _by_group(labels, len(self.layouts))
            grouped = frames  # one copy, into the reused scratch: each group's rows are then a view
            if order is not None:
                grouped = np.take(frames, order, axis=0, out=self._scratch(frames.shape, frames.dtype))
            per_group: list[list[np.ndarray]] = []
            for g in range(len(self.layouts) - 1, -1, -1):  # a stack: the last group first
                if ends[g + 1] > ends[g]:
                    per_group.append(self._encode_group(coder, self.layouts[g], grouped[ends[g]:ends[g + 1]]))
            per_group.reverse()
            escapes = [part for group in per_group for part in group]
            coder.encode_reverse(labels, self.group_model)  # decoded first
        raw = np.concatenate(escapes) if escapes else np.zeros(0, np.uint64)
        return np.asarray(coder.get_compressed(), dtype=np.uint32), raw

    def _encode_group(self, coder: Any, layout: _Layout, frames: np.ndarray) -> list[np.ndarray]:
        """Push ``frames`` coded under ``layout`` onto ``coder``; their escaped values in decoding order."""
        n = frames.shape[0]
        gaps, values, edges = self._sparse_events(layout, frames)
        dense = np.ascontiguousarray(frames[:, layout.dense_pixels].T)  # (dense pixels, positions), class-major
        escapes: list[list[np.ndarray]] = []
        for i in range(len(layout.classes) - 1, -1, -1):  # a stack: encode backwards, decode forwards
            c, t = layout.classes[i], layout.classes[i].table
            if not c.sparse:
                a = c.start - layout.n_sparse_pixels
                symbols, raw = self._escaped(dense[a:a + c.members].reshape(-1), t, c.lo)
                coder.encode_reverse(symbols, self.models[t])
                escapes.append([raw])
                continue
            a, b = int(edges[i]), int(edges[i + 1])
            gbits, low = c.golomb_bits, c.low_bits
            symbols, raw_values = self._escaped(values[a:b], t, 1)
            coder.encode_reverse(symbols, self.models[t])
            g = gaps[a:b]
            if low:
                coder.encode_reverse((g & ((1 << low) - 1)).astype(np.int32), self.uniform(low))
            if gbits > low:
                coder.encode_reverse(((g >> low) & ((1 << (gbits - low)) - 1)).astype(np.int32), self.models[t + 2])
            symbols, raw_gaps = self._escaped(g >> gbits, t + 1)
            coder.encode_reverse(symbols, self.models[t + 1])
            expected, k = _count_scale(c.members * n, c.p_event)
            u = _zigzag((b - a) - expected)
            if k:
                coder.encode_reverse(np.array([u & ((1 << k) - 1)], np.int32), self.uniform(k))
            symbol, raw_count = self._escaped(np.array([u >> k], np.int64), len(self.models) - 1)
            coder.encode_reverse(symbol, self.count_model)
            escapes.append([raw_count, raw_gaps, raw_values])
        escapes.reverse()
        return [np.asarray(part, np.uint64) for group in escapes for part in group]

    def decode(self, words: np.ndarray, escapes: np.ndarray, n: int, dtype: np.dtype,
               out: np.ndarray | None = None) -> np.ndarray:
        """The inverse of ``encode``: (positions, pixels) counts in ``dtype``, into ``out`` if given (a worker
        decodes straight into shared memory)."""
        coder = self._cs.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        raw = _EscapeReader(escapes)
        if out is None:
            out = np.empty((n, self.layouts[0].order.size), dtype=dtype)
        if len(self.layouts) == 1:
            self._decode_group(coder, raw, self.layouts[0], out)
        else:
            order, ends = _by_group(coder.decode(self.group_model, n), len(self.layouts))
            grouped = out if order is None else self._scratch(out.shape, out.dtype)  # views, then one copy
            for g, layout in enumerate(self.layouts):
                if ends[g + 1] > ends[g]:
                    self._decode_group(coder, raw, layout, grouped[ends[g]:ends[g + 1]])
            if order is not None:
                out[order] = grouped
        raw.finish()
        return out

    def _decode_group(self, coder: Any, raw: _EscapeReader, layout: _Layout, out: np.ndarray) -> None:
        """Decode ``out``'s positions, coded under ``layout``, into it (C-contiguous rows)."""
        n = out.shape[0]
        dense = np.empty((layout.dense_pixels.size, n), dtype=out.dtype)
        events = _SparseEvents(n)
        for c in layout.classes:
            t = c.table
            if not c.sparse:
                values = raw.resolve(coder.decode(self.models[t], c.members * n), self.sizes[t], c.lo)
                a = c.start - layout.n_sparse_pixels
                np.copyto(dense[a:a + c.members], values.reshape(c.members, n), casting="unsafe")
                continue
            count = self._event_count(coder, raw, c, n)
            if count == 0:
                continue
            gaps = raw.resolve(coder.decode(self.models[t + 1], count), self.sizes[t + 1],
                               limit=(c.members * n) >> c.golomb_bits).astype(np.int64) << c.golomb_bits
            if c.golomb_bits > c.low_bits:  # as the encoder: a gap with no high bits has no table for them
                gaps |= coder.decode(self.models[t + 2], count) << c.low_bits
            if c.low_bits:
                gaps |= coder.decode(self.uniform(c.low_bits), count)
            events.add(c, gaps, raw.resolve(coder.decode(self.models[t], count), self.sizes[t], 1))
        out.fill(0)
        out[:, layout.dense_pixels] = dense.T
        events.scatter(out, layout.order)

    def _event_count(self, coder: Any, raw: _EscapeReader, c: _Class, n: int) -> int:
        """A sparse class's number of events in the chunk: its deviation from the expected number, zigzagged."""
        expected, k = _count_scale(c.members * n, c.p_event)
        u = int(raw.resolve(coder.decode(self.count_model, 1), self.sizes[-1])[0]) << k
        if k:
            u |= int(coder.decode(self.uniform(k), 1)[0])
        count = expected + _unzigzag(u)
        if not 0 <= count <= c.members * n:
            raise _corrupt(f"declares {count} events in a class of {c.members * n} pixels")
        return count


def _telling_pixels(model: PoissonModel) -> np.ndarray:
    """The ``_TELLING_PIXELS`` pixels that tell the groups apart best: expected count times the spread of the log
    class lambda between the groups (the log-likelihood a count there moves), in pixel order."""
    log_lam = np.log(model.class_lambda)[model.maps()]
    info = np.mean(np.exp(log_lam), axis=0) * np.var(log_lam, axis=0)
    candidates = np.flatnonzero(info > 0)
    keep = candidates[np.argsort(-info[candidates], kind="stable")[:_TELLING_PIXELS]]
    return np.sort(keep)


def _by_group(labels: np.ndarray, n_groups: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The positions sorted by group (stable; None where they already are) and each group's first index there."""
    ends = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(labels, minlength=n_groups), out=ends[1:])
    if labels.size < 2 or bool(np.all(labels[1:] >= labels[:-1])):
        return None, ends
    return np.argsort(labels, kind="stable"), ends


@dataclass(frozen=True)
class _Class:
    """One pixel class as the coder loops over it: plain ints, so the per-class work stays out of numpy."""

    sparse: bool
    table: int  # its first table
    start: int  # its first slot in the class-sorted pixel order
    members: int
    lo: int
    golomb_bits: int
    low_bits: int
    p_event: float

    @classmethod
    def all_of(cls, model: PoissonModel, bounds: np.ndarray) -> list[_Class]:
        return [cls(bool(model.sparse[c]), int(model.first_table[c]), int(bounds[c]), int(bounds[c + 1] - bounds[c]),
                    int(model.lo[c]), int(model.golomb_bits[c]), int(model.low_bits[c]), float(model.p_event[c]))
                for c in range(model.n_classes)]


class _EscapeReader:
    """Hands a chunk's escaped raw values to the symbol runs in decoding order, and checks they all get used."""

    def __init__(self, escapes: np.ndarray):
        self.escapes, self.used = np.asarray(escapes), 0

    def resolve(self, symbols: np.ndarray, size: int, lo: int = 0, limit: int | None = None) -> np.ndarray:
        """``symbols + lo``, each escape symbol (``size``) replaced by the next raw value (at most ``limit``)."""
        wide = lo + size >= 2**31
        if not symbols.size or int(symbols.max()) < size:  # the usual case: one pass to know there is no escape
            values = symbols.astype(np.int64) if wide else symbols
            if lo:
                values += lo
            return values
        escaped = symbols == size
        n_esc = int(np.count_nonzero(escaped))
        if self.used + n_esc > self.escapes.size:
            raise _corrupt("holds fewer escaped values than its symbols need")
        taken = self.escapes[self.used:self.used + n_esc]
        if limit is not None and taken.size and int(taken.max()) > limit:
            raise _corrupt("places an event outside its class")
        values = symbols.astype(np.int64)
        values += lo
        values[escaped] = taken.astype(np.int64)
        self.used += n_esc
        return values

    def finish(self) -> None:
        if self.used != self.escapes.size:
            raise _corrupt("has unused escaped values")


class _SparseEvents:
    """The sparse classes' decoded events, placed into the frame together (per-class numpy calls cost more than
    the work on a class's few events)."""

    def __init__(self, n: int):
        self.n = n
        self.gaps: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.first: list[int] = []  # each class's first key (slot * n + position)
        self.span: list[int] = []  # its number of keys

    def add(self, c: _Class, gaps: np.ndarray, values: np.ndarray) -> None:
        self.gaps.append(gaps)
        self.values.append(values)
        self.first.append(c.start * self.n)
        self.span.append(c.members * self.n)

    def scatter(self, out: np.ndarray, order: np.ndarray) -> None:
        """Gaps -> keys (one running sum over every class, each class's first step shifted to its start), then the
        counts into ``out`` at (position, pixel)."""
        if not self.gaps:
            return
        counts = np.array([g.size for g in self.gaps], dtype=np.int64)
        heads = np.cumsum(counts) - counts
        steps = np.concatenate(self.gaps)
        steps += 1  # a key is the previous one + gap + 1; gaps are >= 0 by construction (escapes are bounded)
        sums = np.add.reduceat(steps, heads)  # each class's last key + 1 relative to its start
        if np.any(sums > np.array(self.span)):
            raise _corrupt("places an event outside its class")
        # each class's keys must start at its first key, not after the previous class's last one (-1: keys count
        # from 0): shift its head step by what that takes beyond the shifts of the classes before it
        steps[heads] += np.diff(np.array(self.first, dtype=np.int64) - (np.cumsum(sums) - sums) - 1, prepend=0)
        keys = np.cumsum(steps, out=steps)
        slot = keys // self.n
        keys -= slot * self.n  # the position within the chunk
        keys *= out.shape[1]
        keys += order[slot]
        flat = out.reshape(-1)
        if not np.shares_memory(flat, out):  # pragma: no cover - every caller passes a C-contiguous frame
            raise ValueError("decode needs a C-contiguous output")
        flat[keys] = np.concatenate(self.values).astype(out.dtype, copy=False)


def default_chunk_rows(shape: tuple[int, ...], dtype: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Scan rows per coded chunk for about ``chunk_bytes`` of dense data (at least one row)."""
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    return max(1, min(int(shape[0]), chunk_bytes // max(1, row)))


class _Writer:
    """Appends coded chunks to an open HDF5 file, in scan-row order."""

    def __init__(self, f: h5py.File, model: PoissonModel, shape: tuple[int, int, int, int], dtype: np.dtype):
        self.f, self.shape, self.dtype = f, shape, dtype
        # the coder's version is recorded: its fixed-point quantisation of the tables is part of the bitstream
        f.attrs.update({"format": _fixed(FORMAT_NAME), "version": FORMAT_VERSION, "shape": np.asarray(shape, np.int64),
                        "dtype": _fixed(dtype.str), "constriction_version": _fixed(_version()),
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
        """Each block checked, then cut into chunks of ``chunk_rows`` scan rows: (rows, (positions, pixels))."""
        frame = self.shape[2] * self.shape[3]
        for block in blocks:
            data = np.ascontiguousarray(block.data)
            if block.start != self.next_row or data.shape[1:] != self.shape[1:] or data.dtype != self.dtype:
                raise StempressError(f"entropy codec: block at row {block.start} of shape {data.shape} "
                                     f"{data.dtype} does not continue cube {self.shape} {self.dtype} at row "
                                     f"{self.next_row}; feed whole scan rows in order, in the declared dtype")
            refuse_non_counts(data, block.start, "entropy codec")  # counts only, with the events' message
            for a in range(0, data.shape[0], chunk_rows):
                part = data[a:a + chunk_rows]
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
        writer = _Writer(f, model, shape, dtype)
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
        coder = _Coder(model)
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
        self._coder: _Coder | None = None  # built on the first in-process decode
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
            self._coder = _Coder(self.model)
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
