"""Where the tests find the project's shared real data and the study's tables (``../shared`` beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"
PAPER = SHARED / "paper"


def real_file(name: str) -> Path:
    """A real detector file, or skip the test saying where it was expected."""
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real test file {path} not found (expected the shared data folder beside the repo)")
    return path
