"""Entropy-code chunks in worker processes: constriction holds the GIL, so only processes put every core to work.

Why it is built this way. The timings below are one-off observations on the 2-core development machine that
no script reproduces; ``benchmarks/event_codec.py`` prints the pool's start-up and the end-to-end speeds:

* One pool per process (per worker count asked for), created on first use, reused by every later call and
  shut down at exit. It starts with ``forkserver`` (``spawn`` where there is none): forking a process that may
  hold HDF5 handles and threads is unsafe, while the fork server is a fresh process that imports stempress once
  (``PRELOAD``), so the first pool starts in ~0.4 s and a later one in ~0.03 s (``spawn``: ~0.45 s every time,
  each worker importing stempress).
  As with any ``spawn``/``forkserver`` pool, workers import the main module: a script keeps its work under
  ``if __name__ == "__main__":``. Workers ignore Ctrl-C (the caller handles it) and exit if the caller dies.
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
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import secrets
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import shared_memory
from typing import Any, TypeVar

import numpy as np

from stempress.cores import resolve_workers
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
#: Modules the fork server imports once, so workers fork with them loaded (``__main__`` is the default).
PRELOAD = ["__main__", "stempress.data.entropy"]
#: A worker's malloc: allocations below this come from the heap (glibc's ceiling for it: 32 MiB on 64 bits) ...
MMAP_THRESHOLD = 32 * 1024**2
#: ... and free heap above this is given back to the kernel (see ``_keep_heap``).
TRIM_THRESHOLD = 64 * 1024**2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_PAGE = 4096


# --- the pool ---------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_pools: dict[int, ProcessPoolExecutor] = {}  # by worker count: a call never shuts down a pool another one uses


def start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``; never plain ``fork`` (see the module doc)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def get_pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool of ``workers`` workers, created on first use (again if one of its workers died)."""
    with _lock:
        pool = _pools.get(workers)
        if pool is None or getattr(pool, "_broken", False):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)  # its workers are already gone
            ctx = multiprocessing.get_context(start_method())
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(PRELOAD)  # only read when the fork server starts
            pool = _pools[workers] = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        return pool


def start_pool(workers: int | None = None) -> int:
    """Start every worker now and wait until each has run a task (a benchmark calls this so its timings leave
    out the one-off start); the worker count."""
    workers = resolve_workers(workers)
    pool, seen = get_pool(workers), set()
    for _ in range(100):  # a task lasts 20 ms, so one quick worker cannot take them all while another starts
        seen |= {future.result() for future in [pool.submit(_pid_after, 0.02) for _ in range(workers)]}
        if len(seen) >= workers:
            break
    return workers


def shutdown_pool() -> None:
    """Stop the workers (waits for chunks being coded, drops queued ones) and free the idle arena; the next call
    starts a new pool."""
    with _lock:
        _shutdown_locked()


def _shutdown_locked() -> None:
    global _idle
    while _pools:
        _pools.popitem()[1].shutdown(wait=True, cancel_futures=True)
    if _idle is not None:
        _idle.close()
        _idle = None


def _forget_pool() -> None:
    """In a forked child the parent's pools and arena are not ours (their threads and pipes are the parent's)."""
    global _lock, _idle
    _pools.clear()
    _lock, _idle = threading.Lock(), None


def _discard_broken(pool: ProcessPoolExecutor) -> None:
    with _lock:
        for workers in [k for k, v in _pools.items() if v is pool]:
            del _pools[workers]
    pool.shutdown(wait=False, cancel_futures=True)


atexit.register(shutdown_pool)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


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


_idle: _Arena | None = None  # the last call's arena, for the next call; freed by ``shutdown_pool`` and at exit


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
    """One call's chunks through the process pool: an arena of slots, results taken in submission order.

    Use as a context manager. Leaving it normally keeps the arena for the next call; leaving it on an error or
    Ctrl-C cancels queued chunks and removes the arena (chunks a worker is still coding finish into it, unseen).
    """

    def __init__(self, executor: ProcessPoolExecutor, arena: _Arena, n_slots: int):
        self.executor, self.arena = executor, arena
        self.free = list(range(n_slots))
        self.pending: deque[tuple[Future[Any], int, Any]] = deque()

    @classmethod
    def open(cls, blob: ModelBlob, workers: int, slot_bytes: int) -> ChunkPool | None:
        """A pool for chunks of up to ``slot_bytes``, or None where /dev/shm cannot hold the slots (the caller
        then codes in-process)."""
        wanted = IN_FLIGHT_PER_WORKER * workers
        arena = _lease(blob, slot_bytes, wanted)
        if arena is None:
            return None
        try:
            return cls(get_pool(workers), arena, wanted)
        except BaseException:
            arena.close()
            raise

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.pending:  # every chunk taken back: no worker can still write into the arena
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
        while self.pending:
            yield self._take(collect)

    def _died(self) -> StempressError:
        _discard_broken(self.executor)
        return StempressError("an entropy-code worker process died (out of memory or killed; from a script, keep "
                              "its work under `if __name__ == '__main__':`, as workers import the main module); "
                              "the write or read stopped: retry, or pass workers=1")

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
                                 "(shutdown_pool, or the interpreter exiting); retry") from None
        self.pending.popleft()
        self.free.append(slot)  # reused only when the caller asks for the next item, after using this one
        return tag, collect(result, slot)


# --- the worker's side -----------------------------------------------------------------------------------------------

_arenas: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()  # kept mapped: no page faults per chunk
_coders: OrderedDict[str, Any] = OrderedDict()


def _init_worker() -> None:
    """Ctrl-C is the caller's to handle; when the caller dies (even by SIGKILL) the worker leaves too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_heap()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True, name="stempress-orphan").start()


def _keep_heap() -> None:
    """Keep freed temporaries on the heap. glibc's default gives a chunk's big temporaries back to the kernel
    between tasks, and a worker then spent ~20 % of its time faulting ~2000 fresh pages per 4 MiB chunk back
    in (measured; coding in one long loop does not). Only the worker's own allocator changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: leave its allocator alone
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


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
        from stempress.data.entropy import _Coder

        coder = _coders[where.digest] = _Coder(pickle.loads(shm.buf[:where.model_bytes]))
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
