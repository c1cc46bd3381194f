"""The codec catalog: the study's methods exactly, every entry lossless through real HDF5 filters."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from stempress.bench.compare import DEFAULT_PAPER_DIR
from stempress.codecs.catalog import CATALOG, EXCLUDED, Codec, get_codec, select_codecs
from stempress.codecs.zstd import Zstd
from stempress.errors import StempressError

#: The study's 16 methods in the order its runs list them (all_runs.csv, one run).
STUDY_ORDER = [
    "none", "gzip_1", "gzip_6", "gzip_9", "lzf", "szip",
    "blosc_blosclz", "blosc_lz4", "blosc_lz4hc", "blosc_zlib", "blosc_zstd",
    "lz4_hdf5", "bitshuffle_lz4", "sparse_csr", "uint8_overflow", "simple_gzip",
]

#: Filter ids from FORMATS.md, written out here so a wrong mapping in the catalog fails.
FORMATS_IDS = {"gzip": 1, "shuffle": 2, "szip": 4, "lzf": 32000, "blosc": 32001, "lz4": 32004,
               "bitshuffle": 32008, "zstd": 32015, "blosc2": 32026, "bzip2": 307}

PAPER_CSV = DEFAULT_PAPER_DIR / "statistics.csv"
HDF5_CODECS = [c.name for c in CATALOG.values() if c.storage == "hdf5"]
DTYPES = ["uint8", "uint16", "uint32", "float32"]
SHAPE = (5, 4, 12, 16)
CHUNKS = (2, 3, 8, 16)  # partial edge chunks on three axes


def make_cube(dtype: str, seed: int = 0) -> np.ndarray:
    """Sparse Poisson counts with a few large values; float32 as 2x2-binned means (fractions)."""
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        counts = rng.poisson(0.4, size=(*SHAPE[:2], SHAPE[2] * 2, SHAPE[3] * 2)).astype(np.float32)
        cube = counts.reshape(*SHAPE[:2], SHAPE[2], 2, SHAPE[3], 2).mean(axis=(3, 5), dtype=np.float32)
        cube[0, 0, 0, :3] = [1035.5, 296.25, 1e-7]
        return cube
    cube = rng.poisson(0.3, size=SHAPE).astype(dtype)
    peak = {"uint8": 255, "uint16": 4095, "uint32": 70000}[dtype]
    cube[rng.integers(0, SHAPE[0], 6), rng.integers(0, SHAPE[1], 6), 6, 8] = peak
    cube[-1, -1, -1, -1] = np.iinfo(dtype).max
    return cube


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def roundtrip(codec: Codec, cube: np.ndarray, path: Path) -> tuple[np.ndarray, list[int], int]:
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("data", data=cube, chunks=CHUNKS, **codec.h5_kwargs())
        pipeline = dset.id.get_create_plist()
        ids = [pipeline.get_filter(i)[0] for i in range(pipeline.get_nfilters())]
    with h5py.File(path, "r") as f:
        dset = f["data"]
        return dset[:], ids, dset.id.get_storage_size()


def skip_if_unavailable(codec: Codec) -> None:
    reason = codec.unavailable_reason()
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        pytest.skip(f"{codec.name}: {reason}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", HDF5_CODECS)
def test_every_hdf5_codec_roundtrips_bit_exact(name: str, dtype: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    skip_if_unavailable(codec)
    cube = make_cube(dtype)
    back, ids, stored = roundtrip(codec, cube, tmp_path / "c.h5")
    assert back.dtype == cube.dtype
    np.testing.assert_array_equal(bits(back), bits(cube))
    assert ids == list(codec.filters)  # the filter really ran, in the declared order
    if name != "none" and dtype == "uint16":
        assert stored < cube.nbytes


@pytest.mark.parametrize("name", HDF5_CODECS)
def test_float_specials_survive_every_hdf5_codec(name: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    skip_if_unavailable(codec)
    cube = make_cube("float32", seed=1)
    cube[1, 2, 3, :5] = [np.nan, np.inf, -np.inf, -0.0, np.float32(1e-45)]
    back, _, _ = roundtrip(codec, cube, tmp_path / "s.h5")
    np.testing.assert_array_equal(bits(back), bits(cube))


def test_paper_set_is_the_study_in_its_order() -> None:
    assert [c.name for c in select_codecs("paper")] == STUDY_ORDER
    assert sum(c.storage == "hdf5" for c in select_codecs("paper")) == 13
    assert [c.name for c in CATALOG.values()][:16] == STUDY_ORDER


def test_paper_set_matches_the_study_results_table() -> None:
    with PAPER_CSV.open() as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    prefixes = ("real_space_", "balanced_", "single_frame_")
    bare = {next((m[len(p):] for p in prefixes if m.startswith(p)), m) for m in methods}
    assert bare == set(STUDY_ORDER)


def test_study_configuration_is_exact() -> None:
    assert get_codec("gzip_9").h5_kwargs() == {"compression": "gzip", "compression_opts": 9}
    assert get_codec("lzf").h5_kwargs() == {"compression": "lzf"}
    assert get_codec("none").h5_kwargs() == {}
    assert get_codec("lz4_hdf5").h5_kwargs() == dict(hdf5plugin.LZ4(nbytes=0))
    assert get_codec("bitshuffle_lz4").h5_kwargs() == dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    assert get_codec("shuffle_gzip_6").h5_kwargs() == {"shuffle": True, "compression": "gzip",
                                                       "compression_opts": 6}


def test_szip_uses_h5py_defaults(tmp_path: Path) -> None:
    codec = get_codec("szip")
    skip_if_unavailable(codec)
    with h5py.File(tmp_path / "z.h5", "w") as f:
        ours = f.create_dataset("ours", shape=SHAPE, dtype="u2", chunks=CHUNKS, **codec.h5_kwargs())
        default = f.create_dataset("default", shape=SHAPE, dtype="u2", chunks=CHUNKS, compression="szip")
        assert ours.compression == default.compression == "szip"
        assert ours.compression_opts == default.compression_opts


BLOSC_EXPECTED = {
    "blosc_blosclz": ("blosclz", 5, hdf5plugin.Blosc.SHUFFLE),
    "blosc_lz4": ("lz4", 5, hdf5plugin.Blosc.SHUFFLE),
    "blosc_lz4hc": ("lz4hc", 5, hdf5plugin.Blosc.SHUFFLE),
    "blosc_zlib": ("zlib", 5, hdf5plugin.Blosc.SHUFFLE),
    "blosc_zstd": ("zstd", 3, hdf5plugin.Blosc.SHUFFLE),
    "blosc_blosclz_bitshuffle": ("blosclz", 5, hdf5plugin.Blosc.BITSHUFFLE),
    "blosc_lz4_bitshuffle": ("lz4", 5, hdf5plugin.Blosc.BITSHUFFLE),
    "blosc_lz4hc_bitshuffle": ("lz4hc", 5, hdf5plugin.Blosc.BITSHUFFLE),
    "blosc_zlib_bitshuffle": ("zlib", 5, hdf5plugin.Blosc.BITSHUFFLE),
    "blosc_zstd_bitshuffle": ("zstd", 3, hdf5plugin.Blosc.BITSHUFFLE),
}


@pytest.mark.parametrize("name", sorted(BLOSC_EXPECTED))
def test_blosc_kwargs_equal_hdf5plugin(name: str) -> None:
    cname, clevel, shuffle = BLOSC_EXPECTED[name]
    assert get_codec(name).h5_kwargs() == dict(hdf5plugin.Blosc(cname=cname, clevel=clevel, shuffle=shuffle))


def test_every_blosc_entry_is_checked() -> None:
    assert {c.name for c in CATALOG.values() if c.family == "blosc"} == set(BLOSC_EXPECTED)


def test_blosc2_and_zstd_kwargs_equal_hdf5plugin() -> None:
    b2 = hdf5plugin.Blosc2
    assert get_codec("blosc2_zstd").h5_kwargs() == dict(b2(cname="zstd", clevel=3, filters=b2.SHUFFLE))
    assert get_codec("blosc2_zstd_bitshuffle").h5_kwargs() == dict(
        b2(cname="zstd", clevel=3, filters=b2.BITSHUFFLE))
    assert get_codec("zstd_19").h5_kwargs() == dict(hdf5plugin.Zstd(clevel=19))
    assert get_codec("bzip2_9").h5_kwargs() == dict(hdf5plugin.BZip2(blocksize=9))
    assert get_codec("bitshuffle_zstd").h5_kwargs() == dict(
        hdf5plugin.Bitshuffle(nelems=0, cname="zstd", clevel=3))


@pytest.mark.parametrize("codec", list(CATALOG.values()), ids=list(CATALOG))
def test_filter_ids_match_formats_md(codec: Codec) -> None:
    if codec.storage == "file" or codec.name == "none":
        assert codec.filters == () and codec.filter_id is None
        return
    family = {"hdf5-builtin": codec.params.get("filter")}.get(codec.family, codec.family)
    assert codec.filter_id == FORMATS_IDS[family]
    if codec.params.get("shuffle") is True:
        assert codec.filters == (FORMATS_IDS["shuffle"], FORMATS_IDS["gzip"])
    if codec.family != "hdf5-builtin":
        assert codec.h5_kwargs()["compression"] == codec.filter_id


def test_all_is_a_superset_with_the_required_extras() -> None:
    paper = {c.name for c in select_codecs("paper")}
    every = [c.name for c in select_codecs("all")]
    assert every == list(CATALOG)
    assert paper < set(every)
    required = {f"blosc_{c}_bitshuffle" for c in ("blosclz", "lz4", "lz4hc", "zlib", "zstd")} | {
        "blosc2_zstd", "blosc2_lz4", "blosc2_zstd_bitshuffle", "bitshuffle_zstd",
        "zstd_1", "zstd_3", "zstd_9", "zstd_19", "bzip2_9", "shuffle_gzip_6"}
    assert required <= set(every)
    for codec in CATALOG.values():
        assert "all" in codec.sets and codec.description.strip()
        assert codec.storage in ("hdf5", "file")
        assert (codec.storage == "file") == (codec.family in ("baseline", "events", "entropy"))


def test_excluded_filters_are_not_in_the_catalog() -> None:
    lossy_ids = {32017, 32024, 32028, 32013, 32018, 32033}
    assert not set(EXCLUDED) & set(CATALOG)
    assert all(reason.strip() for reason in EXCLUDED.values())
    assert not any(set(c.filters) & lossy_ids for c in CATALOG.values())


def test_select_by_names_keeps_order_and_drops_duplicates() -> None:
    assert [c.name for c in select_codecs("zstd_3, gzip_1,zstd_3")] == ["zstd_3", "gzip_1"]
    assert [c.name for c in select_codecs(["BLOSC_ZSTD", "gzip_1", "blosc_zstd"])] == ["blosc_zstd", "gzip_1"]
    mixed = [c.name for c in select_codecs("zstd_19,paper")]
    assert mixed == ["zstd_19", *STUDY_ORDER]


@pytest.mark.parametrize("spec", ["gzip_7", ["gzip_1", "nope"], "", [], " , "])
def test_bad_selections_raise_one_line_errors(spec: object) -> None:
    with pytest.raises(StempressError) as err:
        select_codecs(spec)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message and ("gzip_6" in message or "paper" in message)


def test_unknown_codec_lists_valid_names_and_suggests() -> None:
    with pytest.raises(StempressError, match="did you mean 'gzip_9'") as err:
        get_codec("gzip9")
    assert "blosc_zstd" in str(err.value) and "paper" in str(err.value)


@pytest.mark.parametrize("codec", list(CATALOG.values()), ids=list(CATALOG))
def test_config_is_json_serialisable(codec: Codec) -> None:
    cfg = codec.config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["name"] == codec.name and cfg["family"] == codec.family and cfg["storage"] == codec.storage
    assert cfg["filter_id"] == codec.filter_id and cfg["params"] == codec.params
    if codec.storage == "hdf5" and codec.name != "none":
        assert cfg["h5_kwargs"]["compression"] in ("gzip", "lzf", "szip", codec.filter_id)


def test_file_codecs_have_no_hdf5_kwargs() -> None:
    with pytest.raises(StempressError, match="file_format"):
        get_codec("sparse_csr").h5_kwargs()


def test_codec_is_immutable_and_hashable() -> None:
    codec = get_codec("gzip_6")
    with pytest.raises(AttributeError):
        codec.name = "x"  # type: ignore[misc]
    assert len({codec, get_codec("gzip_6"), get_codec("lzf")}) == 2


@dataclass(frozen=True)
class FakePlugin(Zstd):
    """A plugin family whose filter id nothing registers."""

    family = "fake"
    filter_ids = (32099,)


def test_unregistered_filter_is_reported_with_a_reason() -> None:
    assert not h5py.h5z.filter_avail(32099)  # a real HDF5 query: nothing registers this id
    reason = FakePlugin("fake_1", 1).unavailable_reason()
    assert reason and "32099" in reason and "hdf5plugin" in reason


def test_missing_baseline_library_is_reported() -> None:
    reason = replace(get_codec("sparse_csr"), needs="no_such_module_xyz").unavailable_reason()
    assert reason and "no_such_module_xyz" in reason
    assert get_codec("simple_gzip").unavailable_reason() is None
