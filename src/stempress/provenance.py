"""The one provenance builder: what an output must carry to be reproducible (source, digest, parameters,
calibration, software versions, time), as JSON-able dicts, for the reduced file, plans and the benchmark."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.base import Dataset4D, iter_blocks, nbytes

#: Bytes of a source file hashed for provenance (whole files up to this size, else their beginning).
HASH_BYTES = 64 * 1024**2

#: Packages whose versions every record lists.
PACKAGES = ("stempress", "numpy", "scipy", "h5py", "hdf5plugin", "blosc2", "numcodecs", "pandas", "rosettasciio")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(source: Dataset4D, targets: Sequence[Any], tolerance: Mapping[str, float],
               calibration: Any, *, digest: Mapping[str, Any] | None = None,
               **parameters: Any) -> dict[str, Any]:
    """What a written plan must carry to be reproducible: JSON-able. ``digest``: the source's sha256 record when
    the caller already computed it during its pass (so the cube is not read again for it)."""
    path = getattr(source, "path", None)
    digest = dict(digest) if digest is not None else _digest(source, path)
    return {"source": {"name": source.name, "path": None if path is None else str(path),
                       "shape": list(source.shape), "dtype": np.dtype(source.dtype).name, **digest},
            "targets": [t.label for t in targets], "tolerance": dict(tolerance), "parameters": parameters,
            "calibration": calibration.to_dict(),
            "software": {"python": platform.python_version(), **package_versions()},
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def hashes_cube_bytes(source: Dataset4D) -> bool:
    """Whether ``provenance`` digests the cube's bytes (a small source with no file) rather than its file."""
    path = getattr(source, "path", None)
    return not (path is not None and Path(path).is_file()) and nbytes(source) <= HASH_BYTES


def cube_digest(digest: Any) -> dict[str, Any]:
    """The record of a sha256 taken over the cube's bytes in C order (row by row)."""
    return {"sha256": digest.hexdigest(), "sha256_of": "cube bytes (C order)"}


def _digest(source: Dataset4D, path: Any) -> dict[str, Any]:
    """sha256 of the file (whole, or its first ``HASH_BYTES``), or of the cube's bytes when in memory and small."""
    digest = hashlib.sha256()
    if path is not None and Path(path).is_file():
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            remaining = min(size, HASH_BYTES)
            while remaining > 0:
                piece = f.read(min(remaining, 1024**2))
                if not piece:
                    break
                digest.update(piece)
                remaining -= len(piece)
        return {"sha256": digest.hexdigest(), "sha256_of": "file" if size <= HASH_BYTES else f"first {HASH_BYTES} B"}
    if nbytes(source) <= HASH_BYTES:
        for block in iter_blocks(source):  # sha256 streams: the same digest whatever the block size
            digest.update(np.ascontiguousarray(block.data).tobytes())
        return cube_digest(digest)
    return {"sha256": None, "sha256_of": "not computed (no file, cube larger than the hash budget)"}
