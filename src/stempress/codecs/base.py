"""What every codec is: one named configuration that says how HDF5 stores it (or which file format it is),
whether it works here, and, where one exists, the direct-chunk encoder producing exactly what its filters store.

The models are numcodecs' ``Codec`` (a ``codec_id``, ``get_config()`` -> JSON-able dict with an ``id``,
``from_config``, a registry: ``registry.py``) and hdf5plugin's "filter as ``create_dataset`` keywords". A codec
family (one subclass, one module) defines all of these together, so nothing switches over families elsewhere.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import h5py
import numpy as np

from stempress.errors import StempressError

try:  # registers the plugin filters with HDF5 as a side effect
    import hdf5plugin
except ImportError:  # pragma: no cover - hdf5plugin is a dependency; degrade to "unavailable" reasons
    hdf5plugin = None

#: A dataset's filter pipeline as HDF5 stores it: (filter id, cd_values) per filter, in order.
Pipeline = Sequence[tuple[int, Sequence[int]]]

#: Keys :meth:`Codec.config` adds to :meth:`Codec.get_config` for provenance; derived, so ``from_config``
#: accepts and ignores them (a stored ``config()`` rebuilds the codec).
DERIVED_KEYS = ("family", "storage", "params", "filter_id", "filters", "h5_kwargs")

_NUMERIC_KINDS = "biuf"  # dtypes whose chunks are plain bytes the direct-chunk encoders handle


@runtime_checkable
class ChunkCodec(Protocol):
    """Encodes a full chunk to the bytes one HDF5 filter pipeline stores for it, and back (what
    :meth:`Codec.chunk_codec` returns; the helpers the encoders share are in ``chunk_codec``)."""

    name: str

    def encode(self, chunk: np.ndarray) -> bytes: ...

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray: ...


@dataclass(frozen=True)
class Codec(ABC):
    """One named, fully configured lossless method. Its dataclass fields are its configuration: ``name``
    plus the settings that decide the stored bytes (``sets`` and ``description`` only place it in the catalog)."""

    #: Registry key, as numcodecs' ``codec_id``: one per class, stored in every configuration.
    codec_id: ClassVar[str]
    #: The label results tables group codecs by (several classes may share one, e.g. ``hdf5-builtin``).
    family: ClassVar[str]
    storage: ClassVar[Literal["hdf5", "file"]]
    #: Codes electron counts only (non-negative integers); float data cannot use it.
    counts_only: ClassVar[bool] = False

    name: str
    sets: frozenset[str] = field(default=frozenset({"all"}), compare=False, kw_only=True)
    description: str = field(default="", compare=False, kw_only=True)

    # -- configuration ---------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The configuration beyond the name: every compared field, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare and f.name != "name"}

    @property
    def params(self) -> dict[str, Any]:
        """The settings as listings and results tables show them (a fresh dict)."""
        return dict(self.settings())

    def get_config(self) -> dict[str, Any]:
        """JSON-able configuration with the codec's ``id``; :func:`registry.codec_from_config` rebuilds it."""
        return {"id": self.codec_id, "name": self.name, **self.settings()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The codec a :meth:`get_config` (or :meth:`config`) dict describes; ``id`` is the caller's business."""
        accepted = {f.name for f in fields(cls) if f.init and f.compare}
        given = {k: v for k, v in config.items() if k != "id" and (k in accepted or k not in DERIVED_KEYS)}
        unknown = sorted(set(given) - accepted)
        if unknown:
            raise StempressError(f"codec configuration {cls.codec_id!r} has unknown keys {', '.join(unknown)}; "
                                 f"it takes {', '.join(sorted(accepted))} (was it written by a newer stempress?)")
        try:
            return cls(**given)
        except TypeError as exc:
            raise StempressError(f"codec configuration {cls.codec_id!r} is incomplete: {exc}; "
                                 f"it takes {', '.join(sorted(accepted))}") from exc

    def config(self) -> dict[str, Any]:
        """:meth:`get_config` plus what it implies (family, filters, ``create_dataset`` keywords), for result
        metadata and the attribute stored with a compressed cube; ``from_config`` reads it back."""
        cfg: dict[str, Any] = {
            **self.get_config(),
            "family": self.family,
            "storage": self.storage,
            "params": self.params,
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

    # -- HDF5 ------------------------------------------------------------------------------------------------
    @property
    def filters(self) -> tuple[int, ...]:
        """HDF5 filter ids in pipeline order (empty for ``none`` and the file formats)."""
        return ()

    @property
    def filter_id(self) -> int | None:
        """The compressing filter (the last one in the pipeline), as results tables report it."""
        return self.filters[-1] if self.filters else None

    @abstractmethod
    def h5_kwargs(self) -> dict[str, Any]:
        """``create_dataset`` keywords; a fresh plain dict each call so callers may add chunks etc."""

    # -- availability ----------------------------------------------------------------------------------------
    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when this codec can write and read here; otherwise why not, and the fix."""

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None

    def unavailable_for(self, dtype: Any) -> str | None:
        """Why this codec cannot store a cube of ``dtype`` (None when it can)."""
        if self.counts_only and np.dtype(dtype).kind not in "ui":
            return f"codes integer electron counts only; this cube is {np.dtype(dtype)}"
        return None

    # -- direct chunks ---------------------------------------------------------------------------------------
    @abstractmethod
    def direct_chunk_reason(self, dtype: np.dtype | None = None) -> str | None:
        """None when this codec's chunks can be made here without HDF5; otherwise why not (one line)."""

    def chunk_codec(self, dtype: np.dtype, *, threads: int = 1) -> ChunkCodec | None:
        """The encoder/decoder of this codec's chunks for ``dtype`` (the codec itself), or None (see
        :meth:`direct_chunk_reason`). ``threads`` matters only to codecs whose library holds the GIL."""
        if self.direct_chunk_reason(dtype) is not None:
            return None
        return self  # type: ignore[return-value]  # families with an encoder implement ChunkCodec


@dataclass(frozen=True)
class Hdf5Codec(Codec):
    """A codec stored as an HDF5 filter pipeline (``filter_ids``, configured by ``h5_kwargs()``)."""

    storage: ClassVar[Literal["hdf5", "file"]] = "hdf5"
    #: The pipeline this family declares (a family whose pipeline depends on settings overrides ``filters``).
    filter_ids: ClassVar[tuple[int, ...]] = ()
    #: Its filter comes from hdf5plugin (False for the filters HDF5 or h5py build in).
    needs_plugin: ClassVar[bool] = True

    @property
    def filters(self) -> tuple[int, ...]:
        return self.filter_ids

    def plugin(self) -> ModuleType:
        """hdf5plugin, whose filter classes give the ``create_dataset`` keywords, or a one-line error."""
        if hdf5plugin is None:
            raise StempressError(f"codec {self.name!r} needs hdf5plugin; install it: pip install hdf5plugin")
        return hdf5plugin

    def unavailable_reason(self) -> str | None:
        if self.needs_plugin and hdf5plugin is None:
            return "hdf5plugin is not installed; pip install hdf5plugin"
        for fid in self.filters:
            reason = filter_problem(fid, self.family)
            if reason:
                return reason
        return None

    def direct_chunk_reason(self, dtype: np.dtype | None = None) -> str | None:
        unavailable = self.unavailable_reason()
        if unavailable:
            return f"the filter itself is unavailable: {unavailable}"
        if dtype is not None and (np.dtype(dtype).kind not in _NUMERIC_KINDS or np.dtype(dtype).hasobject):
            return f"dtype {np.dtype(dtype)} is not a plain numeric type"
        return self.encoder_problem()

    def encoder_problem(self) -> str | None:
        """Why this family has no direct-chunk encoder in this process (None: it has one)."""
        return None

    # -- from a file's pipeline ------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, name: str) -> Self | None:
        """This family's codec as ``pipeline`` configures it, or None when the pipeline is not this family's
        (or its cd_values are not the filter's format)."""
        if tuple(int(fid) for fid, _ in pipeline) != cls.filter_ids:
            return None
        values = tuple(int(v) for v in pipeline[-1][1]) if pipeline else ()
        try:
            return cls(name, **cls.settings_from_cd_values(values))
        except (IndexError, KeyError, StempressError):
            return None

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """The settings the last filter's cd_values (as HDF5 stores them, after ``set_local``) encode."""
        return {}


@dataclass(frozen=True)
class FileCodec(Codec):
    """A codec that writes a file format of its own (``bench.baselines``), not an HDF5 filter pipeline."""

    storage: ClassVar[Literal["hdf5", "file"]] = "file"

    #: What the file holds, in words and numbers (shown as ``params``).
    layout: dict[str, Any] = field(default_factory=dict, hash=False)
    #: Python module it needs beyond numpy and the standard library.
    needs: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.layout)

    def h5_kwargs(self) -> dict[str, Any]:
        raise StempressError(
            f"codec {self.name!r} is a file format, not an HDF5 filter; "
            f"write it with stempress.bench.baselines.file_format({self.name!r})"
        )

    def unavailable_reason(self) -> str | None:
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed; pip install {self.needs}"
        return None

    def direct_chunk_reason(self, dtype: np.dtype | None = None) -> str | None:
        return f"{self.name} is a file format, not an HDF5 filter pipeline"


def filter_problem(fid: int, label: str) -> str | None:
    """Why HDF5 cannot encode with filter ``fid`` (called ``label`` in messages) in this process, or None."""
    present, info = filter_state(fid)
    if not present:
        return f"HDF5 filter {fid} ({label}) is not registered; pip install hdf5plugin and import it"
    if not info & h5py.h5z.FILTER_CONFIG_ENCODE_ENABLED:
        return f"HDF5 filter {fid} ({label}) can decode but not encode here; install a build with its encoder"
    return None


def filter_state(fid: int) -> tuple[bool, int]:
    """Whether HDF5 has filter ``fid``, and its configuration flags (encode/decode enabled)."""
    try:
        present = bool(h5py.h5z.filter_avail(fid))
        return present, (h5py.h5z.get_filter_info(fid) if present else 0)
    except Exception:  # HDF5 raises for filters it cannot load
        return False, 0
