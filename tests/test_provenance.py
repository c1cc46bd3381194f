"""The provenance builder's digest of an in-memory cube: the sha256 of its bytes in C order."""

from __future__ import annotations

import hashlib

import numpy as np

from stempress.data.base import ArraySource
from stempress.data.calibration import Calibration
from stempress.provenance import provenance


def test_an_in_memory_cube_is_digested_as_its_c_order_bytes():
    cube = np.arange(6 * 5 * 4 * 3, dtype=np.uint16).reshape(6, 5, 4, 3)
    flipped = cube[::-1, :, ::-1]  # not contiguous: the digest is of the cube as a user sees it
    record = provenance(ArraySource(flipped), [], {}, Calibration())
    assert record["source"]["sha256"] == hashlib.sha256(np.ascontiguousarray(flipped).tobytes()).hexdigest()
    assert record["source"]["sha256_of"] == "cube bytes (C order)"
