"""Streaming a cube into and out of one chunked HDF5 dataset through the filter pipeline.

Blocks are whole chunk rows, so HDF5 never reads back and recompresses a half-written chunk: the bytes on
disk are the ones a plain ``create_dataset(data=cube, chunks=..., **filter)`` would produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the plugin filters with HDF5)
import numpy as np

from stempress.data.base import Block, row_spans
from stempress.data.hdf5 import STUDY_EMD_PATH


def create_cube_dataset(
    group: h5py.Group,
    path: str,
    shape: Sequence[int],
    dtype: np.dtype,
    chunks: Sequence[int] | None,
    filter_kwargs: Mapping[str, Any],
    maxshape: Sequence[int | None] | None = None,
) -> h5py.Dataset:
    """Create the dataset with the filter pipeline declared, as a plain h5py user would (``maxshape`` only where
    chunks reach past the extent)."""
    extra = {"maxshape": tuple(maxshape)} if maxshape is not None else {}
    return group.create_dataset(path, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks) if chunks else None,
                                **dict(filter_kwargs), **extra)


def write_blocks(dataset: h5py.Dataset, blocks: Iterable[Block]) -> int:
    """Write blocks of scan rows in order; returns the rows written."""
    rows = 0
    for block in blocks:
        dataset[block.start:block.stop] = block.data
        rows += block.data.shape[0]
    return rows


def write_cube(
    path: Path,
    blocks: Iterable[Block],
    shape: Sequence[int],
    dtype: np.dtype,
    chunks: Sequence[int] | None,
    filter_kwargs: Mapping[str, Any],
    dataset_path: str = STUDY_EMD_PATH,
) -> None:
    """Create, fill and close a file holding only the cube: the study's timed unit of work."""
    with h5py.File(path, "w") as f:
        dataset = create_cube_dataset(f, dataset_path, shape, dtype, chunks, filter_kwargs)
        write_blocks(dataset, blocks)


def read_cube_blocks(path: Path, rows: int, dataset_path: str = STUDY_EMD_PATH) -> Iterator[Block]:
    """Yield the cube back in blocks of ``rows`` scan rows."""
    with h5py.File(path, "r") as f:
        yield from dataset_blocks(f[dataset_path], rows)


def dataset_blocks(dataset: h5py.Dataset, rows: int) -> Iterator[Block]:
    """Read an open dataset in blocks of ``rows`` scan rows (the benchmark opens the file before its clock)."""
    for start, stop in row_spans(dataset.shape[0], rows):
        yield Block(start, dataset[start:stop])
