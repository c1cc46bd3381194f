"""Check that every cube file stempress writes opens in the field's tools exactly as their users call them.

    python benchmarks/check_plain_readers.py --venv /work/venvs/peers     # create (or reuse) the peer venv there
    python benchmarks/check_plain_readers.py --codecs gzip_6,blosc_zstd --keep /tmp/files

Writes files with the stempress command line, as a user would (named ``.h5`` as most users name them, plus one
``.emd``): ``compress`` of a synthetic cube with each codec of ``--codecs`` (EMD layout), gzip_6 and blosc_zstd in
the plain layout, and conversions of the real py4DSTEM example, the real Merlin ``.mib``, the real ARINA NXmx
acquisition and a file in Prismatic 2.0's layout (``tests/prismatic_file.py``); ``simulate`` with ``--truth``.
What each file must hold comes from stempress's own reading of the source (``.npy``) and its calibration.

Then, in the peer venv of ``benchmarks/requirements-external.txt`` (py4DSTEM 0.14, HyperSpy 2.5, RosettaSciIO 0.15,
LiberTEM 0.16, h5py, hdf5plugin, ...) WITHOUT stempress (run with ``python -I``), one fresh process per file and
reader does what that reader's users do, and nothing else (no ``import hdf5plugin``):

- ``h5py``: ``h5py.File(path)[dataset][()]``, bit-exact;
- ``py4DSTEM``: ``py4DSTEM.read(path)`` gives a DataCube with the data and the R/Q pixel sizes and units;
- ``hs.load``: the HyperSpy call stempress printed for the file, verbatim: the data, and for EMD the axis scales;
- ``nexus``: ``hs.load(path, file_format="nexus")`` (every array dataset as a signal) shows nothing of stempress's
  own bookkeeping (``/stempress``);
- ``LiberTEM``: ``ctx.load("hdf5", path=..., ds_path=...)`` and a PickUDF over every position, bit-exact;
- ``h5dump`` (the system's HDF5 tools, when on PATH): ``h5dump -d dataset -b LE``, byte-exact;
- ``hs bare``, the control: the same HyperSpy call WITHOUT ``HDF5_PLUGIN_PATH`` must fail exactly for the files
  whose message asked for it (so the message names every codec that needs it, and only those).

A process gets ``HDF5_PLUGIN_PATH`` only where stempress's message for that file told the user to set it, and
then exactly as ``stempress plugin-path`` printed it. Where the message says a tool cannot read the file (lzf
outside h5py), that cell is SKIP with the reason. Prints a PASS / FAIL / SKIP table; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stempress.data.calibration import Calibration
from stempress.data.open import open_source
from stempress.store.readers import HS_CALL_PREFIX

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
REAL = REPO / "tests" / "data" / "real"
REAL_EXAMPLE = REAL / "py4DSTEM_size2x3x4x5.h5"
SYNTHETIC = "synthetic:diffraction?scan=24x20&det=64x64&dtype=uint16&dose=2000&seed=3"
DEFAULT_CODECS = "blosc_zstd,gzip_6,bitshuffle_lz4,zstd_3,lz4_hdf5,blosc2_zstd,bzip2_9,lzf"
#: The peer tools (py4DSTEM, HyperSpy, RosettaSciIO, LiberTEM, LiberTEM-live, stempy, h5py, hdf5plugin), pinned.
REQUIREMENTS = HERE.parent / "requirements-external.txt"
READERS = ["h5py", "py4DSTEM", "hs.load", "nexus", "LiberTEM", "h5dump", "hs bare"]
#: The line compress/simulate print for an hdf5plugin filter, and the HyperSpy call they print.
EXPORT = re.compile(r"`(export HDF5_PLUGIN_PATH=[^`]+)`")
HS_CALL = re.compile(re.escape(HS_CALL_PREFIX) + r"(hs\.load\(.*\))\s*$", re.MULTILINE)

CHECK = textwrap.dedent('''
    """One reader on one file, inside the peer venv: no stempress here, only what a colleague would have."""
    import importlib.util, json, os, subprocess, sys, tempfile, warnings
    import numpy as np

    assert importlib.util.find_spec("stempress") is None, "stempress is importable: the check is not independent"
    warnings.simplefilter("ignore")
    reader, entry = sys.argv[1], json.loads(sys.argv[2])
    want = np.load(entry["npy"])

    def same(got):
        got = np.ascontiguousarray(got)
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{got.dtype}{got.shape} vs {want.dtype}{want.shape}"
        size = want.dtype.itemsize
        return None if np.array_equal(got.view(f"u{size}"), want.view(f"u{size}")) else "values differ"

    def close(got, expected):
        return np.allclose(got, expected, rtol=1e-6)

    def h5py_reader():
        import h5py
        with h5py.File(entry["file"], "r") as f:
            return same(f[entry["dataset"]][()])

    def py4dstem_reader():
        import py4DSTEM
        cube = py4DSTEM.read(entry["file"])
        if type(cube).__name__ != "DataCube":
            return f"read a {type(cube).__name__}, expected a DataCube"
        cal = cube.calibration
        sizes = [cal.get_R_pixel_size(), cal.get_Q_pixel_size()]
        units = [cal.get_R_pixel_units(), cal.get_Q_pixel_units()]
        return (same(cube.data) or (None if close(sizes, entry["sizes"]) else f"pixel sizes {sizes}")
                or (None if units == entry["units"] else f"units {units}"))

    def hyperspy_reader():
        import hyperspy.api as hs
        loaded = eval(entry["hs_call"], {"hs": hs})
        signals = loaded if isinstance(loaded, list) else [loaded]
        if len(signals) != 1:
            return f"{len(signals)} signals, expected 1"
        problem = same(signals[0].data)
        if problem is None and entry["layout"] == "emd":
            axes = sorted(signals[0].axes_manager._axes, key=lambda a: a.index_in_array)
            scales = [a.scale for a in axes]
            expected = [entry["sizes"][0]] * 2 + [entry["sizes"][1]] * 2
            problem = None if close(scales, expected) else f"axis scales {scales}, expected {expected}"
        return problem

    def nexus_reader():
        import hyperspy.api as hs
        loaded = hs.load(entry["file"], file_format="nexus")
        titles = [s.metadata.General.title for s in (loaded if isinstance(loaded, list) else [loaded])]
        ours = [t for t in titles if t.startswith("stempress")]
        return f"lists {ours}" if ours else None

    def libertem_reader():
        from libertem.api import Context
        from libertem.udf.raw import PickUDF
        with Context.make_with("inline") as ctx:
            ds = ctx.load("hdf5", path=entry["file"], ds_path=entry["dataset"])
            roi = np.ones(want.shape[:2], bool)
            got = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=roi)["intensity"].data
        return same(np.asarray(got).reshape(want.shape))

    def h5dump_reader():
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, "dump.bin")
            done = subprocess.run(["h5dump", "-d", entry["dataset"], "-b", "LE", "-o", out, entry["file"]],
                                  capture_output=True, text=True)
            if done.returncode != 0 or not os.path.exists(out):
                lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
                return f"h5dump exit {done.returncode}: {lines[-1] if lines else ''}"
            got = np.fromfile(out, dtype=want.dtype.newbyteorder("<")).reshape(want.shape)
        return same(got.astype(want.dtype))

    readers = {"h5py": h5py_reader, "py4DSTEM": py4dstem_reader, "hs.load": hyperspy_reader, "nexus": nexus_reader,
               "LiberTEM": libertem_reader, "h5dump": h5dump_reader}
    problem = readers[reader]()
    print(json.dumps({"problem": problem, "hdf5plugin_imported": "hdf5plugin" in sys.modules}))
''')


@dataclass
class Written:
    """One file written by the stempress CLI and what its readers must find in it."""

    label: str
    file: Path
    npy: Path
    dataset: str
    layout: str
    message: str
    sizes: list[float] = field(default_factory=list)
    units: list[str] = field(default_factory=list)

    @property
    def hs_call(self) -> str | None:
        found = HS_CALL.search(self.message)
        return found.group(1) if found else None

    @property
    def plugin_env(self) -> dict[str, str]:
        """The variables the message told the user to export (none for gzip, lzf)."""
        found = EXPORT.search(self.message)
        if not found:
            return {}
        words = shlex.split(found.group(1))
        return dict(word.split("=", 1) for word in words[1:])

    def entry(self) -> dict:
        return {"label": self.label, "file": str(self.file), "npy": str(self.npy), "dataset": self.dataset,
                "layout": self.layout, "hs_call": self.hs_call, "sizes": self.sizes, "units": self.units}


def stempress_cli(*args: str) -> str:
    """Run the stempress command line as a user does; its stdout (the message the user reads)."""
    done = subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"})
    if done.returncode != 0:
        sys.exit(f"stempress {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def expected(spec: str, scan: str | None, npy: Path) -> tuple[list[float], list[str]]:
    """Save the cube stempress reads from ``spec`` (what every reader must find) and return its calibration."""
    shape = tuple(int(v) for v in scan.split("x")) if scan else None
    with open_source(spec, scan_shape=shape) as source:
        np.save(npy, source.read_rows(0, source.shape[0]))
        cal = Calibration.from_metadata(source.metadata)
    return [cal.r_pixel_size, cal.q_pixel_size], [cal.r_units, cal.q_units]


def write_files(codecs: list[str], folder: Path) -> list[Written]:
    """Every kind of cube file stempress writes, through its command line."""
    sys.path.insert(0, str(REPO / "tests"))
    from prismatic_file import write_prismatic  # the tests' Prismatic 2.0 layout (no third-party data shipped)

    prismatic = write_prismatic(folder / "source_prismatic.h5",
                                np.random.default_rng(5).random((6, 5, 24, 20)).astype(np.float32))
    jobs: list[tuple[str, str, str | None, str, list[str]]] = []  # label, source, scan, out name, extra args
    jobs += [(f"synthetic {c}", SYNTHETIC, None, f"syn_{c}.h5", ["--codec", c]) for c in codecs]
    jobs += [("synthetic blosc_zstd .emd", SYNTHETIC, None, "syn_blosc_zstd.emd", [])]
    jobs += [(f"synthetic {c} plain", SYNTHETIC, None, f"plain_{c}.h5", ["--codec", c, "--layout", "plain"])
             for c in ("gzip_6", "blosc_zstd")]
    jobs += [("py4DSTEM example", str(REAL_EXAMPLE), None, "example.h5", []),
             ("Merlin .mib", str(REAL / "001_4x2_6bit.mib"), "2x4", "merlin.h5", []),
             ("ARINA NXmx", str(REAL / "test_00_master.h5"), None, "arina.h5", []),
             ("Prismatic", str(prismatic), None, "prismatic.h5", [])]
    written = []
    for label, spec, scan, name, extra in jobs:
        out, npy = folder / name, folder / f"{Path(name).stem}_{Path(name).suffix[1:]}.npy"
        message = stempress_cli("compress", spec, str(out), *extra, "--chunks", "8x8x32x32",
                                *(["--scan-shape", scan] if scan else []))
        sizes, units = expected(spec, scan, npy)
        plain = "--layout" in extra
        written.append(Written(label, out, npy, "/version_1/data/datacubes/datacube_000/data" if plain
                               else "/datacube_root/datacube/data", "plain" if plain else "emd", message, sizes, units))
        print(f"wrote {name}: {label}")
    spec = "synthetic:smoke/4D_Diff"
    message = stempress_cli("simulate", spec, str(folder / "simulated.h5"), "--truth")
    sizes, units = expected(spec, None, folder / "simulated.npy")
    written.append(Written("simulate --truth", folder / "simulated.h5", folder / "simulated.npy",
                           "/datacube_root/datacube/data", "emd", message, sizes, units))
    print("wrote simulated.h5: simulate")
    return written


def make_venv(folder: Path, requirements: Path = REQUIREMENTS) -> Path:
    """A venv with the peer tools of ``requirements`` (and never stempress); returns its python."""
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"creating venv {folder} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(folder)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pip install -r {requirements} failed in {folder}:\n{done.stderr or done.stdout}")
    return python


def skip_reason(file: Written, reader: str) -> str | None:
    """Cells that do not apply, or that stempress's own message rules out."""
    if reader == "py4DSTEM" and file.layout == "plain":
        return "plain layout: not EMD (stempress points to h5py and HyperSpy's nexus reader)"
    if reader == "h5dump" and "h5dump, HDFView and MATLAB cannot" in file.message:
        return "lzf: stempress says h5dump cannot read it"
    if reader == "h5dump" and shutil.which("h5dump") is None:
        return "h5dump not on PATH"
    if reader == "hs.load" and file.hs_call is None:
        return "stempress printed no HyperSpy call"
    return None


def run_cell(python: Path, script: Path, file: Written, reader: str) -> tuple[str, str]:
    reason = skip_reason(file, "hs.load" if reader == "hs bare" else reader)
    if reason:
        return "SKIP", reason
    env = {k: v for k, v in os.environ.items() if k not in ("HDF5_PLUGIN_PATH", "PYTHONPATH")}
    if reader == "hs bare":
        status, why = _run(python, script, file, "hs.load", env)
        if (status == "FAIL") == bool(file.plugin_env):
            return "PASS", why and "fails without HDF5_PLUGIN_PATH, as stempress says"
        return "FAIL", why or "reads without HDF5_PLUGIN_PATH although stempress said it needs it"
    return _run(python, script, file, reader, {**env, **file.plugin_env})


def _run(python: Path, script: Path, file: Written, reader: str, env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run([str(python), "-I", str(script), reader, json.dumps(file.entry())], capture_output=True,
                          text=True, env=env, cwd=file.file.parent, timeout=600)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        last = [line for line in done.stderr.splitlines() if line.strip()]
        return "FAIL", last[-1] if last else f"exit {done.returncode}"
    itself = " (the reader imported hdf5plugin itself)" if result["hdf5plugin_imported"] else ""
    if result["problem"] is None:
        return "PASS", "imported hdf5plugin itself" if itself else ""
    return "FAIL", result["problem"] + itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", default=DEFAULT_CODECS)
    parser.add_argument("--venv", type=Path, default=None, help="venv folder to create or reuse (default: temp)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    parser.add_argument("--workers", type=int, default=2, help="reader processes at once")
    args = parser.parse_args()
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="stempress-readers-") as scratch:
        files_dir = args.keep or Path(scratch) / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        files = write_files(codecs, files_dir)
        script = files_dir / "check_reader.py"
        script.write_text(CHECK)
        python = make_venv(args.venv or Path(scratch) / "venv")
        cells = [(f, r) for f in files for r in READERS]
        with ThreadPoolExecutor(max(1, args.workers)) as pool:
            results = list(pool.map(lambda cell: run_cell(python, script, *cell), cells))
        versions = subprocess.run([str(python), "-I", "-c", "from importlib.metadata import version as v; import h5py;"
                                   "print(', '.join(f'{p} {v(p)}' for p in ('py4DSTEM','hyperspy','rosettasciio',"
                                   "'libertem','h5py','hdf5plugin','numpy')), 'HDF5', h5py.version.hdf5_version)"],
                                  capture_output=True, text=True).stdout.strip()
    table = {(f.label, r): res for (f, r), res in zip(cells, results, strict=True)}
    width = max(len(f.label) for f in files)
    print("\n" + " " * width + " | " + " | ".join(f"{r:8}" for r in READERS))
    for f in files:
        print(f"{f.label:{width}} | " + " | ".join(f"{table[f.label, r][0]:8}" for r in READERS))
    for (label, reader), (status, why) in table.items():
        if why and not (status == "PASS" and why.startswith("imported hdf5plugin")):
            print(f"{status} {label} / {reader}: {why}")
    itself = sorted({reader for (_, reader), (_, why) in table.items() if why.startswith("imported hdf5plugin")})
    print(f"readers that imported hdf5plugin themselves: {', '.join(itself) or 'none'}")
    h5dump = subprocess.run(["h5dump", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("h5dump") else "no h5dump"
    print(f"peer venv: {versions}; {h5dump}")
    failed = sum(status == "FAIL" for status, _ in results)
    print("ALL PASS" if not failed else f"{failed} READER CHECK(S) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
