"""How many cores to use: one home for the count every parallel path (store, verify, entropy code, bench) shares."""

from __future__ import annotations

import os

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
