"""Check that files written by ``stempress.store.compress`` open in the field's readers WITHOUT stempress.

    python benchmarks/check_plain_readers.py                       # temp venv, default codecs and sources
    python benchmarks/check_plain_readers.py --venv /tmp/readers   # reuse (or create) a venv there
    python benchmarks/check_plain_readers.py --codecs gzip_6,blosc_zstd --keep /tmp/files

Writes each source with each codec (parallel direct-chunk path where the codec has one, EMD 1.0 layout),
saves the source as ``.npy``, then creates a separate virtual environment with only ``h5py hdf5plugin
rosettasciio`` (and, if it installs, ``py4DSTEM``) and in it, in isolated mode, opens every file with

- plain h5py + hdf5plugin: the cube equals the ``.npy`` bit for bit;
- ``rsciio.emd.file_reader``: same data, axes Rx/Ry/Qx/Qy with the source's pixel sizes;
- ``py4DSTEM.read``: a DataCube with the same data and R/Q pixel sizes and units.

Prints PASS / FAIL / SKIP per file and reader; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import venv
from pathlib import Path

import numpy as np

from stempress.data.open import open_source
from stempress.store import compress
from stempress.store.emd import calibration_from

HERE = Path(__file__).resolve()
REAL_EXAMPLE = HERE.parents[2] / "shared" / "data" / "real" / "py4DSTEM_size2x3x4x5.h5"
DEFAULT_SOURCES = ["synthetic:diffraction?scan=24x20&det=64x64&dtype=uint16&dose=2000&seed=3",
                   "synthetic:smoke/3D_EELS", str(REAL_EXAMPLE)]
DEFAULT_CODECS = "blosc_zstd,gzip_6,bitshuffle_lz4,zstd_3,lz4_hdf5,lzf"
BASE_PACKAGES = ["h5py", "hdf5plugin", "rosettasciio"]

CHECK = textwrap.dedent('''
    """Runs inside the plain venv: no stempress here, only what a colleague would have."""
    import importlib.util, json, sys, traceback
    import numpy as np
    import h5py, hdf5plugin  # noqa: F401  registers the plugin filters

    assert importlib.util.find_spec("stempress") is None, "stempress is importable: the check is not independent"
    manifest = json.load(open(sys.argv[1]))
    try:
        import py4DSTEM
        py4dstem_error = None
    except Exception as exc:  # not installed, or broken on this Python
        py4DSTEM, py4dstem_error = None, f"{type(exc).__name__}: {exc}"
    from rsciio.emd import file_reader

    def same(got, want):
        got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{got.dtype}{got.shape} vs {want.dtype}{want.shape}"
        size = want.dtype.itemsize
        return None if np.array_equal(got.view(f"u{size}"), want.view(f"u{size}")) else "values differ"

    def plain(entry, want):
        with h5py.File(entry["file"], "r") as f:
            return same(f[entry["dataset_path"]][()], want)

    def rsciio(entry, want):
        signals = file_reader(entry["file"])
        if len(signals) != 1:
            return f"{len(signals)} signals, expected 1"
        problem = same(np.asarray(signals[0]["data"]), want)
        axes = signals[0]["axes"]
        names = [a["name"] for a in axes]
        scales = [a["scale"] for a in axes]
        if problem is None and names != ["Rx", "Ry", "Qx", "Qy"]:
            problem = f"axes {names}"
        if problem is None and not np.allclose(scales, entry["scales"]):
            problem = f"scales {scales}, expected {entry['scales']}"
        return problem

    def py4dstem(entry, want):
        cube = py4DSTEM.read(entry["file"])
        if type(cube).__name__ != "DataCube":
            return f"read a {type(cube).__name__}, expected a DataCube"
        problem = same(cube.data, want)
        cal = cube.calibration
        got = [cal.get_R_pixel_size(), cal.get_Q_pixel_size()]
        units = [cal.get_R_pixel_units(), cal.get_Q_pixel_units()]
        if problem is None and not np.allclose(got, entry["pixel_sizes"]):
            problem = f"pixel sizes {got}, expected {entry['pixel_sizes']}"
        if problem is None and units != entry["units"]:
            problem = f"units {units}, expected {entry['units']}"
        return problem

    readers = {"h5py+hdf5plugin": plain, "rsciio.emd": rsciio, "py4DSTEM.read": py4dstem}
    failed = 0
    for entry in manifest:
        want = np.load(entry["npy"])
        for name, check in readers.items():
            label = f"{entry['label']:<58} {name:<16}"
            if name == "py4DSTEM.read" and py4DSTEM is None:
                print(f"SKIP {label} py4DSTEM not importable: {py4dstem_error}")
                continue
            try:
                problem = check(entry, want)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(limit=2)
            failed += problem is not None
            print(("PASS " if problem is None else "FAIL ") + label + ("" if problem is None else " " + problem))
    from importlib.metadata import version
    packages = ("numpy", "h5py", "hdf5plugin", "rosettasciio") + (("py4DSTEM",) if py4DSTEM is not None else ())
    versions = {p: version(p) for p in packages}
    versions["HDF5"] = h5py.version.hdf5_version
    print("plain venv:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    sys.exit(1 if failed else 0)
''')


def write_files(sources: list[str], codecs: list[str], folder: Path) -> list[dict]:
    """Compress every source with every codec; the manifest tells the checker what each file must hold."""
    manifest = []
    for spec in sources:
        if not spec.startswith("synthetic:") and not Path(spec).exists():
            print(f"skip source {spec}: not found")
            continue
        with open_source(spec) as source:
            npy = folder / f"{len(manifest):02d}_source.npy"
            np.save(npy, source.read_rows(0, source.shape[0]))
            cal = calibration_from(source.metadata)
            for codec in codecs:
                out = folder / f"{len(manifest):02d}_{codec}.emd"
                report = compress(source, out, codec=codec, chunks=(16, 16, 48, 48))
                path = "parallel" if report.direct else "filter path"
                print(f"wrote {out.name}: {source.name} {source.shape} {source.dtype}, {codec} ({path}), "
                      f"ratio {report.ratio:.2f}")
                manifest.append({
                    "label": f"{source.name[:28]} {codec}", "file": str(out), "npy": str(npy),
                    "dataset_path": report.dataset_path,
                    "scales": [cal.R_pixel_size] * 2 + [cal.Q_pixel_size] * 2,
                    "pixel_sizes": [cal.R_pixel_size, cal.Q_pixel_size],
                    "units": [cal.R_pixel_units, cal.Q_pixel_units],
                })
    return manifest


def make_venv(folder: Path) -> tuple[Path, str | None]:
    """A venv with the plain readers; returns its python and why py4DSTEM could not be installed (or None)."""
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"creating venv {folder} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(folder)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    base = subprocess.run([*pip, *BASE_PACKAGES], capture_output=True, text=True)
    if base.returncode != 0:
        sys.exit(f"pip install {' '.join(BASE_PACKAGES)} failed in {folder}:\n{base.stderr or base.stdout}")
    result = subprocess.run([*pip, "py4DSTEM"], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        return python, lines[-1] if lines else f"pip exited {result.returncode}"
    return python, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", default=DEFAULT_CODECS)
    parser.add_argument("--sources", default=";".join(DEFAULT_SOURCES),
                        help="sources separated by ';'")
    parser.add_argument("--venv", type=Path, default=None, help="venv folder to create or reuse (default: temp)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    sources = [s for s in args.sources.split(";") if s]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="stempress-readers-") as scratch:
        files = args.keep or Path(scratch) / "files"
        files.mkdir(parents=True, exist_ok=True)
        manifest = write_files(sources, codecs, files)
        (files / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (files / "check.py").write_text(CHECK)
        python, py4dstem_problem = make_venv(args.venv or Path(scratch) / "venv")
        if py4dstem_problem:
            print(f"py4DSTEM could not be installed in the plain venv: {py4dstem_problem}")
        # -I: isolated mode, so neither PYTHONPATH nor this repository can put stempress on the path
        done = subprocess.run([str(python), "-I", str(files / "check.py"), str(files / "manifest.json")],
                              cwd=files)
    print("ALL PASS" if done.returncode == 0 else "SOME READERS FAILED")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
