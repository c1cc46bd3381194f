"""How many cores to use, and how a child process is started: one home for what every parallel path (store, verify,
entropy code, bench, the live receiver) shares."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
from collections.abc import Sequence

from stempress.errors import StempressError


def usable_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``: respects taskset and container CPU sets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """``None``: every usable core; else the count asked for, at least 1."""
    if workers is None:
        return usable_cores()
    if int(workers) < 1:
        raise StempressError(f"workers must be at least 1, got {workers}; omit it to use every core")
    return int(workers)


def start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``; never plain ``fork``: forking a process that runs
    HDF5, BLAS or receiver threads can deadlock, while the fork server is a fresh process."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def child_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """The context child processes start from (``start_method``); ``preload``: modules the fork server imports once
    so each child forks with them loaded. The fork server is one per process and reads its preload list only when it
    starts, so the first caller's list is the one that counts (a module missing from it is imported by the child)."""
    ctx = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(list(preload))
    return ctx
