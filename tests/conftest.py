"""What every test module shares: where the shipped test data is, and the ``slow`` mark.

Tests mirror ``src/stempress``: ``tests/<package>/test_*.py`` for each package (``tests/data`` also holds the
files shipped for the tests, ``real_data.py`` says where), ``tests/test_*.py`` for the top-level modules and the
whole-program checks (CLI, README, layers, files written before). Helpers every module may use sit here:
``real_data`` (shipped files), ``damage`` (corrupting a file), ``tiny_fs``, ``prismatic_file``.

The README's test command runs every test, slow ones included (under 10 minutes on a 2-core machine); while
working, ``python -m pytest -m "not slow"`` skips the ones marked slow (README commands, peers' readers, whole
benchmarks on smoke suites).

pyproject's pytest settings run the tests on two worker processes (pytest-xdist, ``-n 2 --dist loadfile``: one
module's tests on one worker, so a module's fixtures are built once); ``-n 0`` runs them in this process. Most
tests compute on one core or wait on a child process, so two workers keep a 2-core machine busy. The longest
modules are handed out first (``LONGEST_FIRST``), so none of them is left running alone at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from real_data import REAL, real_file

#: Test modules that run whole commands or other tools' readers end to end: seconds to minutes each.
SLOW_MODULES = {"test_readme.py", "test_peer_readers.py", "test_event_interop.py", "test_report.py"}
#: The modules that take longest (tens of seconds to minutes, mostly child processes and report figures), longest
#: first: run before the others so the two workers end together. A module not listed keeps its collected place.
LONGEST_FIRST = ("test_cli.py", "test_readme.py", "test_bad_input.py", "report/test_report.py", "exec/test_dask.py",
                 "report/test_reduce_figures.py", "live/test_live_cli.py", "data/test_entropy_codec.py",
                 "store/test_compress.py", "test_plan.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs whole commands or peer tools end to end (deselect with "
                                       "-m 'not slow' while working; the README's test command runs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    tests = Path(__file__).parent
    rank = {tests / name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)), len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of real detector files shipped with the tests (provenance and licences in its README)."""
    return REAL


__all__ = ["real_file"]
