"""Byte counts as people read them (binary units, as the benchmark tables): one format for every message."""

from __future__ import annotations

GIB = 1024**3


def human_size(nbytes: float) -> str:
    """``1536`` -> ``'1.50 KiB'``; below 1 KiB, whole bytes."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} B"
