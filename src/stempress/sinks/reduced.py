"""The reduced file as a sink: the reducer set's results written as the HDF5 file ``reduce`` writes (virtual
images, CoM, profiles with calibration and provenance), so ``reduce`` and ``ingest`` share one writer. From a
live stream it also carries the frame accounting (provenance ``frames``) and the ``received`` mask."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output, check_new_output
from stempress.data.base import Dataset4D
from stempress.provenance import cube_digest, hashes_cube_bytes, provenance
from stempress.reduce.calibration import Calibration
from stempress.reduce.output import derived_values, target_outputs, write_reduced
from stempress.reduce.sufficiency import Target, parse_targets
from stempress.sinks.archive import RECEIVED
from stempress.sinks.protocol import RunInfo
from stempress.sinks.reduce import ReducerSink

log = logging.getLogger("stempress")


class ReducedFileSink:
    """Computes ``targets`` over the blocks and writes them to ``out`` at ``finish``, whole or not at all.
    ``source`` is only read for provenance (its name, path and digest); partitions carry the reducers alone."""

    name = "reduced"

    def __init__(self, source: Dataset4D, targets: str | Sequence[str | Target], out: Path | str, *,
                 calibration: Calibration, force: bool = False) -> None:
        self.source, self.out, self.force = source, Path(out), force
        self.targets = parse_targets(targets)
        check_new_output(self.out, force)  # before the pass, not after it
        self.calibration = calibration  # measured before the pass by the caller (store.reducing.source_calibration)
        self.reducers = [t.reducer(self.calibration, name=t.label) for t in self.targets]
        self.inner = ReducerSink(self.reducers, self.calibration)
        # a small in-memory cube's provenance digest is taken from the blocks of this pass when they come in row
        # order, instead of reading the cube again for it
        self._hash = hashlib.sha256() if hashes_cube_bytes(source) else None
        self._next_row = 0

    def open(self, info: RunInfo) -> None:
        self.info = info
        self.inner.open(info)

    def consume(self, block: Any) -> None:
        self.inner.consume(block)
        self.observe(block)

    def observe(self, block: Any) -> None:
        """The provenance digest of a small in-memory cube, from blocks in row order (else it is read again)."""
        if self._hash is None:
            return
        if block.start == self._next_row:
            self._hash.update(np.ascontiguousarray(block.data).tobytes())
            self._next_row = block.stop
        else:
            self._hash = None

    def partial(self, rows: tuple[int, int]) -> ReducerSink:
        return self.inner.partial(rows)

    def merge(self, other: ReducerSink) -> None:
        self.inner.merge(other)

    def finish(self) -> Path:
        results = self.inner.finish()
        source, chosen, calibration = self.source, self.targets, self.calibration
        outputs = [o for t, r in zip(chosen, self.reducers, strict=True)
                   for o in target_outputs(t, r, results[t.label], source, calibration)]
        units = {t.label: {o.key: o.spec.units for o in outputs if o.target == t} for t in chosen}
        digest = cube_digest(self._hash) if self._hash is not None and self._next_row == source.shape[0] else None
        record = provenance(source, chosen, {}, calibration, digest=digest,
                            outputs={t.label: list(t.keys()) for t in chosen}, units=units)
        record["derived"] = derived_values(chosen, results)
        received = getattr(results, "received", None)
        frames = self.info.metadata.get("frames") if hasattr(self, "info") else None
        if frames is not None:
            record["frames"] = dict(frames)  # a live stream's accounting, final once the pass is over
        if getattr(results, "nonfinite", None) is not None:
            record["excluded"] = results.nonfinite.summary()
            log.warning("%s: %s", source.name, results.nonfinite.sentence())
        with atomic_output(self.out, force=self.force) as tmp, h5py.File(tmp, "w", track_order=True) as f:
            write_reduced(f, outputs, record, calibration)
            if received is not None or frames is not None:
                mask = received if received is not None else np.ones(source.shape[:2], bool)
                f.create_dataset(RECEIVED, data=mask, compression="gzip").attrs["description"] = (
                    "True where the scan position's frame was received; per-position outputs are NaN elsewhere")
        return self.out
