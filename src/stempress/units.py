"""Sizes for people: the one place a byte count becomes text (binary units, as the tables' GiB/s)."""

from __future__ import annotations

#: Binary units, largest first.
UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def size_text(nbytes: float) -> str:
    """``1536`` -> ``'1.50 KiB'``: the largest unit that keeps the number at least 1, never ``0.0 GiB``."""
    for unit, scale in UNITS:
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
