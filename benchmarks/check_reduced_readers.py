"""Check that files written by ``stempress reduce`` open in py4DSTEM and HyperSpy WITHOUT stempress.

    python benchmarks/check_reduced_readers.py                       # temp venv, default sources
    python benchmarks/check_reduced_readers.py --venv /tmp/readers   # reuse (or create) a venv there
    python benchmarks/check_reduced_readers.py --keep /tmp/files

Reduces each source with the command line, as a user does (``stempress reduce SOURCE --target ... --out F``;
several targets, in a ``.h5`` and a ``.hspy``; a single target, which py4DSTEM returns as a Node, not a Root),
saves what ``read_reduced`` gives as ``.npz`` plus the expected calibration and the line ``stempress reduce``
printed on how to open the file, then, in the peer venv of
``check_plain_readers.py`` (py4DSTEM 0.14, HyperSpy 2.5, RosettaSciIO 0.15; no stempress, ``python -I``, no
``import hdf5plugin``), opens every file with

- ``rsciio.hspy.file_reader``: one signal per output, bit-equal data, axes scales/units/offsets as calibrated,
  the provenance's sha256 in ``original_metadata``;
- HyperSpy, with the ``hs.load`` call stempress printed, verbatim (``file_format="hspy"`` for ``.h5``, none for
  ``.hspy``): the same (Signal2D images, Signal1D profiles over the scan);
- ``py4DSTEM.read``: each output at ``root.tree("<target>/<output>")`` as RealSlice / DiffractionSlice / Array
  with bit-equal data, the calibration py4DSTEM gives each (a RealSlice's or DiffractionSlice's ``.calibration``,
  the root's, which ``py4DSTEM.show`` draws scale bars from; py4DSTEM 0.14 does not read those classes' dims,
  its own saved virtual images have pixel dims too; an Array's ``.dims``), and the provenance JSON in the root
  metadata.

Prints PASS / FAIL / SKIP per file and reader; exits 1 if anything failed.
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

from check_plain_readers import REAL_EXAMPLE, make_venv
from stempress.data.calibration import Calibration
from stempress.reduce.output import read_reduced, reduced_calibration
from stempress.reduce.sufficiency import parse_target
from stempress.store.readers import HS_CALL_PREFIX

DEFAULT_SOURCES = ["synthetic:smoke/4D_Diff",
                   "synthetic:diffraction?scan=24x20&det=64x64&dtype=uint16&dose=2000&seed=3", str(REAL_EXAMPLE)]
#: Target sets, and the extension of the file each goes to (.hspy: HyperSpy's hs.load needs no file_format).
TARGET_SETS = {"all": (["bf", "adf:inner=1.1,outer=3", "com", "mean_pattern", "radial:bins=16"], ".h5"),
               "all-hspy": (["bf", "adf:inner=1.1,outer=3", "com", "mean_pattern", "radial:bins=16"], ".hspy"),
               "bf": (["bf"], ".h5")}

CHECK = textwrap.dedent('''
    """Runs inside the plain venv: no stempress here, only what a colleague would have."""
    import importlib.util, json, sys, traceback, warnings
    import numpy as np

    assert importlib.util.find_spec("stempress") is None, "stempress is importable: the check is not independent"
    warnings.simplefilter("ignore")
    manifest = json.load(open(sys.argv[1]))
    imported, missing = {}, {}
    for name in ("py4DSTEM", "hyperspy.api"):
        try:
            imported[name] = __import__(name, fromlist=["_"])
        except Exception as exc:  # not installed, or broken on this Python
            missing[name] = f"{type(exc).__name__}: {exc}"
    from rsciio.hspy import file_reader

    def same(got, want):
        got = np.asarray(got)
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{got.dtype}{got.shape} vs {want.dtype}{want.shape}"
        return None if np.array_equal(got, want, equal_nan=True) else "values differ"

    def axes_problem(axes, want):
        got = [(a["name"], a["size"], a["scale"], a["offset"], a["units"], bool(a["navigate"])) for a in axes]
        for g, w in zip(got, want):
            if g[0] != w[0] or g[1] != w[1] or not np.allclose(g[2:4], w[2:4]) or g[4] != w[4] or g[5] != w[5]:
                return f"axes {got}, expected {want}"
        return None if len(got) == len(want) else f"{len(got)} axes, expected {len(want)}"

    def rsciio(entry, arrays):
        signals = {s["metadata"]["General"]["title"]: s for s in file_reader(entry["file"])}
        if sorted(signals) != sorted(entry["outputs"]):
            return f"signals {sorted(signals)}, expected {sorted(entry['outputs'])}"
        for title, out in entry["outputs"].items():
            s = signals[title]
            problem = same(s["data"], arrays[out["npz"]]) or axes_problem(s["axes"], out["axes"])
            sha = s["original_metadata"]["stempress"]["provenance"]["source"]["sha256"]
            if problem is None and sha != entry["sha256"]:
                problem = f"provenance sha256 {sha}"
            if problem:
                return f"{title}: {problem}"
        return None

    def hyperspy(entry, arrays):
        hs = imported["hyperspy.api"]
        loaded = eval(entry["hs_call"], {"hs": hs})  # verbatim what `stempress reduce` told the user
        loaded = loaded if isinstance(loaded, list) else [loaded]
        signals = {s.metadata.General.title: s for s in loaded}
        if sorted(signals) != sorted(entry["outputs"]):
            return f"signals {sorted(signals)}, expected {sorted(entry['outputs'])}"
        for title, out in entry["outputs"].items():
            s = signals[title]
            axes = [a.get_axis_dictionary() for a in sorted(s.axes_manager._axes, key=lambda a: a.index_in_array)]
            problem = same(s.data, arrays[out["npz"]]) or axes_problem(axes, out["axes"])
            kind = type(s).__name__
            if problem is None and kind != out["hyperspy_class"]:
                problem = f"a {kind}, expected {out['hyperspy_class']}"
            if problem:
                return f"{title}: {problem}"
        return None

    def py4dstem(entry, arrays):
        data = imported["py4DSTEM"].read(entry["file"])
        root = data.root
        for title, out in entry["outputs"].items():
            node = root.tree(out["tree"])
            problem = same(node.data, arrays[out["npz"]])
            if problem is None and type(node).__name__ != out["py4dstem_class"]:
                problem = f"a {type(node).__name__}, expected {out['py4dstem_class']}"
            if problem is None:
                problem = node_calibration(node, out)
            if problem:
                return f"{title}: {problem}"
        cal = root.metadata["calibration"]
        got = [cal.get_R_pixel_size(), cal.get_Q_pixel_size()]
        units = [cal.get_R_pixel_units(), cal.get_Q_pixel_units()]
        if not np.allclose(got, entry["pixel_sizes"]) or units != entry["units"]:
            return f"calibration {got} {units}, expected {entry['pixel_sizes']} {entry['units']}"
        record = json.loads(root.metadata["stempress_provenance"]["json"])
        if record["source"]["sha256"] != entry["sha256"]:
            return "provenance json differs"
        if len(entry["outputs"]) == 1 and type(data).__name__ != "Node":
            return f"read a {type(data).__name__} for a single target, expected its Node"
        return None

    def node_calibration(node, out):
        """What py4DSTEM itself uses: a slice's .calibration (scale bars), an Array's dims."""
        if out["py4dstem_class"] in ("RealSlice", "DiffractionSlice"):
            cal = node.calibration
            space = "R" if out["py4dstem_class"] == "RealSlice" else "Q"
            size, units = getattr(cal, f"get_{space}_pixel_size")(), getattr(cal, f"get_{space}_pixel_units")()
            want = out["axes"][0]
            return None if np.isclose(size, want[2]) and units == want[4] else f".calibration {size} {units}"
        for n, want in enumerate(out["axes"]):
            step = float(node.dims[n][1] - node.dims[n][0])
            if not np.isclose(step, want[2]) or node.dim_units[n] != want[4]:
                return f"dim{n} step {step} {node.dim_units[n]}, expected {want[2]} {want[4]}"
        return None

    readers = {"rsciio.hspy": rsciio, "hyperspy.load": hyperspy, "py4DSTEM.read": py4dstem}
    needs = {"hyperspy.load": "hyperspy.api", "py4DSTEM.read": "py4DSTEM"}
    failed = 0
    for entry in manifest:
        arrays = dict(np.load(entry["npz"]))
        for name, check in readers.items():
            label = f"{entry['label']:<48} {name:<14}"
            if needs.get(name) in missing:
                print(f"SKIP {label} not importable: {missing[needs[name]]}")
                continue
            if name == "py4DSTEM.read" and "py4DSTEM.read(" not in entry["told"]:
                print(f"SKIP {label} stempress says: {entry['told']}")
                continue
            try:
                problem = check(entry, arrays)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(limit=3)
            failed += problem is not None
            print(("PASS " if problem is None else "FAIL ") + label + ("" if problem is None else " " + problem))
    from importlib.metadata import version
    import h5py
    packages = ["numpy", "h5py", "rosettasciio"] + [p for p, m in (("py4DSTEM", "py4DSTEM"), ("emdfile", "py4DSTEM"),
                                                                  ("hyperspy", "hyperspy.api")) if m not in missing]
    print("plain venv:", ", ".join(f"{p} {version(p)}" for p in packages), f"HDF5 {h5py.version.hdf5_version}")
    sys.exit(1 if failed else 0)
''')


def write_files(sources: list[str], folder: Path) -> list[dict]:
    """Reduce every source with every target set; the manifest tells the checker what each file must hold."""
    manifest = []
    for spec in sources:
        if not spec.startswith("synthetic:") and not Path(spec).exists():
            print(f"skip source {spec}: not found")
            continue
        for name, (targets, suffix) in TARGET_SETS.items():
            out = folder / f"{len(manifest):02d}_{name}{suffix}"
            args = ["reduce", spec, *(word for t in targets for word in ("--target", t)), "--out", str(out), "--force"]
            done = subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "400"})
            if done.returncode != 0:  # e.g. a detector too small for a BF disk to be found
                print(f"skip {spec} {name}: {(done.stderr or done.stdout).strip()}")
                continue
            results, record = read_reduced(out)
            cal = reduced_calibration(record)
            npz = out.with_suffix(".npz")
            outputs, arrays = {}, {}
            for label, found in results.items():
                for key, array in found.items():
                    arrays[f"a{len(arrays)}"] = array
                    outputs[f"{label} {key}"] = {"npz": f"a{len(arrays) - 1}", "tree": f"{label}/{key}",
                                                 **_expected(array, label, key, cal)}
            np.savez(npz, **arrays)
            print(f"wrote {out.name}: {record['source']['name']} {tuple(record['source']['shape'])}, "
                  f"{', '.join(results)}")
            told = [line for line in done.stdout.splitlines() if HS_CALL_PREFIX in line][-1]  # what reduce printed
            manifest.append({"label": f"{record['source']['name'][:30]} {name}", "file": str(out), "npz": str(npz),
                             "told": told, "hs_call": told[told.index(HS_CALL_PREFIX) + len(HS_CALL_PREFIX):],
                             "sha256": record["source"]["sha256"], "outputs": outputs,
                             "pixel_sizes": [cal.r_pixel_size, cal.q_pixel_size], "units": [cal.r_units, cal.q_units]})
    return manifest


def _expected(array: np.ndarray, label: str, key: str, cal: Calibration) -> dict:
    """Axes (name, size, scale, offset, units, navigate), classes: what the layout promises for one output.
    A radial profile's ring axis: ring centres from the target's own ring edges, in mrad when calibrated."""
    ny, nx = array.shape[:2]
    if key == "mean":
        q = cal.q_pixel_size
        axes = [("Qx", ny, q, -cal.centre_y * q, cal.q_units, False), ("Qy", nx, q, -cal.centre_x * q, cal.q_units,
                                                                          False)]
        return {"axes": axes, "py4dstem_class": "DiffractionSlice", "hyperspy_class": "Signal2D"}
    scan = [("Rx", ny, cal.r_pixel_size, 0.0, cal.r_units), ("Ry", nx, cal.r_pixel_size, 0.0, cal.r_units)]
    if array.ndim == 2:
        return {"axes": [(*a, False) for a in scan], "py4dstem_class": "RealSlice", "hyperspy_class": "Signal2D"}
    edges = parse_target(label).reducer(cal).edges(cal.det_shape, cal)  # type: ignore[attr-defined]
    step = float(edges[1] - edges[0]) * (cal.q_pixel_size if cal.angular else 1.0)
    return {"axes": [(*a, True) for a in scan] + [("r", array.shape[2], step, step / 2, cal.angle_units, False)],
            "py4dstem_class": "Array", "hyperspy_class": "Signal1D"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default=";".join(DEFAULT_SOURCES), help="sources separated by ';'")
    parser.add_argument("--venv", type=Path, default=None, help="venv folder to create or reuse (default: temp)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    sources = [s for s in args.sources.split(";") if s]
    with tempfile.TemporaryDirectory(prefix="stempress-reduced-readers-") as scratch:
        files = args.keep or Path(scratch) / "files"
        files.mkdir(parents=True, exist_ok=True)
        manifest = write_files(sources, files)
        (files / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (files / "check.py").write_text(CHECK)
        python = make_venv(args.venv or Path(scratch) / "venv")
        # -I: isolated mode, so neither PYTHONPATH nor this repository can put stempress on the path
        done = subprocess.run([str(python), "-I", str(files / "check.py"), str(files / "manifest.json")], cwd=files)
    print("ALL PASS" if done.returncode == 0 else "SOME READERS FAILED")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
