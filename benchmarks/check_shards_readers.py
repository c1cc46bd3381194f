"""Check that a ``--shards`` master file opens as one cube in the field's tools, exactly as their users call them.

    stempress compress scan.npy scan.h5 --shards --dask local:2        # writes scan.h5 + scan.h5.shards/
    /work/venvs/peers/bin/python benchmarks/check_shards_readers.py scan.h5 [--dataset PATH]

Meant for the peers venv (py4DSTEM, HyperSpy/RosettaSciIO, h5py, hdf5plugin; no stempress needed: nothing of it is
imported here). The reference is plain h5py with ``import hdf5plugin`` reading the master's virtual dataset; then,
one fresh process per reader (``python -I``), each does what its users do and nothing else:

- ``h5py``: ``h5py.File(path)[dataset][()]`` with ``import hdf5plugin``, and the shards listed by the virtual
  dataset all present (HDF5 would read a missing one as fill values without a word);
- ``py4DSTEM``: ``py4DSTEM.read(path)`` gives a DataCube whose data equal the reference (EMD layout only);
- ``HyperSpy``: the call ``stempress compress`` prints: ``hs.load(path, file_format="emd")`` (EMD layout) or
  ``hs.load(path, file_format="nexus", dataset_path=dataset)`` (plain layout) gives the same data;
- ``moved``: the master and its shard folder copied to another folder still read (the shards are named relative).

Blosc and other hdf5plugin filters: the readers without ``import hdf5plugin`` get ``HDF5_PLUGIN_PATH`` set to
hdf5plugin's plugin folder, as ``stempress compress`` tells its users to. Prints PASS / FAIL / SKIP per reader;
exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

EMD_PATH = "/datacube_root/datacube/data"

READERS = {
    "h5py": """
        import h5py, hdf5plugin, numpy as np, os, sys
        path, dataset, ref = sys.argv[1:4]
        with h5py.File(path, "r") as f:
            d = f[dataset]
            assert d.is_virtual, "the cube is not a virtual dataset"
            folder = os.path.dirname(os.path.abspath(path))
            for s in d.virtual_sources():
                name = s.file_name if os.path.isabs(s.file_name) else os.path.join(folder, s.file_name)
                assert os.path.isfile(name), f"shard {name} missing"
            data, count = d[()], len(d.virtual_sources())
        assert np.array_equal(data, np.load(ref)), "data differ"
        print(f"{data.shape} {data.dtype}, all {count} shards present")
    """,
    "py4DSTEM": """
        import numpy as np, sys
        import py4DSTEM
        path, dataset, ref = sys.argv[1:4]
        cube = py4DSTEM.read(path)
        assert type(cube).__name__ == "DataCube", f"py4DSTEM.read gave a {type(cube).__name__}"
        assert np.array_equal(np.asarray(cube.data), np.load(ref)), "data differ"
        print(f"DataCube {cube.data.shape}")
    """,
    "HyperSpy": """
        import numpy as np, sys
        import hyperspy.api as hs
        path, dataset, ref = sys.argv[1:4]
        signal = (hs.load(path, file_format="emd") if dataset == "/datacube_root/datacube/data"
                  else hs.load(path, file_format="nexus", dataset_path=dataset))
        signal = signal[0] if isinstance(signal, list) else signal
        assert np.array_equal(np.asarray(signal.data), np.load(ref)), "data differ"
        print(f"{type(signal).__name__} {signal.data.shape}")
    """,
}


def run_reader(name: str, path: Path, dataset: str, reference: Path) -> tuple[str, str]:
    """(PASS/FAIL/SKIP, the reader's last line) from a fresh isolated process."""
    env = dict(os.environ)
    if name != "h5py":
        import hdf5plugin

        env["HDF5_PLUGIN_PATH"] = hdf5plugin.PLUGIN_PATH
    code = textwrap.dedent(READERS[name])
    done = subprocess.run([sys.executable, "-I", "-c", code, str(path), dataset, str(reference)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = (done.stdout + done.stderr).strip().splitlines() or [""]
    if done.returncode != 0 and "ModuleNotFoundError" in lines[-1]:
        return "SKIP", lines[-1]
    return ("PASS" if done.returncode == 0 else "FAIL"), lines[-1]


def _virtual_dataset(f) -> str:
    """The file's virtual dataset (a master holds one)."""
    found: list[str] = []
    f.visititems(lambda name, obj: found.append("/" + name) if getattr(obj, "is_virtual", False) else None)
    if not found:
        raise SystemExit(f"{f.filename} holds no virtual dataset: not a --shards master")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("master", type=Path, help="a master file written by stempress compress --shards")
    parser.add_argument("--dataset", default=None, help="the cube's path (default: the file's virtual dataset)")
    args = parser.parse_args(argv)
    import h5py
    import hdf5plugin  # noqa: F401 - the reference read, as a plain h5py user decodes Blosc
    import numpy as np

    master = args.master.resolve()
    with h5py.File(master, "r") as f:
        dataset = args.dataset or _virtual_dataset(f)
        data = f[dataset][()]
        shards = sorted({Path(s.file_name).parts[0] for s in f[dataset].virtual_sources()})
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "reference.npy"
        np.save(reference, data)
        readers = ["h5py", *(["py4DSTEM"] if dataset == EMD_PATH else []), "HyperSpy"]
        rows += [(name, *run_reader(name, master, dataset, reference)) for name in readers]
        moved = Path(scratch) / "moved"
        moved.mkdir()
        shutil.copy2(master, moved / master.name)
        for folder in shards:
            shutil.copytree(master.parent / folder, moved / folder)
        rows.append(("moved", *run_reader("h5py", moved / master.name, dataset, reference)))
    print(f"{master}:{dataset} {data.shape} {data.dtype}, shards in {', '.join(shards)}")
    for name, verdict, said in rows:
        print(f"{verdict:4}  {name:9}  {said}")
    return 1 if any(verdict == "FAIL" for _n, verdict, _s in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
