"""Byte counts as people read them (binary units, as the benchmark tables): one format for every message."""

from __future__ import annotations

GIB = 1024**3


def human_size(nbytes: float) -> str:
    """``1536`` -> ``'1.50 KiB'``: the largest binary unit that keeps the number at least 1 (never ``0.0 GiB``);
    below 1 KiB, whole bytes. The one place a byte count becomes text."""
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} B"
