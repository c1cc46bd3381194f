"""Where the tests find what the repository ships for them: the real detector files (``tests/data/real``,
provenance in its README), files written by earlier versions, and the repository's root (README, pyproject)."""

from __future__ import annotations

from pathlib import Path

#: The repository's root: README.md and pyproject.toml.
REPO = Path(__file__).resolve().parents[1]
#: Files shipped with the tests (tests/data); the tests of ``stempress.data`` sit beside them.
DATA = REPO / "tests" / "data"
REAL = DATA / "real"
#: Files written by earlier versions, which today's code must still read (README inside says by which commit).
WRITTEN_BEFORE = DATA / "written_before"
#: Event files ``count`` wrote before the engine.
COUNT_MAIN = DATA / "count_main"


def real_file(name: str) -> Path:
    """A real detector file shipped with the tests; a missing one is a broken checkout, not a reason to skip."""
    path = REAL / name
    assert path.is_file(), f"real test file {path} is missing; restore tests/data/real from the repository"
    return path
