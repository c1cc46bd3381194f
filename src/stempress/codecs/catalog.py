"""Every lossless codec the toolkit knows, as data: a name -> how to configure it, and whether it works here.

A codec does not know whether it is benchmarked or used (ARCHITECTURE.md), so the catalog only describes:
the ``paper`` set is the study's 13 HDF5 methods plus its 3 non-HDF5 baselines, configured exactly as the
study did (PAPER.md "Methods"); the ``all`` set adds the modern lossless filters hdf5plugin ships.

Deliberately excluded (FORMATS.md "Measured pitfalls"), because a lossless benchmark must not contain them:

- SZ (32017), SZ3 (32024), SPERR (32028): error-bounded lossy compressors.
- Zfp (32013): lossy unless ``reversible=True``, and reversible mode rejects uint16 (the study's main dtype).
- FciDecomp (32018, JPEG-LS): on 4-D chunks such as (1,1,256,256) writes tiny chunks without error and
  reads back garbage; only 2-D or (1,H,W) chunks work.
- HTJ2K (32033, lossless JPEG 2000): accepts only one-frame chunks, so it cannot run the study's chunkings.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any, Literal

import h5py
import numpy as np

from stempress.errors import StempressError

try:  # registers the plugin filters with HDF5 as a side effect
    import hdf5plugin
except ImportError:  # pragma: no cover - hdf5plugin is a dependency; degrade to "unavailable" reasons
    hdf5plugin = None

#: Set names accepted by :func:`select_codecs`.
SETS = ("paper", "all")

#: Filters known and left out on purpose, with the reason (shown by listings so nobody re-adds them).
EXCLUDED: dict[str, str] = {
    "sz": "lossy (error-bounded), filter 32017",
    "sz3": "lossy (error-bounded), filter 32024",
    "sperr": "lossy (error-bounded), filter 32028",
    "zfp": "lossy unless reversible; reversible mode rejects uint16, filter 32013",
    "fcidecomp": "reads back garbage from 4-D chunks without an error, filter 32018",
    "htj2k": "accepts only one-frame chunks, filter 32033",
}

# HDF5 filter ids (FORMATS.md table).
_GZIP, _SHUFFLE, _SZIP, _LZF = 1, 2, 4, 32000
_PLUGIN_IDS = {
    "blosc": 32001, "lz4": 32004, "bitshuffle": 32008, "zstd": 32015, "blosc2": 32026, "bzip2": 307,
}
_BUILTIN_IDS = {"gzip": _GZIP, "lzf": _LZF, "szip": _SZIP}
_FILTER_LABELS = {_GZIP: "gzip", _SHUFFLE: "shuffle", _SZIP: "szip", _LZF: "lzf"} | {
    fid: fam for fam, fid in _PLUGIN_IDS.items()
}
_SHUFFLE_MODES = {"none": 0, "byte": 1, "bit": 2}  # same numbers for Blosc.shuffle and Blosc2.filters

#: Python modules each non-HDF5 baseline needs beyond numpy and the standard library.
_BASELINE_NEEDS = {"sparse_csr": "scipy", "entropy_poisson": "constriction"}


@dataclass(frozen=True)
class Codec:
    """One named, fully configured lossless method; ``params`` is the single source of its settings."""

    name: str
    family: str
    storage: Literal["hdf5", "file"]
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    sets: frozenset[str] = frozenset({"all"})
    description: str = ""
    #: Codes electron counts only (non-negative integers); float data cannot use it.
    counts_only: bool = False

    @property
    def filters(self) -> tuple[int, ...]:
        """HDF5 filter ids in pipeline order (empty for ``none`` and the file baselines)."""
        if self.storage != "hdf5" or self.family == "none":
            return ()
        if self.family == "hdf5-builtin":
            head = (_SHUFFLE,) if self.params.get("shuffle") else ()
            return (*head, _BUILTIN_IDS[self.params["filter"]])
        return (_PLUGIN_IDS[self.family],)

    @property
    def filter_id(self) -> int | None:
        """The compressing filter (the last one in the pipeline), as results tables report it."""
        return self.filters[-1] if self.filters else None

    def h5_kwargs(self) -> dict[str, Any]:
        """``create_dataset`` keywords; a fresh plain dict each call so callers may add chunks etc."""
        if self.storage != "hdf5":
            raise StempressError(
                f"codec {self.name!r} is a file format, not an HDF5 filter; "
                f"write it with stempress.codecs.baselines.file_format({self.name!r})"
            )
        p = self.params
        if self.family == "none":
            return {}
        if self.family == "hdf5-builtin":
            kwargs: dict[str, Any] = {"shuffle": True} if p.get("shuffle") else {}
            kwargs["compression"] = p["filter"]
            if p["filter"] == "gzip":
                kwargs["compression_opts"] = p["level"]
            elif p["filter"] == "szip":
                kwargs["compression_opts"] = (p["options_mask"], p["pixels_per_block"])
            return kwargs
        if hdf5plugin is None:
            raise StempressError(f"codec {self.name!r} needs hdf5plugin; install it: pip install hdf5plugin")
        if self.family == "blosc":
            shuffle = _SHUFFLE_MODES[p["shuffle"]]
            flt = hdf5plugin.Blosc(cname=p["cname"], clevel=p["clevel"], shuffle=shuffle)
        elif self.family == "blosc2":
            shuffle = _SHUFFLE_MODES[p["shuffle"]]
            flt = hdf5plugin.Blosc2(cname=p["cname"], clevel=p["clevel"], filters=shuffle)
        elif self.family == "lz4":
            flt = hdf5plugin.LZ4(**p)
        elif self.family == "bitshuffle":
            flt = hdf5plugin.Bitshuffle(**p)
        elif self.family == "zstd":
            flt = hdf5plugin.Zstd(**p)
        elif self.family == "bzip2":
            flt = hdf5plugin.BZip2(**p)
        else:  # pragma: no cover - guarded by the catalog test
            raise ValueError(f"no HDF5 mapping for family {self.family!r}")
        return dict(flt)

    def unavailable_for(self, dtype: Any) -> str | None:
        """Why this codec cannot store a cube of ``dtype`` (None when it can)."""
        if self.counts_only and np.dtype(dtype).kind not in "ui":
            return f"codes integer electron counts only; this cube is {np.dtype(dtype)}"
        return None

    def unavailable_reason(self) -> str | None:
        """None when this codec can write and read here; otherwise why not, and the fix."""
        if self.storage == "file":
            module = _BASELINE_NEEDS.get(self.name)
            if module and importlib.util.find_spec(module) is None:
                return f"{module} is not installed; pip install {module}"
            return None
        if self.family not in ("none", "hdf5-builtin") and hdf5plugin is None:
            return "hdf5plugin is not installed; pip install hdf5plugin"
        for fid in self.filters:
            reason = _filter_problem(fid)
            if reason:
                return reason
        return None

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None

    def config(self) -> dict[str, Any]:
        """JSON-able record of exactly what was configured, for result metadata and provenance."""
        cfg: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "storage": self.storage,
            "params": dict(self.params),
            "filter_id": self.filter_id,
            "filters": list(self.filters),
        }
        if self.storage == "hdf5":
            try:
                kwargs = self.h5_kwargs()
                cfg["h5_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
            except StempressError:
                cfg["h5_kwargs"] = None
        return cfg


def _filter_problem(fid: int) -> str | None:
    """Why HDF5 cannot encode with filter ``fid`` in this process, or None."""
    label = _FILTER_LABELS.get(fid, str(fid))
    try:
        present = bool(h5py.h5z.filter_avail(fid))
        info = h5py.h5z.get_filter_info(fid) if present else 0
    except Exception:  # HDF5 raises for filters it cannot load
        present, info = False, 0
    if fid == _SZIP:
        if not present:
            return "HDF5 built without szip (libaec); use an h5py/HDF5 build with libaec or another codec"
        if not info & h5py.h5z.FILTER_CONFIG_ENCODE_ENABLED:
            return "HDF5 built without szip encoder (libaec); use an h5py/HDF5 build with libaec encoding"
        return None
    if not present:
        return f"HDF5 filter {fid} ({label}) is not registered; pip install hdf5plugin and import it"
    if not info & h5py.h5z.FILTER_CONFIG_ENCODE_ENABLED:
        return f"HDF5 filter {fid} ({label}) can decode but not encode here; install a build with its encoder"
    return None


def _blosc1_codecs(shuffle: str, sets: frozenset[str]) -> list[Codec]:
    """The study's five Blosc1 compressors at its levels (zstd 3, the rest 5); names say bit shuffle."""
    suffix = "_bitshuffle" if shuffle == "bit" else ""
    return [
        Codec(f"blosc_{cname}{suffix}", "blosc", "hdf5",
              {"cname": cname, "clevel": 3 if cname == "zstd" else 5, "shuffle": shuffle}, sets,
              f"Blosc1 (32001) {cname}, clevel {3 if cname == 'zstd' else 5}, {shuffle} shuffle")
        for cname in ("blosclz", "lz4", "lz4hc", "zlib", "zstd")
    ]


def _codecs() -> list[Codec]:
    paper, extra = frozenset({"paper", "all"}), frozenset({"all"})
    out = [
        Codec("none", "none", "hdf5", {}, paper, "uncompressed HDF5 chunks: the ratio-1 reference"),
    ]
    out += [
        Codec(f"gzip_{lv}", "hdf5-builtin", "hdf5", {"filter": "gzip", "level": lv}, paper,
              f"HDF5 built-in deflate at level {lv}")
        for lv in (1, 6, 9)
    ]
    out += [
        Codec("lzf", "hdf5-builtin", "hdf5", {"filter": "lzf"}, paper,
              "LZF (ships with h5py): fast, low ratio"),
        Codec("szip", "hdf5-builtin", "hdf5", {"filter": "szip", "options_mask": "nn", "pixels_per_block": 8},
              paper, "SZIP (libaec) with h5py's defaults: nearest-neighbour, 8 pixels per block"),
    ]
    out += _blosc1_codecs("byte", paper)
    out += [
        Codec("lz4_hdf5", "lz4", "hdf5", {"nbytes": 0}, paper, "hdf5plugin LZ4 (32004), default block size"),
        Codec("bitshuffle_lz4", "bitshuffle", "hdf5", {"nelems": 0, "cname": "lz4"}, paper,
              "Bitshuffle + LZ4 (32008): the Dectris detector default"),
        Codec("sparse_csr", "baseline", "file", {"format": "list of scipy.sparse.csr_matrix, one per frame, pickled"},
              paper,
              "one SciPy CSR matrix per diffraction pattern, the list pickled as the study did"),
        Codec("uint8_overflow", "baseline", "file",
              {"format": "uint8 .npy + .npz overflow map (int64 coords, original values)"}, paper,
              "uint8 cube plus a compressed map of every value that does not survive uint8"),
        Codec("simple_gzip", "baseline", "file", {"format": ".npy through gzip", "compresslevel": 9}, paper,
              "the whole numpy array through Python's gzip module (level 9)"),
    ]
    out += _blosc1_codecs("bit", extra)
    # Blosc2 at the study's Blosc1 levels (lz4 5, zstd 3) so the two generations compare like for like.
    out += [
        Codec(f"blosc2_{cname}{'_bitshuffle' if shuf == 'bit' else ''}", "blosc2", "hdf5",
              {"cname": cname, "clevel": lv, "shuffle": shuf}, extra,
              f"Blosc2 (32026) {cname}, clevel {lv}, {shuf} shuffle")
        for cname, lv in (("lz4", 5), ("zstd", 3))
        for shuf in ("byte", "bit")
    ]
    out += [
        Codec("bitshuffle_zstd", "bitshuffle", "hdf5", {"nelems": 0, "cname": "zstd", "clevel": 3}, extra,
              "Bitshuffle + Zstd (32008) at the library default level 3"),
    ]
    out += [
        Codec(f"zstd_{lv}", "zstd", "hdf5", {"clevel": lv}, extra, f"plain Zstd (32015) at level {lv}")
        for lv in (1, 3, 9, 19)
    ]
    out += [
        Codec("bzip2_9", "bzip2", "hdf5", {"blocksize": 9}, extra, "BZip2 (307), 900 kB blocks"),
        Codec("shuffle_gzip_6", "hdf5-builtin", "hdf5", {"filter": "gzip", "level": 6, "shuffle": True},
              extra,
              "HDF5 byte shuffle then deflate level 6: the portable gzip upgrade"),
        Codec("events_raw_csr", "events", "file",
              {"format": "LiberTEM raw_csr: TOML + indptr (<i8) / indices (<u4) / counts files"}, extra,
              "counted electrons as events (pixel index, count) per scan position, uncompressed",
              counts_only=True),
        Codec("entropy_poisson", "entropy", "file",
              {"model": "per-pixel Poisson mean fitted on the first block", "coder": "constriction ANS",
               "chunk": "scan rows, each decodable alone"}, extra,
              "counted electrons: a Poisson-model entropy code (HDF5 file of coded chunks + model)",
              counts_only=True),
    ]
    return out


#: Every codec by name, in a stable order: the study's 16 methods in its order, then the extras.
CATALOG: dict[str, Codec] = {c.name: c for c in _codecs()}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (case-insensitive)."""
    key = name.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    close = get_close_matches(key, CATALOG, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise StempressError(f"unknown codec {name!r}; {hint}use 'paper', 'all' or one of: {', '.join(CATALOG)}")


def select_codecs(spec: str | Sequence[str]) -> list[Codec]:
    """Resolve ``"paper"``, ``"all"`` or names (list or comma-separated; sets may be mixed in) to codecs.

    Duplicates are dropped and first-seen order kept, so a results table lists codecs as the user asked.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if not names:
        raise StempressError("no codecs selected; give 'paper', 'all' or names like gzip_6,blosc_zstd")
    chosen: dict[str, Codec] = {}
    for name in names:
        group = [c for c in CATALOG.values() if name in c.sets] if name in SETS else [get_codec(name)]
        for codec in group:
            chosen.setdefault(codec.name, codec)
    return list(chosen.values())
