"""Every lossless codec the toolkit knows, by name: a list of configured codec instances (each family's class
says how HDF5 stores it and whether it works here, see ``base.py``), and the study's sets of them.

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

from collections.abc import Sequence
from dataclasses import replace
from difflib import get_close_matches

from stempress.codecs.base import Codec
from stempress.codecs.bitshuffle import Bitshuffle
from stempress.codecs.blosc import Blosc
from stempress.codecs.blosc2 import Blosc2
from stempress.codecs.bzip2 import Bzip2
from stempress.codecs.deflate import Deflate
from stempress.codecs.file_codecs import BaselineFile, EntropyFile, EventsFile
from stempress.codecs.lz4 import Lz4
from stempress.codecs.lzf import Lzf
from stempress.codecs.none import Uncompressed
from stempress.codecs.szip import Szip
from stempress.codecs.zstd import Zstd
from stempress.errors import StempressError

__all__ = ["CATALOG", "EXCLUDED", "SETS", "Codec", "get_codec", "identify", "select_codecs"]

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

_PAPER, _EXTRA = frozenset({"paper", "all"}), frozenset({"all"})


def _blosc1_codecs(shuffle: str, sets: frozenset[str]) -> list[Codec]:
    """The study's five Blosc1 compressors at its levels (zstd 3, the rest 5); names say bit shuffle."""
    suffix = "_bitshuffle" if shuffle == "bit" else ""
    out: list[Codec] = []
    for cname in ("blosclz", "lz4", "lz4hc", "zlib", "zstd"):
        clevel = 3 if cname == "zstd" else 5
        out.append(Blosc(f"blosc_{cname}{suffix}", cname, clevel, shuffle, sets=sets,
                         description=f"Blosc1 (32001) {cname}, clevel {clevel}, {shuffle} shuffle"))
    return out


def _codecs() -> list[Codec]:
    """The study's 16 methods in its order, then the extras."""
    out: list[Codec] = [
        Uncompressed("none", sets=_PAPER, description="uncompressed HDF5 chunks: the ratio-1 reference"),
        *(Deflate(f"gzip_{lv}", lv, sets=_PAPER, description=f"HDF5 built-in deflate at level {lv}")
          for lv in (1, 6, 9)),
        Lzf("lzf", sets=_PAPER, description="LZF (ships with h5py): fast, low ratio"),
        Szip("szip", "nn", 8, sets=_PAPER,
             description="SZIP (libaec) with h5py's defaults: nearest-neighbour, 8 pixels per block"),
        *_blosc1_codecs("byte", _PAPER),
        Lz4("lz4_hdf5", nbytes=0, sets=_PAPER, description="hdf5plugin LZ4 (32004), default block size"),
        Bitshuffle("bitshuffle_lz4", nelems=0, cname="lz4", sets=_PAPER,
                   description="Bitshuffle + LZ4 (32008): the Dectris detector default"),
        BaselineFile("sparse_csr", {"format": "list of scipy.sparse.csr_matrix, one per frame, pickled"}, "scipy",
                     sets=_PAPER,
                     description="one SciPy CSR matrix per diffraction pattern, the list pickled as the study did"),
        BaselineFile("uint8_overflow", {"format": "uint8 .npy + .npz overflow map (int64 coords, original values)"},
                     sets=_PAPER,
                     description="uint8 cube plus a compressed map of every value that does not survive uint8"),
        BaselineFile("simple_gzip", {"format": ".npy through gzip", "compresslevel": 9}, sets=_PAPER,
                     description="the whole numpy array through Python's gzip module (level 9)"),
        *_blosc1_codecs("bit", _EXTRA),
    ]
    # Blosc2 at the study's Blosc1 levels (lz4 5, zstd 3) so the two generations compare like for like.
    out += [
        Blosc2(f"blosc2_{cname}{'_bitshuffle' if shuf == 'bit' else ''}", cname, lv, shuf, sets=_EXTRA,
               description=f"Blosc2 (32026) {cname}, clevel {lv}, {shuf} shuffle")
        for cname, lv in (("lz4", 5), ("zstd", 3))
        for shuf in ("byte", "bit")
    ]
    out += [
        Bitshuffle("bitshuffle_zstd", nelems=0, cname="zstd", clevel=3, sets=_EXTRA,
                   description="Bitshuffle + Zstd (32008) at the library default level 3"),
        *(Zstd(f"zstd_{lv}", lv, sets=_EXTRA, description=f"plain Zstd (32015) at level {lv}")
          for lv in (1, 3, 9, 19)),
        Bzip2("bzip2_9", blocksize=9, sets=_EXTRA, description="BZip2 (307), 900 kB blocks"),
        Deflate("shuffle_gzip_6", 6, shuffle=True, sets=_EXTRA,
                description="HDF5 byte shuffle then deflate level 6: the portable gzip upgrade"),
        EventsFile("events_raw_csr",
                   {"format": "LiberTEM raw_csr: TOML + indptr (<i8) / indices (<u4) / counts files"},
                   sets=_EXTRA,
                   description="counted electrons as events (pixel index, count) per scan position, uncompressed"),
        EntropyFile("entropy_poisson",
                    {"model": "per-pixel Poisson mean fitted on the first block", "coder": "constriction ANS",
                     "chunk": "scan rows, each decodable alone"}, "constriction", sets=_EXTRA,
                    description="counted electrons: a Poisson-model entropy code (HDF5 file of coded chunks + model)"),
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


def identify(codec: Codec) -> Codec:
    """The catalog entry configured exactly like ``codec`` whatever its name (so a file from another tool is
    reported as ``gzip_6``, not ``deflate(level=6)``), else ``codec`` itself."""
    for entry in CATALOG.values():
        if replace(codec, name=entry.name) == entry:
            return entry
    return codec
