"""Bit-exact verification of a round trip: a mismatch is an error, never a number.

Cubes held in memory are compared byte for byte; cubes streamed from a source too large to hold are compared
through a BLAKE2b digest per scan row recorded while writing, so any reader's block sizes work and the
first differing row is named.
"""

from __future__ import annotations

import hashlib

import numpy as np

from stempress.data.base import Block


class VerificationError(Exception):
    """What was read back differs from what was written."""


def _as_bytes_view(array: np.ndarray) -> np.ndarray:
    """Compare bit patterns, not values: NaN equals NaN and -0.0 differs from 0.0."""
    array = np.ascontiguousarray(array)
    return array.view(np.uint8).reshape(array.shape[0], -1)


class Reference:
    """What a measurement must read back: fed the written blocks, then checks the read blocks."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, array: np.ndarray | None = None) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.array = array
        self.row_digests: dict[int, bytes] = {}
        self.rows_checked = 0

    def record(self, block: Block) -> None:
        if self.array is None:
            for offset, row in enumerate(_as_bytes_view(block.data)):
                self.row_digests[block.start + offset] = hashlib.blake2b(row, digest_size=16).digest()

    def check(self, block: Block) -> None:
        data = block.data
        if data.dtype != self.dtype or data.shape[1:] != self.shape[1:]:
            raise VerificationError(
                f"read back {data.dtype} rows of shape {data.shape[1:]}, wrote {self.dtype} {self.shape[1:]}"
            )
        got = _as_bytes_view(data)
        if self.array is not None:
            want = _as_bytes_view(self.array[block.start:block.stop])
            bad = np.flatnonzero((got != want).any(axis=1))
            if bad.size:
                raise VerificationError(f"scan row {block.start + int(bad[0])} differs from the source")
        else:
            for offset, row in enumerate(got):
                index = block.start + offset
                if self.row_digests.get(index) != hashlib.blake2b(row, digest_size=16).digest():
                    raise VerificationError(f"scan row {index} differs from the source")
        self.rows_checked += data.shape[0]

    def finish(self) -> None:
        """Refuse a read that silently returned fewer rows than were written."""
        if self.rows_checked != self.shape[0]:
            raise VerificationError(f"read back {self.rows_checked} scan rows, wrote {self.shape[0]}")
        self.rows_checked = 0
