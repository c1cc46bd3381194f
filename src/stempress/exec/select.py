"""Executors by name, as commands and the CLI's ``--executor`` ask for them."""

from __future__ import annotations

from collections.abc import Callable

from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.exec.local import InlineExecutor, ThreadExecutor


def _processes(workers: int | None) -> Executor:
    from stempress.exec.processes import ProcessExecutor

    return ProcessExecutor(workers)


#: Name -> factory(workers). A new executor registers here and every command can use it.
EXECUTORS: dict[str, Callable[[int | None], Executor]] = {
    "inline": InlineExecutor,
    "threads": ThreadExecutor,
    "processes": _processes,
}


def make_executor(kind: str | Executor | None = None, workers: int | None = None) -> Executor:
    """An executor by name (default threads on every usable core), or the one given."""
    if isinstance(kind, Executor):
        return kind
    name = (kind or "threads").strip().lower()
    if name not in EXECUTORS:
        raise StempressError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](workers)
