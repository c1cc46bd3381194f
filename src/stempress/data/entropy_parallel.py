"""Entropy-code chunks on an executor's worker processes: constriction holds the GIL, so only processes put every
core to work. The pool is the caller's (``stempress.exec.ProcessExecutor``: its workers ignore Ctrl-C, exit if the
caller dies and keep their heap); this module only hands it chunks, so it takes any object with the ``Executor``
interface (``submit``, ``workers``) whose workers share this machine's memory.

Why it is built this way. The timings below are one-off observations on the 2-core development machine that
no script reproduces; ``benchmarks/event_codec.py`` prints the end-to-end speeds:

* Dense chunks never go through a pipe (pickling a 4 MiB chunk, the default then, there and back cost ~19 ms, longer
  than coding it; via shared memory ~0.5 ms): the caller copies a chunk into a slot of a shared-memory arena and a
  worker encodes it from there, or decodes straight into a slot that the caller copies out. Only the ANS words and
  escapes (a few % of the dense bytes) are pickled. The arena is kept for the next call (fresh shared memory costs
  ~0.7 ms per MiB to touch, as much as decoding a sparse chunk) and removed at exit, or at once after an error.
* The model travels in the arena's head; each worker keeps the coder built from it keyed by a digest, so
  constriction's tables are built once per model and worker, not per chunk.
* At most ``IN_FLIGHT_PER_WORKER`` chunks per worker are in flight (memory O(workers x chunk)) and results are
  taken in submission order, so a file is byte-identical whatever the worker count. Each chunk costs the caller
  ~0.2 ms of pool overhead (a 4 MiB chunk coded in 3-13 ms) plus its copy.
* A file is coded from an iterable (``encode``, ``decode``: the pool pulls); a live stream pushes one chunk at a
  time as its rows come (``put_encode`` / ``take_encoded``, ``full`` and ``ready`` to pace it:
  ``events.entropy_stream``), on the same slots and workers, and may code here a chunk whose worker died, from its
  slot (``take_encoded(fallback=)``), as a stream cannot be read again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import math
import os
import pickle
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import shared_memory
from typing import Any, Protocol, TypeVar

import numpy as np

from stempress.data.entropy_coder import ChunkCoder
from stempress.data.entropy_model import PoissonModel
from stempress.errors import StempressError

T = TypeVar("T")

#: Chunks in flight per worker: one being coded and one queued, so a worker never waits for the caller.
IN_FLIGHT_PER_WORKER = 2
#: Share of /dev/shm's free space one arena may take: a container's /dev/shm can be small (Docker: 64 MB), and
#: touching a page beyond it kills the process with SIGBUS instead of raising.
SHM_SHARE = 0.5
#: Coders (one per model) a worker keeps.
CACHED_MODELS = 4
#: Arenas a worker keeps mapped (two readers in turn each have one).
MAPPED_ARENAS = 2
_PAGE = 4096


class ChunkExecutor(Protocol):
    """What the coder needs of an executor (``stempress.exec.Executor``'s interface; ``data`` sits below ``exec``,
    so it is named by shape, not imported): worker processes on this machine, as ``ProcessExecutor`` has."""

    workers: int
    remote: bool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]: ...


def parallel(executor: ChunkExecutor | None) -> ChunkExecutor | None:
    """The executor when its workers are other processes (``remote``) and more than one, else None: code in this
    process (threads would gain nothing, constriction holding the GIL, and share the workers' coder caches)."""
    if executor is None or not getattr(executor, "remote", False) or int(getattr(executor, "workers", 1)) < 2:
        return None
    return executor


_lock = threading.Lock()


def free_arena() -> None:
    """Remove the idle arena kept for the next call (at exit, or to give /dev/shm back now)."""
    global _idle
    with _lock:
        arena, _idle = _idle, None
    if arena is not None:
        arena.close()


def _forget_arena() -> None:
    """In a forked child the parent's arena is not ours."""
    global _lock, _idle
    _lock, _idle = threading.Lock(), None


atexit.register(free_arena)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_arena)


# --- the arena: the model and the chunk slots in one shared-memory segment ----------------------------------------

def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


@dataclass(frozen=True)
class ModelBlob:
    """A model pickled for the workers (without the per-pixel lambdas, which coding never reads) and its digest."""

    data: bytes
    digest: str

    @classmethod
    def of(cls, model: PoissonModel) -> ModelBlob:
        data = pickle.dumps(replace(model, lam=np.zeros(0)), protocol=pickle.HIGHEST_PROTOCOL)
        return cls(data, hashlib.blake2b(data, digest_size=16).hexdigest())


@dataclass(frozen=True)
class _Where:
    """What a worker needs to find its chunk and model: the arena, the model's place in it, the slot's offset."""

    arena: str
    digest: str
    model_bytes: int
    offset: int


def _free_shm_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:  # no /dev/shm (macOS): no known limit
        return None
    return st.f_bavail * st.f_frsize


def slots_that_fit(slot_bytes: int, head_bytes: int, wanted: int) -> int:
    """How many of ``wanted`` slots fit in this machine's share of /dev/shm."""
    free = _free_shm_bytes()
    if free is None:
        return wanted
    return max(0, min(wanted, int((free * SHM_SHARE - head_bytes) // slot_bytes)))


class _Arena:
    """One shared-memory segment: a pickled model in its head, then ``n_slots`` page-aligned slots.

    Kept between calls (see ``_lease``): touching fresh shared memory cost ~0.7 ms per MiB (observed once, no
    script repeats it) in the caller and again in each worker, as much as decoding a sparse chunk, while a reused
    arena is already mapped everywhere.
    """

    def __init__(self, head: int, slot_bytes: int, n_slots: int):
        self.head, self.slot_bytes, self.n_slots = _round_up(head), _round_up(slot_bytes), n_slots
        # a long random name: a worker keeps arenas mapped by name, so a name must never come back
        self.shm = shared_memory.SharedMemory(f"stempress_{secrets.token_hex(8)}", create=True,
                                              size=self.head + self.slot_bytes * n_slots)
        self.blob: ModelBlob | None = None

    def fits(self, blob: ModelBlob, slot_bytes: int, n_slots: int) -> bool:
        return len(blob.data) <= self.head and slot_bytes <= self.slot_bytes and n_slots <= self.n_slots

    def load(self, blob: ModelBlob) -> None:
        """Put ``blob`` in the head (workers read it only for a digest they have not seen)."""
        if self.blob is None or self.blob.digest != blob.digest:
            self.shm.buf[:len(blob.data)] = blob.data
            self.blob = blob

    def where(self, slot: int) -> _Where:
        assert self.blob is not None
        return _Where(self.shm.name, self.blob.digest, len(self.blob.data), self.head + slot * self.slot_bytes)

    def view(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A slot as an array; drop it before the arena closes (a live view keeps the mapping)."""
        if math.prod(shape) * np.dtype(dtype).itemsize > self.slot_bytes:
            raise ValueError(f"a chunk of {shape} {np.dtype(dtype)} does not fit a slot of {self.slot_bytes} bytes")
        return _view(self.shm, self.head + slot * self.slot_bytes, shape, dtype)

    def close(self) -> None:
        """Unlink first (the name goes even if a view still pins the mapping), then unmap."""
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()
        _close_quietly(self.shm)


_idle: _Arena | None = None  # the last call's arena, for the next call; freed by ``free_arena`` and at exit


def _lease(blob: ModelBlob, slot_bytes: int, wanted: int) -> _Arena | None:
    """The idle arena if it is big enough, else a new one; None where /dev/shm cannot hold enough slots."""
    global _idle
    with _lock:
        arena, _idle = _idle, None
    if arena is not None and not arena.fits(blob, slot_bytes, wanted):
        arena.close()
        arena = None
    if arena is None:
        if slots_that_fit(_round_up(slot_bytes), _round_up(len(blob.data)), wanted) < wanted:
            return None
        arena = _Arena(len(blob.data), slot_bytes, wanted)
    try:
        arena.load(blob)
    except BaseException:
        arena.close()
        raise
    return arena


def _give_back(arena: _Arena) -> None:
    """Keep ``arena`` for the next call (only once no worker can still write into it); one is kept at most."""
    global _idle
    with _lock:
        arena, _idle = _idle, arena
    if arena is not None:
        arena.close()


_unclosed: list[shared_memory.SharedMemory] = []  # mappings a live view pinned; retried on the next close


def _close_quietly(shm: shared_memory.SharedMemory) -> None:
    """Unmap; a mapping still viewed (an exception's traceback can hold one) is kept until its views are gone."""
    for old in [*_unclosed, shm]:
        try:
            old.close()
        except BufferError:
            if old not in _unclosed:
                _unclosed.append(old)
        else:
            if old in _unclosed:
                _unclosed.remove(old)


def _view(shm: shared_memory.SharedMemory, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.ndarray(shape, dtype=dtype, buffer=shm.buf, offset=offset)


# --- the caller's side of one call ---------------------------------------------------------------------------------

class ChunkPool:
    """One call's chunks through the executor's workers: an arena of slots, results taken in submission order.

    Use as a context manager. Leaving it normally keeps the arena for the next call; leaving it on an error or
    Ctrl-C cancels queued chunks and removes the arena (chunks a worker is still coding finish into it, unseen).
    """

    def __init__(self, executor: ChunkExecutor, arena: _Arena, n_slots: int):
        self.executor, self.arena = executor, arena
        self.free = list(range(n_slots))
        self.pending: deque[tuple[Future[Any], int, Any]] = deque()

    @classmethod
    def open(cls, blob: ModelBlob, executor: ChunkExecutor, slot_bytes: int) -> ChunkPool | None:
        """Slots for chunks of up to ``slot_bytes`` on ``executor``'s workers, or None where /dev/shm cannot hold
        them (the caller then codes in-process)."""
        wanted = IN_FLIGHT_PER_WORKER * int(executor.workers)
        arena = _lease(blob, slot_bytes, wanted)
        if arena is None:
            return None
        return cls(executor, arena, wanted)

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, keep: bool = True) -> None:
        """Keep the arena for the next call (``keep``, once every chunk was taken back: no worker can still write
        into it), else cancel the queued chunks and remove it."""
        if keep and not self.pending:
            _give_back(self.arena)
            return
        while self.pending:
            self.pending.popleft()[0].cancel()
        self.arena.close()

    def encode(self, pieces: Iterable[tuple[T, np.ndarray]]) -> Iterator[tuple[T, tuple[np.ndarray, np.ndarray]]]:
        """(tag, frames) -> (tag, (words, escapes)) in order; frames are copied into a slot, so they may be reused."""

        def submit(frames: np.ndarray, slot: int) -> Future[Any]:
            np.copyto(self.arena.view(slot, frames.shape, frames.dtype), frames)
            return self.executor.submit(_encode, self.arena.where(slot), frames.shape, frames.dtype.str)

        return self._ordered(pieces, submit, lambda result, slot: result)

    def decode(self, items: Iterable[tuple[T, np.ndarray, np.ndarray, tuple[int, int], np.dtype]]
               ) -> Iterator[tuple[T, np.ndarray]]:
        """(tag, words, escapes, (positions, pixels), dtype) -> (tag, frames) in order. The frames are a view
        of a slot, valid until the next item is taken: copy what you keep."""

        def submit(item: tuple[np.ndarray, np.ndarray, tuple[int, int], np.dtype], slot: int) -> Future[Any]:
            words, escapes, shape, dtype = item
            return self.executor.submit(_decode, self.arena.where(slot), words, escapes, shape, np.dtype(dtype).str)

        def collect(shape_dtype: tuple[tuple[int, int], str], slot: int) -> np.ndarray:
            return self.arena.view(slot, shape_dtype[0], np.dtype(shape_dtype[1]))

        return self._ordered(((tag, rest) for tag, *rest in items), submit, collect)

    def _ordered(self, items: Iterable[tuple[T, Any]], submit: Callable[[Any, int], Future[Any]],
                 collect: Callable[[Any, int], Any]) -> Iterator[tuple[T, Any]]:
        """Keep every slot busy; yield each result in submission order as soon as it is the oldest."""
        for tag, item in items:
            if not self.free:
                yield self._take(collect)
            self._put(tag, item, submit)
        while self.pending:
            yield self._take(collect)

    def _put(self, tag: Any, item: Any, submit: Callable[[Any, int], Future[Any]]) -> None:
        slot = self.free.pop()
        try:
            future = submit(item, slot)
        except BrokenProcessPool:
            self.free.append(slot)
            raise self._died() from None
        except BaseException:
            self.free.append(slot)
            raise
        self.pending.append((future, slot, tag))

    # -- pushed one chunk at a time (a stream: ``events.entropy_stream``), where ``encode`` pulls an iterable ----------
    @property
    def full(self) -> bool:
        """Every slot holds a chunk not taken back: ``take_encoded`` before the next ``put_encode``."""
        return not self.free

    @property
    def ready(self) -> bool:
        """The oldest chunk is coded (``take_encoded`` returns without waiting)."""
        return bool(self.pending) and self.pending[0][0].done()

    def put_encode(self, tag: Any, pieces: Sequence[np.ndarray]) -> None:
        """Copy ``pieces`` (2-D frames of one dtype, one after the other: a chunk's rows as they came, never joined
        first) into a free slot and queue the chunk for coding."""
        shape = (sum(p.shape[0] for p in pieces), pieces[0].shape[1])
        dtype = np.dtype(pieces[0].dtype)

        def submit(_: None, slot: int) -> Future[Any]:
            view, at = self.arena.view(slot, shape, dtype), 0
            for piece in pieces:
                view[at:at + piece.shape[0]] = piece
                at += piece.shape[0]
            del view  # no view outlives the call: the arena can close
            return self.executor.submit(_encode, self.arena.where(slot), shape, dtype.str)

        self._put((tag, shape, dtype), None, submit)

    def take_encoded(self, fallback: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        """The oldest chunk's (tag, (words, escapes)), waiting for it. With ``fallback`` (the model's coder in this
        process: the same words), a chunk whose worker died or was shut down is coded here from its slot instead of
        failing."""
        future, slot, (tag, shape, dtype) = self.pending[0]
        if fallback is not None:
            try:
                future.result()
            except (BrokenProcessPool, CancelledError):
                view = self.arena.view(slot, shape, dtype)
                result = fallback(view)
                del view
                self.pending.popleft()
                self.free.append(slot)
                return tag, result
            except Exception:  # a coding error: ``_take`` words it
                pass
        return tag, self._take(lambda result, _: result)[1]

    @staticmethod
    def _died() -> StempressError:
        return StempressError("an entropy-code worker process died (out of memory or killed; from a script, keep "
                              "its work under `if __name__ == '__main__':`, as workers import the main module); "
                              "the write or read stopped: retry (the executor starts new workers), or use one "
                              "process")

    def _take(self, collect: Callable[[Any, int], Any]) -> tuple[Any, Any]:
        future, slot, tag = self.pending[0]
        try:
            result = future.result()
        except StempressError as exc:  # the worker's one-line message, without its remote traceback
            raise StempressError(str(exc)) from None
        except BrokenProcessPool:
            raise self._died() from None
        except CancelledError:
            raise StempressError("the entropy-code workers were shut down during the write or read "
                                 "(their executor was closed, or the interpreter is exiting); retry") from None
        self.pending.popleft()
        self.free.append(slot)  # reused only when the caller asks for the next item, after using this one
        return tag, collect(result, slot)


# --- the worker's side -----------------------------------------------------------------------------------------------

_arenas: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()  # kept mapped: no page faults per chunk
_coders: OrderedDict[str, Any] = OrderedDict()


def _attach(name: str) -> shared_memory.SharedMemory:
    """The call's arena, mapped once; the least recently used beyond ``MAPPED_ARENAS`` is unmapped."""
    shm = _arenas.get(name)
    if shm is None:
        shm = _arenas[name] = shared_memory.SharedMemory(name)  # the caller's resource tracker; it unlinks
        while len(_arenas) > MAPPED_ARENAS:
            _close_quietly(_arenas.popitem(last=False)[1])
    _arenas.move_to_end(name)
    return shm


def _coder(where: _Where, shm: shared_memory.SharedMemory) -> Any:
    """The coder for the arena's model, built once per model (constriction's tables take milliseconds)."""
    coder = _coders.get(where.digest)
    if coder is None:
        coder = _coders[where.digest] = ChunkCoder(pickle.loads(shm.buf[:where.model_bytes]))
        while len(_coders) > CACHED_MODELS:
            _coders.popitem(last=False)
    _coders.move_to_end(where.digest)
    return coder


def _encode(where: _Where, shape: tuple[int, int], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    shm = _attach(where.arena)
    return _coder(where, shm).encode(_view(shm, where.offset, shape, np.dtype(dtype)))


def _decode(where: _Where, words: np.ndarray, escapes: np.ndarray, shape: tuple[int, int],
            dtype: str) -> tuple[tuple[int, int], str]:
    shm = _attach(where.arena)
    _coder(where, shm).decode(words, escapes, shape[0], np.dtype(dtype), out=_view(shm, where.offset, shape,
                                                                                   np.dtype(dtype)))
    return shape, dtype
