"""How long the CLI takes to its first output, and which heavy modules each command loads.

    python benchmarks/cli_startup.py [--repeats 7] [--against /path/to/other/src]

Runs ``python -m stempress --help``, ``compress --help`` and a compress of a small .npy (4x4x16x16 uint16) in
fresh processes, ``--repeats`` times each, and prints the fastest wall time (the least disturbed by other load)
and the heavy modules (pandas, SciPy, Matplotlib, RosettaSciIO, Blosc2) the command imported. With ``--against``
the same runs use another checkout's sources (e.g. the main branch before lazy imports) side by side, with the
ratio. Timing only: ``tests/test_cli.py`` checks the module sets.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEAVY = ("pandas", "scipy", "matplotlib", "rsciio", "blosc2")
PROBE = ("import atexit, runpy, sys\n"
         "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})), "
         "file=sys.stderr))\n"
         "sys.argv = ['stempress', *sys.argv[1:]]\n"
         "runpy.run_module('stempress', run_name='__main__')\n")
COMMANDS = {"--help": ["--help"], "compress --help": ["compress", "--help"],
            "compress small.npy": ["compress", "small.npy", "out.h5", "--force"]}


def run(src: Path, args: list[str], work: Path, repeats: int) -> tuple[float, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stempress", *args], cwd=work, env=env, capture_output=True, check=True)
        best = min(best, time.perf_counter() - start)
    probe = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=work, env=env, capture_output=True, text=True,
                           check=True)
    line = next(x for x in probe.stderr.splitlines() if x.startswith("MODULES "))
    return best, [m for m in HEAVY if m in line.split()[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another checkout's src folder to compare with")
    options = parser.parse_args()
    ours = Path(__file__).resolve().parents[1] / "src"
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        np.save(work / "small.npy", np.random.default_rng(0).poisson(1.0, (4, 4, 16, 16)).astype(np.uint16))
        for name, args in COMMANDS.items():
            mine, loaded = run(ours, args, work, options.repeats)
            line = f"{name:20s} ours {mine:.3f} s, heavy modules: {', '.join(loaded) or 'none'}"
            if options.against:
                theirs, their_loaded = run(options.against, args, work, options.repeats)
                line += (f" | other {theirs:.3f} s, heavy modules: {', '.join(their_loaded) or 'none'}"
                         f" | other/ours {theirs / mine:.2f}x")
            print(line, flush=True)


if __name__ == "__main__":
    main()
