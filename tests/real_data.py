"""Where the tests find the real detector files shipped with them (``tests/data/real``, provenance in its README)."""

from __future__ import annotations

from pathlib import Path

REAL = Path(__file__).resolve().parent / "data" / "real"


def real_file(name: str) -> Path:
    """A real detector file shipped with the tests; a missing one is a broken checkout, not a reason to skip."""
    path = REAL / name
    assert path.is_file(), f"real test file {path} is missing; restore tests/data/real from the repository"
    return path
