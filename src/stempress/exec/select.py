"""Executors by name, as commands and the CLI's ``--executor`` ask for them."""

from __future__ import annotations

from collections.abc import Callable

from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.exec.local import InlineExecutor, ThreadExecutor


def _processes(workers: int | None) -> Executor:
    from stempress.exec.processes import ProcessExecutor

    return ProcessExecutor(workers)


def _dask(workers: int | None, address: str | None = None) -> Executor:
    from stempress.exec.dask import DaskExecutor  # distributed loads only when asked for

    return DaskExecutor(address, workers)


#: Name -> factory(workers). A new executor registers here and every command can use it.
EXECUTORS: dict[str, Callable[[int | None], Executor]] = {
    "inline": InlineExecutor,
    "threads": ThreadExecutor,
    "processes": _processes,
    "dask": _dask,
}
#: Executors that take a place to run (``make_executor("dask", address="tcp://host:8786")`` or ``"dask:ADDRESS"``).
WITH_ADDRESS = {"dask"}


def make_executor(kind: str | Executor | None = None, workers: int | None = None, *,
                  address: str | None = None) -> Executor:
    """An executor by name (default threads on every usable core), or the one given. ``address`` (or a name such
    as ``dask:tcp://host:8786`` / ``dask:local:4``) says where an executor that runs elsewhere runs."""
    if isinstance(kind, Executor):
        return kind
    name = (kind or "threads").strip()
    head, sep, tail = name.partition(":")
    if sep and head.strip().lower() in WITH_ADDRESS:
        name, address = head, tail
    name = name.strip().lower()
    if name not in EXECUTORS:
        raise StempressError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if address is not None:
        if name not in WITH_ADDRESS:
            raise StempressError(f"executor {name!r} runs here and takes no address; use dask:{address}")
        return EXECUTORS[name](workers, address)  # type: ignore[call-arg]
    return EXECUTORS[name](workers)
