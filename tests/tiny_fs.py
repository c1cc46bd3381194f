"""A real, tiny, full-able file system for the disk-full tests: a 2 MiB tmpfs mounted under the test's folder.

Mounting needs root (or CAP_SYS_ADMIN); where the platform refuses, the tests that need it are skipped with the
reason, and ``test_atomic.py``'s RLIMIT_FSIZE test still covers a write that the system stops.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SIZE = "2m"


@contextmanager
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A mounted 2 MiB tmpfs under ``tmp_path`` (the test is skipped where mounting is not allowed)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
