"""Every command in README.md's ```bash blocks runs, as written, on tiny inputs: the README cannot drift from the CLI.

Each command runs as ``python -m stempress ...`` in its own copy of a workspace that holds the README's file names:

- ``scan.mib`` / ``default.mib`` (+ ``.hdr``): the real Merlin file ``001_4x2_6bit.mib`` (8 frames, 4x2 scan);
- ``scan.emd`` and ``scan.h5``: ``scan.mib`` compressed (EMD 1.0), as the README's first ``compress`` writes it,
  so ``verify scan.emd --against scan.mib`` holds; ``reduced.h5``: its reduction;
- ``test_00_master.h5`` + its data file: the real DECTRIS ARINA files (4x4 scan);
- ``run.h5`` (a 4-D dataset at ``/entry/cube``), ``cube.npy``, ``frames.h5`` + ``dark.npy`` (integrating frames,
  dark 100 ADU, 40 ADU per electron): small synthetic cubes made here;
- ``results/bench-20261121-101500`` and ``results/bench-DATE-TIME``: a smoke benchmark's results folder.

What is changed, and only this (``as_run``):

- files: only the scan shape of a ``.mib`` (``--scan-shape 256x256`` becomes the real file's ``4x2``);
- long runs shrink: ``--runs N`` becomes ``--runs 1``; a ``bench`` without sources or ``--suite`` (the paper-like
  suite, 15 minutes) gets ``--suite smoke``; ``paper-like/`` members become ``smoke/`` ones; every ``bench`` runs
  ``--methods gzip_1,blosc_zstd`` instead of ``paper`` or ``all`` (``--chunks``, ``--protocol`` and the rest as
  written);
- an output named by the command (OUT, ``--out``, ``--write``, ``--report``) is removed from the copy first, where
  the workspace holds a file of that name as another command's input;
- not run: the install steps (``python3 -m venv``, ``pip install``: this suite runs in the installed package) and
  ``python -m pytest`` (this suite itself).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from real_data import REPO, real_file

README = REPO / "README.md"
#: What the README's .mib is replaced with: the real file's scan.
MIB_SCAN = "4x2"
BENCH_METHODS = "gzip_1,blosc_zstd"
#: Programs of the README that are not stempress, and why they are not run here.
NOT_RUN = {"python3": "creates a virtual environment (this suite runs in the installed package)",
           ".venv/bin/pip": "installs the package (already installed for this suite)",
           ".venv/bin/python": "runs the test suite (this is it)"}
OUTPUT_OPTIONS = ("--out", "--write", "--report")


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, words) of every command in the README's bash blocks: continuations joined, comments dropped,
    ``&&`` chains split into their commands."""
    commands: list[tuple[int, list[str]]] = []
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash or not (pending or line.strip()):
            continue
        start = start if pending else number
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        words, pending = shlex.split(pending, comments=True), ""
        chain: list[str] = []
        for word in [*words, "&&"]:
            if word != "&&":
                chain.append(word)
            elif chain:
                commands.append((start, chain))
                chain = []
    return commands


def as_run(words: list[str]) -> list[str] | None:
    """The README command as this test runs it (see the module docstring), or None when it is not run."""
    program, args = words[0], list(words[1:])
    if Path(program).name != "stempress":
        assert program in NOT_RUN, f"README runs {program!r}; run it in test_readme.py or say why it is not run"
        return None
    if any(a.endswith(".mib") for a in args) and "--scan-shape" in args:
        args[args.index("--scan-shape") + 1] = MIB_SCAN
    if "--runs" in args:
        args[args.index("--runs") + 1] = "1"
    args = [a.replace("paper-like/", "smoke/") for a in args]
    if args[0] == "bench":
        sources = [a for a in args[1:] if not a.startswith("-")]
        if not sources and "--suite" not in args:
            args += ["--suite", "smoke"]
        if "--methods" in args:
            args[args.index("--methods") + 1] = BENCH_METHODS
        else:
            args += ["--methods", BENCH_METHODS]
    return args


def outputs(args: list[str]) -> list[str]:
    named = [args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_OPTIONS]
    if args[0] in ("compress", "simulate"):
        named.append([a for a in args[1:] if not a.startswith("-")][1])
    return named


COMMANDS = readme_commands()
#: The commands this suite runs (the install steps and pytest itself are listed, not run: see NOT_RUN).
RUN = [(line, words) for line, words in COMMANDS if as_run(words) is not None]


def test_only_the_install_steps_and_pytest_are_not_run():
    skipped = {words[0] for _, words in COMMANDS if as_run(words) is None}
    assert skipped <= set(NOT_RUN) and len(RUN) >= 15


def test_the_readme_has_the_commands_this_test_expects():
    """The parser sees the README's commands (not an empty list that would make every test below vacuous)."""
    names = {words[1] for _, words in COMMANDS if Path(words[0]).name == "stempress" and len(words) > 1}
    assert {"bench", "compress", "verify", "reduce", "plan", "count", "report", "recommend", "simulate",
            "codecs"} <= names, names
    assert any("balanced,16x16x64x64" in " ".join(words) for _, words in COMMANDS)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stempress.bench.api import run_bench
    from stempress.data.base import ArraySource
    from stempress.data.open import open_source
    from stempress.store.compress import compress
    from stempress.store.reduced import reduce_to_file
    from stempress.store.write import write_hdf5

    work = tmp_path_factory.mktemp("readme")
    for stem in ("scan", "default"):
        shutil.copy(real_file("001_4x2_6bit.mib"), work / f"{stem}.mib")
        shutil.copy(real_file("001_4x2_6bit.hdr"), work / f"{stem}.hdr")
    for name in ("test_00_master.h5", "test_00_data_000001.h5"):
        shutil.copy(real_file(name), work / name)
    rng = np.random.default_rng(12)
    counts = rng.poisson(0.3, (4, 4, 32, 32)).astype(np.uint16)
    with h5py.File(work / "run.h5", "w") as f:
        f["entry/cube"] = counts
    np.save(work / "cube.npy", counts)
    adu = 100.0 + 40.0 * counts + rng.normal(0, 2, counts.shape)
    write_hdf5(ArraySource(np.clip(adu, 0, None).astype(np.uint16), name="frames"), work / "frames.h5")
    np.save(work / "dark.npy", np.full(counts.shape[2:], 100.0))
    with open_source(str(work / "scan.mib"), scan_shape=(4, 2)) as mib:
        compress(mib, work / "scan.h5")
    shutil.copy(work / "scan.h5", work / "scan.emd")
    with open_source(str(work / "scan.h5")) as scan:
        reduce_to_file(scan, ["bf", "com"], work / "reduced.h5")
    results = work / "results" / "bench-20261121-101500"
    run_bench(suite="smoke", methods="gzip_1", chunkings=["balanced"], runs=1, out=results)
    shutil.copytree(results, work / "results" / "bench-DATE-TIME")
    return work


@dataclass
class Run:
    args: list[str]
    work: Path
    done: subprocess.CompletedProcess[str]


def _run(workspace: Path, root: Path, index: int, words: list[str]) -> Run | None:
    """One README command in its own copy of the workspace."""
    args = as_run(words)
    if args is None:
        return None
    work = root / f"cmd{index}"
    shutil.copytree(workspace, work)
    for name in outputs(args):
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, cwd=work,
                          timeout=600)
    return Run(args, work, done)


@pytest.fixture(scope="module")
def runs(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Run | None]:
    """Every README command, two at a time (each is one mostly single-threaded process; this machine has two
    cores), so the README costs the suite about half the time; each test below checks its own."""
    root = tmp_path_factory.mktemp("readme-runs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda item: _run(workspace, root, *item), enumerate(w for _, w in RUN)))


@pytest.mark.parametrize("index", range(len(RUN)),
                         ids=[f"L{line}-{Path(w[0]).name}-{w[1] if len(w) > 1 else ''}" for line, w in RUN])
def test_readme_command_runs(runs, index):
    line, _words = RUN[index]
    run = runs[index]
    done = run.done
    assert done.returncode == 0, f"README line {line}: stempress {' '.join(run.args)}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    for name in outputs(run.args):
        assert (run.work / name).exists(), f"README line {line}: {name} was not written"
    if run.args[0] == "report":  # writes RESULTS/report/report.html (the workspace's results hold none)
        html = run.work / run.args[1] / "report" / "report.html"
        assert "data:image/png;base64" in html.read_text(), f"README line {line}: {html} has no figure"
