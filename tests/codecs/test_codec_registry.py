"""The codec registry: configurations and filter pipelines rebuild codecs, and verify uses them, not names."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from stempress.codecs.base import Codec
from stempress.codecs.catalog import CATALOG, get_codec, identify
from stempress.codecs.registry import REGISTRY, codec_from_config, codec_from_pipeline
from stempress.data.base import ArraySource, Block
from stempress.data.emd import CODEC_ATTR
from stempress.data.hdf5 import STUDY_EMD_PATH, dataset_filters
from stempress.data.stream import BlockStream
from stempress.errors import StempressError
from stempress.sinks.archive import ArchiveSpec
from stempress.store import compress, verify
from stempress.store.write import write_archive

SHAPE = (4, 6, 16, 16)
CHUNKS = (2, 4, 16, 16)  # edge chunks in x


def cube(dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(7).poisson(1.5, size=SHAPE).astype(dtype)


def pipeline_of(dset: h5py.Dataset) -> list[tuple[int, list[int]]]:
    return [(f["id"], f["options"]) for f in dataset_filters(dset)]


# -- configurations ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", list(CATALOG.values()), ids=list(CATALOG))
def test_every_catalog_codec_round_trips_its_config(codec: Codec) -> None:
    config = codec.get_config()
    assert config["id"] in REGISTRY and config["name"] == codec.name
    assert json.loads(json.dumps(config)) == config
    rebuilt = codec_from_config(json.loads(json.dumps(config)))
    assert rebuilt == codec and type(rebuilt) is type(codec)
    assert rebuilt.params == codec.params and rebuilt.filters == codec.filters
    if codec.storage == "hdf5" and codec.available:
        assert rebuilt.h5_kwargs() == codec.h5_kwargs()


@pytest.mark.parametrize("codec", list(CATALOG.values()), ids=list(CATALOG))
def test_the_stored_provenance_record_rebuilds_the_codec(codec: Codec) -> None:
    """``config()`` is what compress stores with a cube: its derived keys are read back and ignored."""
    assert codec_from_config(json.loads(json.dumps(codec.config()))) == codec


def test_a_changed_setting_makes_another_codec() -> None:
    stored = replace(get_codec("blosc_zstd"), clevel=9).get_config()
    rebuilt = codec_from_config(stored)
    assert rebuilt.name == "blosc_zstd" and rebuilt != get_codec("blosc_zstd")
    assert rebuilt.h5_kwargs()["compression_opts"][4] == 9


@pytest.mark.parametrize("config", [{"id": "snappy9", "name": "x"}, {"name": "gzip_6", "level": 6}, {"id": 3}])
def test_unknown_ids_name_the_known_ones_in_one_line(config: dict) -> None:
    with pytest.raises(StempressError) as err:
        codec_from_config(config)
    message = str(err.value)
    assert "\n" not in message and "unknown codec id" in message
    assert all(codec_id in message for codec_id in REGISTRY)


@pytest.mark.parametrize(("config", "words"), [
    ({"id": "zstd", "name": "z", "clevel": 3, "speed": 1}, "speed"),  # a key the codec does not take
    ({"id": "blosc", "name": "b", "cname": "zstd"}, "clevel"),  # a setting missing
    ({"id": "blosc", "name": "b", "cname": "brotli", "clevel": 5}, "brotli"),  # a value the filter lacks
    (["id", "zstd"], "mapping"),
])
def test_bad_configurations_give_one_line_errors(config: object, words: str) -> None:
    with pytest.raises(StempressError, match=words) as err:
        codec_from_config(config)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


# -- filter pipelines -------------------------------------------------------------------------------------------

HDF5_AVAILABLE = [c.name for c in CATALOG.values() if c.storage == "hdf5" and c.available]


@pytest.mark.parametrize("name", HDF5_AVAILABLE)
def test_every_hdf5_codec_is_recognised_from_the_pipeline_it_writes(name: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    with h5py.File(tmp_path / "p.h5", "w") as f:
        dset = f.create_dataset("d", data=cube(), chunks=CHUNKS, **codec.h5_kwargs())
        found = codec_from_pipeline(pipeline_of(dset))
    assert found is not None and identify(found) is codec


def test_a_configuration_outside_the_catalog_is_named_by_its_settings(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "p.h5", "w") as f:
        dset = f.create_dataset("d", data=cube(), chunks=CHUNKS, **hdf5plugin.Zstd(clevel=7))
        found = codec_from_pipeline(pipeline_of(dset))
    assert found is not None and found.name == "zstd(clevel=7)" and identify(found) is found


def test_a_pipeline_with_a_filter_no_codec_declares_is_not_guessed(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "p.h5", "w") as f:
        dset = f.create_dataset("d", data=cube(), chunks=CHUNKS, compression="gzip", fletcher32=True)
        assert codec_from_pipeline(pipeline_of(dset)) is None


# -- verify: from the stored configuration, else from the pipeline ----------------------------------------------

def write_with(path: Path, data: np.ndarray, codec: Codec) -> Path:
    """A cube written as compress writes it (direct chunks, checksums, the codec's config stored beside it)."""
    spec = ArchiveSpec(path, codec, CHUNKS, layout="plain", dataset_path=STUDY_EMD_PATH, provenance=False)
    write_archive(BlockStream([Block(0, data)], data.shape, data.dtype), spec, workers=2)
    with h5py.File(path, "r+") as f:
        f[STUDY_EMD_PATH].attrs[CODEC_ATTR] = json.dumps(codec.config())
    return path


def test_verify_uses_the_stored_config_not_the_catalog_entry_of_its_name(tmp_path: Path) -> None:
    data = cube()
    codec = replace(get_codec("blosc_zstd"), clevel=9)
    report = verify(write_with(tmp_path / "c.h5", data, codec), against=ArraySource(data))
    assert report.ok and report.checksums and report.direct, report.summary()
    assert report.codec == "blosc_zstd" and report.codec_config == codec.get_config()
    assert report.codec_config["clevel"] == 9


def test_verify_decodes_with_the_stored_compressor_where_the_name_says_another(tmp_path: Path) -> None:
    """Same filter (32008), same name, but zstd inside: decoding as the catalog's bitshuffle_lz4 would fail."""
    data = cube()
    codec = replace(get_codec("bitshuffle_lz4"), cname="zstd", clevel=3)
    if codec.direct_chunk_reason(data.dtype):
        pytest.skip(codec.direct_chunk_reason(data.dtype))
    report = verify(write_with(tmp_path / "b.h5", data, codec), against=ArraySource(data))
    assert report.ok and report.direct, report.summary()
    assert report.codec_config["cname"] == "zstd"


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE)), "blosc_zstd"),
    ({"compression": "gzip", "compression_opts": 6, "shuffle": True}, "shuffle_gzip_6"),
    (dict(hdf5plugin.Bitshuffle(cname="lz4")), "bitshuffle_lz4"),
    (dict(hdf5plugin.Zstd(clevel=7)), "zstd(clevel=7)"),
])
def test_verify_reads_a_plain_h5py_file_from_its_filter_pipeline(kwargs: dict, name: str, tmp_path: Path) -> None:
    data = cube()
    with h5py.File(tmp_path / "plain.h5", "w") as f:  # no stempress attributes at all
        f.create_dataset("scan", data=data, chunks=CHUNKS, **kwargs)
    report = verify(tmp_path / "plain.h5", against=ArraySource(data))
    assert report.ok and report.compared, report.summary()
    assert report.codec == name and report.direct and report.codec_config is not None
    assert report.chunks_checked == report.chunks_total == 4


def test_verify_of_a_pipeline_no_codec_declares_goes_through_hdf5(tmp_path: Path) -> None:
    data = cube()
    with h5py.File(tmp_path / "f32.h5", "w") as f:
        f.create_dataset("scan", data=data, chunks=CHUNKS, compression="gzip", fletcher32=True)
    report = verify(tmp_path / "f32.h5", against=ArraySource(data))
    assert report.ok and not report.direct and report.codec_config is None
    assert "fletcher32" in report.codec


def test_verify_reads_a_config_without_id_from_the_pipeline(tmp_path: Path) -> None:
    """Files written before configurations carried an ``id`` (or edited by hand) still verify in parallel."""
    data = cube()
    path = compress(ArraySource(data), tmp_path / "old.h5", codec="gzip_6", chunks=CHUNKS, workers=2).path
    with h5py.File(path, "r+") as f:
        dset = next(d for d in _datasets(f) if CODEC_ATTR in d.attrs)
        old = {k: v for k, v in json.loads(dset.attrs[CODEC_ATTR]).items() if k != "id"}
        dset.attrs[CODEC_ATTR] = json.dumps(old)
    report = verify(path, against=ArraySource(data))
    assert report.ok and report.direct and report.codec == "gzip_6", report.summary()


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found
