"""What stempress tells a user about opening its files works as told, in processes that never import hdf5plugin.

The full matrix (py4DSTEM, HyperSpy, LiberTEM, h5dump in a venv without stempress) is
``benchmarks/check_plain_readers.py``; these tests keep the instructions themselves honest on every run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rsciio import IO_PLUGINS

from stempress.data.open import open_source
from stempress.store.readers import H5PY_ONLY, HDF5_BUILTIN, hyperspy_call, plugin_filters, py4dstem_call

SOURCE = "synthetic:smoke/4D_Diff"
#: A child that reads the cube with plain h5py and proves hdf5plugin was never imported.
READ = """
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    data = f[sys.argv[2]][()]
assert "hdf5plugin" not in sys.modules
np.save(sys.argv[3], data)
"""


def stempress(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def bare_env() -> dict[str, str]:
    """This environment without any HDF5_PLUGIN_PATH the developer may have set."""
    return {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}


def read_in_child(path: Path, dataset: str, env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", READ, str(path), dataset, str(out)], capture_output=True, text=True,
                          env=env, timeout=120)


def exported(line: str) -> dict[str, str]:
    """The variables an ``export NAME=VALUE`` line sets, parsed as a POSIX shell would."""
    words = shlex.split(line)
    assert words[0] == "export", line
    return dict(word.split("=", 1) for word in words[1:])


def test_plugin_path_prints_the_line_that_lets_a_plain_hdf5_program_decode_blosc(tmp_path):
    out = tmp_path / "cube.h5"
    done = stempress("compress", SOURCE, str(out), env=bare_env())  # the default codec: blosc_zstd
    assert done.returncode == 0, done.stderr
    printed = stempress("plugin-path")
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    assert line in done.stdout  # compress says what to run, with the path itself
    variables = exported(line)
    folder = Path(variables["HDF5_PLUGIN_PATH"])
    assert (folder / "libh5blosc.so").is_file() or any(folder.glob("*blosc*"))
    assert stempress("plugin-path", "--folder").stdout.strip() == str(folder)

    without = read_in_child(out, "/datacube_root/datacube/data", bare_env(), tmp_path / "no.npy")
    assert without.returncode != 0 and "plugin" in without.stderr.lower()  # the problem the line solves
    told = read_in_child(out, "/datacube_root/datacube/data", {**bare_env(), **variables}, tmp_path / "yes.npy")
    assert told.returncode == 0, told.stderr
    with open_source(SOURCE) as source:
        np.testing.assert_array_equal(np.load(tmp_path / "yes.npy"), source.read_rows(0, source.shape[0]))


def test_gzip_output_opens_without_any_plugin_and_says_nothing_about_one(tmp_path):
    out = tmp_path / "cube.emd"
    done = stempress("compress", SOURCE, str(out), "--codec", "gzip_6", env=bare_env())
    assert done.returncode == 0, done.stderr
    assert "HDF5_PLUGIN_PATH" not in done.stdout
    assert f"hs.load({str(out)!r})" in done.stdout  # .emd: HyperSpy's EMD reader without file_format
    read = read_in_child(out, "/datacube_root/datacube/data", bare_env(), tmp_path / "g.npy")
    assert read.returncode == 0, read.stderr


@pytest.mark.parametrize(("filters", "needs"), [((32001,), ["blosc (32001)"]), ((2, 1), []), ((32000,), []),
                                                ((32008,), ["bshuf (32008)"]), ((32015,), ["zstd (32015)"])])
def test_which_filters_need_the_plugin_path(filters, needs):
    assert plugin_filters(filters) == needs


def test_hyperspy_picks_readers_by_extension_as_the_hints_assume():
    """RosettaSciIO's registry, which HyperSpy's load consults: .h5 is ambiguous, .emd and .hspy are not."""
    by_extension = {ext: [r["name"] for r in IO_PLUGINS if ext in r["file_extensions"]] for ext in ("h5", "emd",
                                                                                                   "hspy")}
    assert len(by_extension["h5"]) > 1 and by_extension["emd"] == ["EMD"] and by_extension["hspy"] == ["HSPY"]
    assert hyperspy_call(Path("a.h5"), "emd") == "hs.load('a.h5', file_format='emd')"
    assert hyperspy_call(Path("a.emd"), "emd") == "hs.load('a.emd')"
    assert hyperspy_call(Path("r.hspy"), "hspy") == "hs.load('r.hspy')"
    assert hyperspy_call(Path("p.h5"), "nexus", "/x") == "hs.load('p.h5', file_format='nexus', dataset_path='/x')"
    assert not (HDF5_BUILTIN & H5PY_ONLY)
    assert py4dstem_call(Path("a.emd")) == "py4DSTEM.read('a.emd')"
    assert "rename" in py4dstem_call(Path("r.hspy"))  # py4DSTEM.read goes by the extension as well
