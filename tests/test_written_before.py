"""Files stempress wrote before the engine redesign read the same after it, verify, and today's writer stores the
same chunk bytes for the same cube, codec and chunks (``tests/data/written_before``, made by commit 52f59ce)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from real_data import WRITTEN_BEFORE
from stempress.data.base import ArraySource
from stempress.data.open import open_source
from stempress.store.compress import compress
from stempress.store.verify import verify

BEFORE = WRITTEN_BEFORE
CUBE = np.load(BEFORE / "cube.npy")
COMPRESSED = {"compress_blosc_zstd.h5": ("blosc_zstd", (2, 5, 24, 24), "emd"),
              "compress_gzip_6.h5": ("gzip_6", (2, 5, 24, 24), "emd"),
              "compress_bitshuffle_lz4.h5": ("bitshuffle_lz4", (2, 5, 24, 24), "emd"),
              "compress_plain_lzf.h5": ("lzf", (3, 5, 24, 24), "plain")}


def _chunks(path: Path) -> dict[tuple[int, ...], bytes]:
    with h5py.File(path, "r") as f:
        found: list[h5py.Dataset] = []
        f.visititems(lambda _n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.ndim == 4 else None)
        dset = found[0]
        return {info.chunk_offset: dset.id.read_direct_chunk(info.chunk_offset)[1]
                for info in (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))}


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_an_archive_written_before_reads_verifies_and_is_written_the_same_today(name, tmp_path):
    codec, chunks, layout = COMPRESSED[name]
    with open_source(BEFORE / name) as before:
        np.testing.assert_array_equal(before.read_rows(0, CUBE.shape[0]), CUBE)
    report = verify(BEFORE / name, against=ArraySource(CUBE))
    assert report.ok and report.compared, report.summary()
    today = compress(ArraySource(CUBE, name="cube"), tmp_path / name, codec=codec, chunks=chunks, layout=layout,
                     workers=2)
    assert _chunks(today.path) == _chunks(BEFORE / name)


def test_a_simulated_file_written_before_reads_the_same():
    with open_source(BEFORE / "simulate_emd.h5") as before:
        assert before.shape == CUBE.shape
        np.testing.assert_array_equal(before.read_rows(0, CUBE.shape[0]), CUBE)
