"""A source as something a worker can reopen: what ``open_source`` was given, small and picklable.

Why: an open HDF5 file or MIB memory map cannot travel to another process or a cluster node, but its path,
dataset and scan shape can (LiberTEM's partitions work the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceSpec:
    """``open_source(target, dataset=..., scan_shape=...)`` again, anywhere the file is visible."""

    target: str
    dataset: str | None = None
    scan_shape: tuple[int, int] | None = None

    def open(self) -> Any:
        from stempress.data.open import open_source

        return open_source(self.target, dataset=self.dataset, scan_shape=self.scan_shape)


def spec_of(source: Any) -> SourceSpec | None:
    """How to reopen ``source`` elsewhere, or None for sources that live only here (arrays, wrappers)."""
    spec = getattr(source, "opened_from", None)
    return spec if isinstance(spec, SourceSpec) else None
