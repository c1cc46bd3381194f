"""Check that the event files ``stempress count`` writes open in stempy and LiberTEM exactly as their users open them.

    python benchmarks/check_event_readers.py --venv /work/venvs/peers     # create (or reuse) the peer venv there
    python benchmarks/check_event_readers.py --keep /tmp/events

Counts sources with the stempress command line, as a user would (``count SOURCE --out F --threshold T``, pixel and
cluster counting, a stempy ``.h5`` and a LiberTEM ``raw_csr`` ``.toml`` each), saves the counts stempress itself
reads back from each file (``.npy``, every stempress command reads them so), then, in the peer venv of
``benchmarks/requirements-external.txt`` WITHOUT stempress (``python -I``), one fresh process per file does what
that reader's users do:

- stempy ``.h5``: ``stempy.io.load_electron_counts(path)`` (a ``SparseArray``), its ``scan_shape`` and
  ``frame_shape``, and ``.to_dense()`` (the counts per scan position) equal to stempress's counts;
- LiberTEM ``raw_csr``: ``ctx.load("raw_csr", path=toml)`` and a PickUDF over every position, bit-exact, dtype
  included.

Prints PASS / FAIL per file; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from check_plain_readers import REAL, make_venv
from stempress.data.open import open_source

SOURCES = [("synthetic", "synthetic:diffraction?scan=12x10&det=48x40&dtype=uint16&dose=2000&seed=3", "3", None),
           ("Merlin .mib", str(REAL / "001_4x2_6bit.mib"), "0.5", "2x4")]
METHODS = ["pixel", "cluster"]
FORMATS = {"stempy": ".h5", "raw_csr": ".toml"}

CHECK = textwrap.dedent('''
    """One event file in the peer venv: no stempress here, only what a colleague would have."""
    import importlib.util, json, sys, warnings
    import numpy as np

    def stempy_reader(entry, want):
        from stempy.io import load_electron_counts
        counts = load_electron_counts(entry["file"])
        shapes = (tuple(counts.scan_shape), tuple(counts.frame_shape))
        if shapes != (want.shape[:2], want.shape[2:]):
            return f"scan/frame shape {shapes}, expected {want.shape[:2]} {want.shape[2:]}"
        dense = np.asarray(counts.to_dense())
        return None if np.array_equal(dense, want) else "counts differ"

    def libertem_reader(entry, want):
        from libertem.api import Context
        from libertem.udf.raw import PickUDF
        with Context.make_with("inline") as ctx:
            ds = ctx.load("raw_csr", path=entry["file"])
            roi = np.ones(want.shape[:2], bool)
            got = np.asarray(ctx.run_udf(dataset=ds, udf=PickUDF(), roi=roi)["intensity"].data)
        if got.dtype != want.dtype or got.size != want.size:
            return f"{got.dtype}{got.shape} vs {want.dtype}{want.shape}"
        return None if np.array_equal(got.reshape(want.shape), want) else "counts differ"

    if __name__ == "__main__":
        assert importlib.util.find_spec("stempress") is None, "stempress is importable: the check is not independent"
        warnings.simplefilter("ignore")
        entry = json.loads(sys.argv[1])
        readers = {"stempy": stempy_reader, "raw_csr": libertem_reader}
        print(json.dumps({"problem": readers[entry["format"]](entry, np.load(entry["npy"]))}))
''')


def write_files(folder: Path) -> list[dict]:
    """Count every source with every method into every format, through the command line."""
    entries = []
    for label, spec, threshold, scan in SOURCES:
        for method in METHODS:
            for fmt, suffix in FORMATS.items():
                out = folder / f"{len(entries):02d}_{method}_{fmt}{suffix}"
                args = ["count", spec, "--out", str(out), "--threshold", threshold, "--method", method,
                        "--format", fmt, *(["--scan-shape", scan] if scan else [])]
                done = subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True,
                                      env={**os.environ, "COLUMNS": "400"})
                if done.returncode != 0:
                    sys.exit(f"stempress {' '.join(args)} failed: {done.stderr or done.stdout}")
                npy = out.with_suffix(".npy")
                with open_source(str(out)) as source:  # what stempress reads back from its own file
                    np.save(npy, source.read_rows(0, source.shape[0]))
                entries.append({"label": f"{label} {method} {fmt}", "file": str(out), "npy": str(npy),
                                "format": fmt})
                print(f"wrote {out.name}", flush=True)
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=None, help="venv folder to create or reuse (default: temp)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stempress-event-readers-") as scratch:
        folder = args.keep or Path(scratch) / "files"
        folder.mkdir(parents=True, exist_ok=True)
        entries = write_files(folder)
        script = folder / "check_events.py"
        script.write_text(CHECK)
        python = make_venv(args.venv or Path(scratch) / "venv")
        failed = 0
        for entry in entries:
            env = {k: v for k, v in os.environ.items() if k not in ("HDF5_PLUGIN_PATH", "PYTHONPATH")}
            done = subprocess.run([str(python), "-I", str(script), json.dumps(entry)], capture_output=True,
                                  text=True, env=env, cwd=folder, timeout=600)
            try:
                problem = json.loads(done.stdout.strip().splitlines()[-1])["problem"]
            except (IndexError, json.JSONDecodeError):
                last = [line for line in done.stderr.splitlines() if line.strip()]
                problem = last[-1] if last else f"exit {done.returncode}"
            failed += problem is not None
            reader = "stempy.io.load_electron_counts" if entry["format"] == "stempy" else 'LiberTEM ctx.load("raw_csr")'
            print(f"{'PASS' if problem is None else 'FAIL'} {entry['label']:<32} {reader}" + (f": {problem}"
                                                                                                if problem else ""))
        versions = subprocess.run([str(python), "-I", "-c", "from importlib.metadata import version as v;"
                                   "print(', '.join(f'{p} {v(p)}' for p in ('stempy', 'libertem', 'numpy')))"],
                                  capture_output=True, text=True).stdout.strip()
    print(f"peer venv: {versions}")
    print("ALL PASS" if not failed else f"{failed} EVENT READER CHECK(S) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
