"""The chunk coder of the entropy-coded event format: one chunk of scan positions' counts to the ANS stream of
``constriction`` and back, under a fitted ``PoissonModel`` (its classes, per-group class maps, the escape code for
counts the tables do not hold). The file format (``entropy``) and the worker processes (``entropy_parallel``) both
use it, so it sits below them."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.data.entropy_model import (
    PoissonModel,
)
from stempress.errors import StempressError


def _constriction() -> Any:
    try:
        import constriction
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StempressError("the entropy codec needs constriction: pip install 'constriction>=0.4'") from exc
    return constriction


def constriction_version() -> str:
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


class ChunkCoder:
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
        nz = np.flatnonzero(frames != 0)  # numpy's nonzero is ~3x faster on bool than on uint16
        pos, pix = np.divmod(nz, frames.shape[1])
        keep = layout.sparse_pixel[pix]
        slots, pos = layout.slot_of_pixel[pix[keep]], pos[keep]
        # class-major order: the events come position-major, so a stable sort by slot alone (unique per pixel)
        # orders them by (slot, position), as the keys; on 16 bits numpy sorts it by radix, ~10x faster
        sort = np.argsort(slots.astype(np.uint16) if layout.order.size <= 1 << 16 else slots, kind="stable")
        keys, values = slots[sort] * n + pos[sort], frames.reshape(-1)[nz[keep][sort]]
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
