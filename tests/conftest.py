"""What every test module shares: where the shipped test data is, and the ``slow`` mark.

Tests mirror ``src/stempress``: ``tests/<package>/test_*.py`` for each package (``tests/data`` also holds the
files shipped for the tests, ``real_data.py`` says where), ``tests/test_*.py`` for the top-level modules and the
whole-program checks (CLI, README, layers, files written before). Helpers every module may use sit here:
``real_data`` (shipped files), ``damage`` (corrupting a file), ``tiny_fs``, ``prismatic_file``.

The README's test command runs every test, slow ones included (under 10 minutes on a 2-core machine); while
working, ``python -m pytest -m "not slow"`` skips the ones marked slow (README commands, peers' readers, whole
benchmarks on smoke suites).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from real_data import REAL, real_file

#: Test modules that run whole commands or other tools' readers end to end: seconds to minutes each.
SLOW_MODULES = {"test_readme.py", "test_peer_readers.py", "test_event_interop.py", "test_report.py"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs whole commands or peer tools end to end (deselect with "
                                       "-m 'not slow' while working; the README's test command runs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of real detector files shipped with the tests (provenance and licences in its README)."""
    return REAL


__all__ = ["real_file"]
