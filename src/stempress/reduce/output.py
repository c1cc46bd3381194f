"""Reduced outputs to a file: each target's arrays plus the provenance that makes them reproducible."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D
from stempress.data.write import jsonable
from stempress.plan import provenance
from stempress.reduce.calibration import source_calibration
from stempress.reduce.engine import run_reducers
from stempress.reduce.sufficiency import Target, parse_targets

#: Group holding one subgroup per target.
REDUCED_GROUP = "reduced"
PROVENANCE_ATTR = "stempress_provenance"


def reduce_to_file(
    source: Dataset4D,
    targets: str | Sequence[str | Target],
    out: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Compute every target in one pass and write ``/reduced/<target>/<output>`` with provenance attributes."""
    chosen = parse_targets(targets)
    calibration = source_calibration(source)
    reducers = [t.reducer(calibration, name=t.label) for t in chosen]
    results = run_reducers(source, reducers, progress=progress)
    record = provenance(source, chosen, {}, calibration, outputs={t.label: list(t.keys()) for t in chosen})
    with atomic_output(Path(out), overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[PROVENANCE_ATTR] = json.dumps(record, default=jsonable)
        for target in chosen:
            group = f.create_group(f"{REDUCED_GROUP}/{target.label.replace('/', '_')}")
            group.attrs["target"] = target.label
            group.attrs["assumes"] = json.dumps(list(target.assumes))
            for key, array in target.extract(results[target.label]).items():
                group.create_dataset(key, data=array)
    return Path(out)
