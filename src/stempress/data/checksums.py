"""A checksum per stored HDF5 chunk, of the compressed bytes and of the uncompressed chunk, kept in the file.

Two checksums because they answer different questions: the stored one proves the bytes on disk are the ones
written (checkable without decoding, e.g. after a copy), the raw one proves a decoder gave back the data that
went in. They live in a separate root group ``stempress/checksums/<dataset path>`` so readers that walk the
EMD / py4DSTEM tree (which look for their own groups and attributes) never meet them, and they are that group's
ATTRIBUTES (``stored_crc``, ``raw_crc``: arrays over the chunk grid), not datasets: readers that list every
array dataset as data (HyperSpy's NeXus reader, ``hs.load(path, file_format="nexus")``) would otherwise show
them as signals, while attributes are metadata to every HDF5 reader. The group tracks attribute order, which
gives it HDF5's version-2 object header and so dense attribute storage: no 64 KiB limit on a large grid.
Files written before keep the arrays as datasets in the same group; ``load`` reads both.

CRC32C (hardware accelerated, releases the GIL on large buffers) when ``google-crc32c`` is installed, else
``zlib.crc32``; the algorithm is recorded with the values so a file is always checked with the one it used.
"""

from __future__ import annotations

import ctypes
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from stempress.data.hdf5 import BOOKKEEPING_GROUP
from stempress.errors import StempressError

#: Root group holding the checksums of every dataset that has them.
CHECKSUM_GROUP = f"{BOOKKEEPING_GROUP}/checksums"
#: Names of the two CRC arrays (attributes of the dataset's checksum group; datasets in older files).
_STORED, _RAW = "stored_crc", "raw_crc"

_Buffer = bytes | bytearray | memoryview | np.ndarray


def _crc32(data: _Buffer) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


#: Buffers from this size on are checksummed outside the GIL (``_crc32c_nogil``); smaller ones are not worth the call.
NOGIL_CRC_BYTES = 256 * 1024


def _crc32c_nogil(extension_path: str) -> Callable[[int, int], int] | None:
    """``crc32c_extend(0, address, nbytes)`` of the libcrc32c that google-crc32c's extension is linked to, called
    through ctypes, which releases the GIL for the call: google-crc32c itself holds the GIL on anything but
    ``bytes`` (a numpy chunk in the encoder threads: ~0.7 ms per 8 MiB during which the writer and the other
    encoders could not run Python). The same library, so the same values. None where the symbol is not found."""
    try:
        function = ctypes.CDLL(extension_path).crc32c_extend
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_uint32
    return lambda address, nbytes: int(function(0, address, nbytes))


def _crc32c_function() -> Callable[[_Buffer], int] | None:
    """The fastest CRC32C here, or None. google-crc32c takes read-only buffers only, so other buffers go in as a
    read-only view of the same memory, not a copy: copying an 8 MiB chunk cost more CPU than its CRC. Large
    contiguous arrays go to its library without the GIL (``_crc32c_nogil``)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":  # the pure-Python fallback is ~1000x slower
        return None
    extension = getattr(getattr(google_crc32c, "_crc32c", None), "__file__", None)
    nogil = _crc32c_nogil(extension) if extension else None

    def crc32c(data: _Buffer) -> int:
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = data.tobytes()
        if not isinstance(data, bytes):
            view = np.ascontiguousarray(data) if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
            if nogil is not None and view.nbytes >= NOGIL_CRC_BYTES:
                return nogil(view.ctypes.data, view.nbytes)
            data = view.view()
            data.flags.writeable = False
        return int(google_crc32c.value(data))

    return crc32c


_CRC32C = _crc32c_function()

#: Algorithm used for new checksums: "crc32c" when available, else "crc32".
ALGORITHM = "crc32c" if _CRC32C is not None else "crc32"
_FUNCTIONS: dict[str, Callable[[_Buffer], int]] = {"crc32": _crc32} | ({"crc32c": _CRC32C} if _CRC32C else {})


def checksum_function(algorithm: str) -> Callable[[_Buffer], int]:
    """The function computing ``algorithm``; a file recorded with CRC32C needs google-crc32c to be checked."""
    try:
        return _FUNCTIONS[algorithm]
    except KeyError:
        fix = "pip install google-crc32c" if algorithm == "crc32c" else "the file was written by another tool"
        raise StempressError(f"checksum algorithm {algorithm!r} is not available here; {fix}") from None


def _as_bytes_view(raw: _Buffer) -> _Buffer:
    """Raw chunk bytes in C order, whatever the dtype (a numpy array is hashed as its memory)."""
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    return raw


def chunk_crcs(algorithm: str, stored: _Buffer, raw: _Buffer) -> tuple[int, int]:
    """(CRC of the stored bytes, CRC of the raw chunk) with ``algorithm``, wherever the chunk was compressed
    (a worker process or cluster node hands the two numbers back with the bytes)."""
    crc = checksum_function(algorithm)
    return crc(_as_bytes_view(stored)), crc(_as_bytes_view(raw))


def checksum_group_path(dataset_path: str) -> str:
    """Where the checksums of ``dataset_path`` live: the dataset's path mirrored under the checksum group."""
    return f"/{CHECKSUM_GROUP}/{dataset_path.strip('/')}"


@dataclass
class ChunkChecksums:
    """CRCs of one chunked dataset's chunks, indexed by chunk grid position, filled while writing.

    ``add`` is called from worker threads (each writes its own grid cells, so no lock is needed) so the CRCs
    cost no time on the thread that talks to HDF5.
    """

    dataset_path: str
    chunk_shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    algorithm: str = ALGORITHM
    stored: np.ndarray = field(init=False, repr=False)
    raw: np.ndarray = field(init=False, repr=False)
    recorded: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.chunk_shape = tuple(int(n) for n in self.chunk_shape)
        self.grid_shape = tuple(int(n) for n in self.grid_shape)
        self._crc = checksum_function(self.algorithm)
        self.stored = np.zeros(self.grid_shape, dtype=np.uint32)
        self.raw = np.zeros(self.grid_shape, dtype=np.uint32)
        self.recorded = np.zeros(self.grid_shape, dtype=bool)

    @classmethod
    def for_dataset(cls, dataset: h5py.Dataset, algorithm: str = ALGORITHM) -> ChunkChecksums:
        """Empty checksums sized for ``dataset``'s chunk grid."""
        if dataset.chunks is None:
            raise StempressError(f"dataset {dataset.name} is contiguous; chunk checksums need a chunked dataset")
        grid = tuple(-(-n // c) for n, c in zip(dataset.shape, dataset.chunks, strict=True))
        return cls(dataset.name, dataset.chunks, grid, algorithm)

    def crc(self, data: _Buffer) -> int:
        """This record's checksum of ``data``."""
        return self._crc(_as_bytes_view(data))

    def add(self, chunk_index: tuple[int, ...], stored: _Buffer, raw: _Buffer) -> None:
        """Record the CRCs of one chunk's stored (compressed) bytes and its full, padded raw bytes."""
        index = tuple(chunk_index)
        self.stored[index] = self.crc(stored)
        self.raw[index] = self.crc(raw)
        self.recorded[index] = True

    def add_values(self, chunk_index: tuple[int, ...], stored_crc: int, raw_crc: int) -> None:
        """Record CRCs computed elsewhere (e.g. in the worker that compressed the chunk)."""
        index = tuple(chunk_index)
        self.stored[index] = stored_crc
        self.raw[index] = raw_crc
        self.recorded[index] = True

    @property
    def complete(self) -> bool:
        return bool(self.recorded.all())

    def save(self, file_or_group: h5py.Group) -> h5py.Group:
        """Write into the file that holds the dataset; refuses a partial record so a gap never reads as valid."""
        if not self.complete:
            missing = int(self.recorded.size - self.recorded.sum())
            raise StempressError(
                f"checksums of {self.dataset_path} miss {missing} of {self.recorded.size} chunks; "
                "write every chunk before saving them"
            )
        root = file_or_group.file
        path = checksum_group_path(self.dataset_path)
        if path in root:
            del root[path]
        parent, _, name = path.rpartition("/")
        group = root.require_group(parent).create_group(name, track_order=True)  # dense attributes: any grid size
        group.attrs.update(self._attrs())
        group.attrs[_STORED] = self.stored
        group.attrs[_RAW] = self.raw
        return group

    def _attrs(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "dataset_path": self.dataset_path,
            "chunk_shape": np.asarray(self.chunk_shape, dtype=np.int64),
            "description": "CRC per HDF5 chunk: stored_crc of the compressed bytes as stored, raw_crc of the "
                           "uncompressed chunk (edge chunks padded with the fill value), indexed by chunk grid",
        }

    @classmethod
    def load(cls, file: h5py.File, dataset_path: str) -> ChunkChecksums | None:
        """The checksums saved for ``dataset_path``, or None when the file has none for it."""
        path = checksum_group_path(dataset_path)
        if path not in file:
            return None
        group = file[path]
        try:
            stored, raw = (np.asarray(group.attrs[key] if key in group.attrs else group[key][()])
                           for key in (_STORED, _RAW))  # attributes; datasets in files written before
            record = cls(str(group.attrs["dataset_path"]), tuple(group.attrs["chunk_shape"]), stored.shape,
                         str(group.attrs["algorithm"]))
        except KeyError as exc:
            raise StempressError(f"checksum group {path} is incomplete ({exc}); rewrite the file") from None
        record.stored[...] = stored
        record.raw[...] = raw
        record.recorded[...] = True
        return record

    def check_chunk(self, chunk_index: tuple[int, ...], *, stored: _Buffer | None = None,
                    raw: _Buffer | None = None) -> str | None:
        """None when the given bytes match the record; otherwise which checksum failed, for an error message."""
        index = tuple(chunk_index)
        if not self.recorded[index]:
            return f"no checksum recorded for chunk {index}"
        if stored is not None and self.crc(stored) != int(self.stored[index]):
            return f"stored bytes of chunk {index} fail their {self.algorithm} (corrupted on disk)"
        if raw is not None and self.crc(raw) != int(self.raw[index]):
            return f"decoded data of chunk {index} fail their {self.algorithm} (decoder or data corrupted)"
        return None


def verify_stored(file: h5py.File, dataset_path: str) -> list[tuple[int, ...]]:
    """Chunk indices whose stored bytes no longer match their checksums (no decoding); [] when all match."""
    record = ChunkChecksums.load(file, dataset_path)
    if record is None:
        raise StempressError(f"{file.filename} has no chunk checksums for {dataset_path}; write it with checksums")
    dataset = file[dataset_path]
    bad = []
    for index in np.ndindex(*record.grid_shape):
        offset = tuple(i * c for i, c in zip(index, record.chunk_shape, strict=True))
        try:
            _, data = dataset.id.read_direct_chunk(offset)
        except Exception:  # an unreadable chunk is as bad as a wrong one
            bad.append(index)
            continue
        if record.check_chunk(index, stored=data) is not None:
            bad.append(index)
    return bad
