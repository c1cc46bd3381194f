"""``count_to_file`` on the engine writes the bytes the code before the engine wrote (``tests/data/count_main``),
whatever the rows per block or the executor; only the provenance's write time differs.

The entropy-coded file is compared through a second path instead (its codec may change on its own branch): the
coded datasets equal those the codec writes from main's raw_csr of the same counts, and the record equals main's."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from real_data import COUNT_MAIN
from stempress.data.base import Block
from stempress.data.open import open_source
from stempress.data.raw_csr import RawCsrSource
from stempress.data.record import read_h5_record
from stempress.data.stream import BlockStream
from stempress.events.counting import CountingParams
from stempress.events.libertem import raw_csr_files
from stempress.exec.local import ThreadExecutor
from stempress.store.count import count_to_file

DATA = COUNT_MAIN
SPEC = ("synthetic:diffraction?scan=4x3&det=16x16&mode=integrating&gain=40&read_noise=2&dose=80"
        "&dtype=uint16&offset=100&seed=5")
PARAMS = {"pixel": CountingParams(dark=100.0, gain=40.0, threshold=20.0),
          "cluster": CountingParams(dark=100.0, gain=40.0, threshold=20.0, method="cluster", cluster_count="sum")}
CASES = [("stempy", "pixel.h5"), ("raw_csr", "pixel.toml"), ("stempy", "cluster.h5")]
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def _files(path: Path) -> list[Path]:
    return [path, *raw_csr_files(path).values()] if path.suffix == ".toml" else [path]


def _timeless(path: Path) -> bytes:
    data = path.read_bytes()
    assert len(_TIME.findall(data)) == (0 if path.suffix == ".bin" else 1), f"{path}: one provenance time"
    return _TIME.sub(b"<time>", data)


@pytest.mark.parametrize(("fmt", "name"), CASES)
@pytest.mark.parametrize("how", ["rows2", "default", "threads"])
def test_count_writes_the_bytes_it_wrote_before_the_engine(tmp_path: Path, fmt: str, name: str, how: str) -> None:
    kwargs: dict = {"rows": 2} if how == "rows2" else {}
    if how == "threads":
        kwargs["executor"] = ThreadExecutor(2)
    report = count_to_file(open_source(SPEC), tmp_path / name, PARAMS[name.split(".")[0]], fmt=fmt,
                           inputs={"source": SPEC}, **kwargs)
    assert report.n_electrons > 900 and report.warnings == []
    for ours, before in zip(_files(tmp_path / name), _files(DATA / name), strict=True):
        assert _timeless(ours) == _timeless(before), f"{ours.name} differs from {before}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in _files(tmp_path / name))


def test_a_stream_of_blocks_counts_to_the_same_file(tmp_path: Path) -> None:
    """A live stream (blocks once, in arrival order, no random access) is counted like the file it would become."""
    source = open_source(SPEC)
    blocks = (Block(start, source.read_rows(start, min(start + 1, 4))) for start in range(4))
    stream = BlockStream(blocks, source.shape, source.dtype, name=source.name, metadata=dict(source.metadata))
    count_to_file(stream, tmp_path / "pixel.toml", PARAMS["pixel"], inputs={"source": SPEC})
    for ours, before in zip(_files(tmp_path / "pixel.toml"), _files(DATA / "pixel.toml"), strict=True):
        assert _timeless(ours) == _timeless(before), f"{ours.name} differs from {before}"


def _datasets(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file outside the record (``metadata/``), as values."""
    found: dict = {}
    with h5py.File(path, "r") as f:
        found["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}

        def take(name: str, obj: object) -> None:
            if name.startswith("metadata"):
                return
            if isinstance(obj, h5py.Dataset):
                found[name] = (obj[()].tobytes(), {k: np.asarray(v).tolist() for k, v in obj.attrs.items()})
            elif isinstance(obj, h5py.Group):
                found[name] = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}

        f.visititems(take)
    return found


def _record(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        record = read_h5_record(f)
    record["provenance"].pop("time")
    return record


@pytest.mark.parametrize("how", ["rows2", "threads", "processes"])
def test_count_writes_the_entropy_file_the_codec_writes_from_the_counts(tmp_path: Path, how: str) -> None:
    from stempress.events.entropy_file import write_entropy_events
    from stempress.exec.processes import ProcessExecutor

    kwargs: dict = ({"rows": 2} if how == "rows2" else
                    {"executor": ThreadExecutor(2) if how == "threads" else ProcessExecutor(2)})
    report = count_to_file(open_source(SPEC), tmp_path / "ours.h5", PARAMS["pixel"], fmt="entropy",
                           inputs={"source": SPEC}, **kwargs)
    with RawCsrSource(DATA / "pixel.toml") as counts:  # main's counts, coded by the codec of this tree
        write_entropy_events(counts, tmp_path / "second.h5", record={})
    coded = _datasets(tmp_path / "ours.h5")
    assert len(coded) > 3 and coded == _datasets(tmp_path / "second.h5")
    assert _record(tmp_path / "ours.h5") == _record(DATA / "pixel.entropy.h5")
    assert report.n_electrons > 900 and sorted(p.name for p in tmp_path.iterdir()) == ["ours.h5", "second.h5"]
