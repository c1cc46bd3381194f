"""Bad input and a bad environment from the command line: one line naming the problem and the fix, exit status 1,
nothing left behind, nothing replaced. Every case runs ``python -m stempress`` in a child process, as a user would.

Full disks are real: a 2 MiB tmpfs mounted for the test (skipped where this platform does not allow mounting;
``test_atomic.py`` also stops a write with a real RLIMIT_FSIZE).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_fs import tiny_fs

KEEP = b"the user's own file"


def stempress(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, **(env or {})})


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refusal prints, after checking it is one line, the only one on stderr, and exit status 1."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
            if not p.is_relative_to(folder / "tiny")}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    np.save(tmp_path / "small.npy", rng.poisson(1.0, (4, 4, 16, 16)).astype(np.uint16))
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "existing.h5").write_bytes(KEEP)
    return tmp_path


COUNT = ("count", "small.npy", "--threshold", "0.5", "--out")
REDUCE = ("reduce", "small.npy", "--target", "bf", "--centre", "7.5,7.5", "--bf-radius", "3", "--out")
PLAN = ("plan", "small.npy", "--target", "bf", "--centre", "7.5,7.5", "--bf-radius", "3", "--write")
BENCH = ("bench", "--suite", "smoke", "--runs", "1", "--methods", "gzip_1", "--chunks", "balanced", "--out")


@pytest.mark.parametrize(("args", "words"), [
    # an output that cannot be written: a pseudo file system, a path under a regular file
    (("compress", "small.npy", "/sys/x.h5"), ["/sys/x.h5", "no permission", "choose"]),
    (("compress", "small.npy", "/proc/x.h5"), ["/proc/x.h5", "cannot be created", "choose"]),
    (("compress", "small.npy", "afile/x.h5"), ["afile is a file, not a folder", "choose"]),
    (("simulate", "smoke/4D_Diff", "/proc/x.h5"), ["/proc/x.h5", "choose"]),
    (("simulate", "smoke/4D_Diff", "afile/x.h5"), ["afile is a file, not a folder"]),
    ((*COUNT, "afile/x.h5"), ["afile is a file, not a folder"]),
    ((*COUNT, "/sys/x.h5"), ["/sys/x.h5", "no permission"]),
    ((*REDUCE, "afile/x.h5"), ["afile is a file, not a folder"]),
    ((*PLAN, "afile/x.h5"), ["afile is a file, not a folder"]),
    ((*BENCH, "afile/res"), ["afile", "not a folder"]),
    ((*BENCH, "/proc/res"), ["/proc/res"]),
    # an existing output is never replaced without --force
    (("compress", "small.npy", "existing.h5"), ["existing.h5 already exists", "--force"]),
    (("simulate", "smoke/4D_Diff", "existing.h5"), ["existing.h5 already exists", "--force"]),
    ((*COUNT, "existing.h5"), ["existing.h5", "--force"]),
    ((*REDUCE, "existing.h5"), ["existing.h5 already exists", "--force"]),
    ((*PLAN, "existing.h5"), ["existing.h5 already exists", "--force"]),
    ((*REDUCE, "r.h5", "--report", "."), ["--report would replace", "--force"]),
    ((*REDUCE, "r.h5", "--figures", "."), ["--figures would replace", "--force"]),
    # options a CLI user can act on, not Python API names
    (("count", "small.npy", "--threshold", "3", "--threshold-unit", "sigma", "--out", "ev.h5"),
     ["--read-noise", "--threshold-unit adu"]),
    (("reduce", "zero.npy", "--target", "bf", "--out", "r.h5"), ["--centre", "--bf-radius"]),
    (("plan", "zero.npy", "--target", "bf"), ["--centre", "--bf-radius"]),
    (("reduce", "small.npy", "--target", "bf", "--centre", "7.5", "--out", "r.h5"), ["--centre", "ROW,COLUMN"]),
])
def test_refusals_are_one_line_leave_nothing_and_replace_nothing(work, args, words):
    np.save(work / "zero.npy", np.zeros((2, 2, 8, 8), np.uint16))  # no beam anywhere: no disk to find
    before = listing(work)
    line = error_line(stempress(*args, cwd=work))
    for word in words:
        assert word in line, line
    assert "Calibration" not in line and "CountingParams" not in line and "threshold_unit=" not in line
    assert listing(work) == before
    assert (work / "existing.h5").read_bytes() == KEEP


def test_no_progress_bar_is_drawn_above_a_refusal(work):
    """On a terminal (forced with TTY_COMPATIBLE), a command that refuses its input draws no bar first."""
    result = stempress("compress", "small.npy", "out.h5", "--codec", "nope", cwd=work, env={"TTY_COMPATIBLE": "1"})
    assert result.returncode == 1 and "unknown codec" in result.stderr
    assert "━" not in result.stdout and "compress" not in result.stdout, result.stdout


FULL_DISK = [
    ("compress", "big.npy", "{disk}/out.h5", "--codec", "none"),
    ("simulate", "synthetic:diffraction?scan=32x32&det=64x64", "{disk}/out.h5"),
    ("count", "big.npy", "--threshold", "0.5", "--out", "{disk}/out.h5"),
    ("bench", "--suite", "smoke", "--runs", "1", "--methods", "gzip_1", "--chunks", "balanced", "--out", "{disk}/res"),
]


@pytest.mark.parametrize("args", FULL_DISK, ids=[a[0] for a in FULL_DISK])
def test_a_full_disk_is_one_line_with_no_partial_output(work, args):
    np.save(work / "big.npy", np.random.default_rng(4).poisson(1.0, (16, 16, 64, 64)).astype(np.uint16))  # 2 MiB
    with tiny_fs(work) as disk:
        (disk / "filler").write_bytes(bytes(1536 * 1024))  # the user's other files: 512 KiB stay free
        line = error_line(stempress(*(a.format(disk=disk) for a in args), cwd=work))
        assert "no space left on the device" in line and str(disk) in line and "free some space" in line, line
        left = [p for p in disk.rglob("*") if p.is_file() and p.name != "filler"]
        assert not [p for p in left if p.name.endswith(".partial") or ".partial" in str(p)], left
        if args[0] != "bench":  # bench keeps the result files it completed, and names them in the line
            assert left == [], left
        else:
            assert all(str(p) in line or "kept the" in line for p in left), (left, line)
