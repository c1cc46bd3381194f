"""The layers of pyproject's import-linter contract hold: no import runs up (CLI > commands > engine > sinks >
executors > events/reducers > codecs > sources > utilities), with no ignored import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from real_data import REPO

ROOT = REPO


def test_no_import_runs_up_a_layer():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # the code of this checkout, not an installed copy
    done = subprocess.run([command, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in done.stdout
    assert "ignored imports" not in done.stdout  # the contract holds with no exceptions: keep ignore_imports empty
