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
    held: list[Block] = []
    for block in blocks:
        held.append(block)
        stop = block.stop
        if stop % multiple == 0 or stop >= scan_y:
            yield join(held)
            held = []
    if held:
        yield join(held)


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
