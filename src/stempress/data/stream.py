"""Streaming sources: blocks in arrival order (a live detector), with no random access and no partitions.

``BlockStream`` turns any iterable of ``Block`` s into such a source, so a receiver, a test or a notebook
can feed the engine the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stempress.data.base import Block, check_shape_dtype


@runtime_checkable
class StreamSource(Protocol):
    """What a stream offers: the cube it will fill, and its blocks once, in arrival order."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    metadata: dict[str, Any]

    def blocks(self) -> Iterator[Block]: ...

    def close(self) -> None: ...


@dataclass
class BlockStream:
    """An iterable of blocks of a cube of ``shape`` and ``dtype``, read once."""

    source_blocks: Iterable[Block]
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    name: str = "stream"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)
        self.shape = check_shape_dtype(tuple(self.shape), self.dtype, self.name)

    def blocks(self) -> Iterator[Block]:
        yield from self.source_blocks

    def close(self) -> None:
        """Nothing held."""


def regroup(blocks: Iterable[Block], multiple: int, scan_y: int) -> Iterator[Block]:
    """Consecutive blocks joined so each starts on a multiple of ``multiple`` rows (sinks with chunked outputs
    need whole chunk rows); blocks must arrive in row order. Validity and frame ids are joined with the data."""
    if multiple <= 1:
        yield from blocks
        return
    joining = Regrouper(multiple, scan_y)
    for block in blocks:
        joined = joining.add(block)
        if joined is not None:
            yield joined
    rest = joining.flush()
    if rest is not None:
        yield rest


class Regrouper:
    """``regroup`` one block at a time, for a caller that feeds other sinks between blocks (the engine's stream
    lanes): ``add`` holds a block until its rows end on a multiple of ``multiple`` (or the scan's end), then
    returns the held blocks joined; ``flush`` returns what is still held when the stream ends."""

    def __init__(self, multiple: int, scan_y: int) -> None:
        self.multiple, self.scan_y = max(1, int(multiple)), int(scan_y)
        self.held: list[Block] = []

    def add(self, block: Block) -> Block | None:
        if self.multiple == 1 and not self.held:
            return block
        self.held.append(block)
        if block.stop % self.multiple == 0 or block.stop >= self.scan_y:
            return self.flush()
        return None

    def flush(self) -> Block | None:
        if not self.held:
            return None
        held, self.held = self.held, []
        return join(held)


def join(blocks: list[Block]) -> Block:
    """Adjacent blocks as one."""
    if len(blocks) == 1:
        return blocks[0]
    for a, b in itertools.pairwise(blocks):
        if b.start != a.stop:
            raise ValueError(f"blocks at rows {a.start} and {b.start} are not adjacent; a stream must be in row order")
    data = _adjacent(blocks) if len(blocks) > 1 else None
    if data is None:
        data = np.concatenate([b.data for b in blocks])

    def stacked(name: str, default: Any) -> np.ndarray | None:
        parts = [getattr(b, name) for b in blocks]
        if all(p is None for p in parts):
            return None
        return np.concatenate([default(b) if p is None else p for b, p in zip(blocks, parts, strict=True)])

    valid = stacked("valid", lambda b: np.ones(b.data.shape[:2], bool))
    ids = stacked("frame_ids", lambda b: np.full(b.data.shape[:2], -1, np.int64))
    return Block(blocks[0].start, data, valid, ids)


def _adjacent(blocks: list[Block]) -> np.ndarray | None:
    """The blocks' data as one view when they lie back to back in one buffer (a live receiver's rows, views of one
    slab), so joining them copies nothing; None otherwise."""
    datas = [b.data for b in blocks]
    base = datas[0].base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous:
        return None
    first = datas[0]
    if any(d.base is not base or not d.flags.c_contiguous or d.dtype != first.dtype or d.shape[1:] != first.shape[1:]
           for d in datas):
        return None
    addresses = [d.__array_interface__["data"][0] for d in datas]
    if any(addresses[i] + datas[i].nbytes != addresses[i + 1] for i in range(len(datas) - 1)):
        return None
    offset = addresses[0] - base.__array_interface__["data"][0]
    total = sum(d.nbytes for d in datas)
    flat = base.reshape(-1).view(np.uint8)[offset:offset + total]
    return flat.view(first.dtype).reshape(sum(d.shape[0] for d in datas), *first.shape[1:])
