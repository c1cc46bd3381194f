"""Damage a file as a disk or a network would, so the tests can show that it is caught (shared by several modules)."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, at: int, mask: int = 0xFF) -> None:
    """XOR the byte at offset ``at`` of a file with ``mask``, in place, as bit rot on disk would."""
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ mask]))
