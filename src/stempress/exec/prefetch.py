"""Read ahead: the next blocks come from a thread while the current one is consumed, so reading (I/O, MIB
decoding, HDF5 decompression) overlaps the sinks' work. Bounded, and stopped however the consumer ends."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` produced by a thread at most ``depth`` ahead of the consumer (``depth <= 0``: no thread)."""
    if depth <= 0:
        yield from items
        return
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # raised again in the consumer's thread
            put(("error", exc))

    thread = threading.Thread(target=produce, name="stempress-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
