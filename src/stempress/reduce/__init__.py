"""Reducers: task summaries (virtual images, CoM, patterns) computed from blocks of frames in one pass.

``run_reducers(source, default_reducers(calibrate(source)))`` (``run_reducers`` and ``calibrate`` from
``stempress.store.reducing``: running them over a source is an engine pass, a layer above) gives BF/ADF/HAADF
images, the CoM map and the mean pattern; ``run_reducers(..., executor=ThreadExecutor(4))`` gives the same
results from partitions reduced on workers.
"""

from stempress.data.calibration import Calibration, radius_map
from stempress.reduce.calibration import estimate_calibration, find_bf_disk
from stempress.reduce.engine import single_blas_thread
from stempress.reduce.imaging import (
    COM_MASK_BF,
    Annulus,
    CenterOfMass,
    Detector,
    DpcRotation,
    Mask,
    MaxPattern,
    MeanPattern,
    VirtualDetectors,
    abf,
    adf,
    bf,
    curl,
    default_detectors,
    default_reducers,
    divergence,
    dpc_field,
    fit_dpc_rotation,
    haadf,
    integrated_phase,
)
from stempress.reduce.projection import Projection
from stempress.reduce.protocol import LinearReducer, OutputSpec, Reducer, State

__all__ = [
    "COM_MASK_BF",
    "Annulus",
    "Calibration",
    "CenterOfMass",
    "Detector",
    "DpcRotation",
    "LinearReducer",
    "Mask",
    "MaxPattern",
    "MeanPattern",
    "OutputSpec",
    "Projection",
    "Reducer",
    "State",
    "VirtualDetectors",
    "abf",
    "adf",
    "bf",
    "curl",
    "default_detectors",
    "default_reducers",
    "divergence",
    "dpc_field",
    "estimate_calibration",
    "find_bf_disk",
    "fit_dpc_rotation",
    "haadf",
    "integrated_phase",
    "radius_map",
    "single_blas_thread",
]


#: Names that run an engine pass over a source: they moved a layer up, where the engine is.
_MOVED = {name: "stempress.store.reducing" for name in
          ("run_reducers", "calibrate", "compute", "source_calibration", "given_calibration")}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise ImportError(f"stempress.reduce.{name} moved to {_MOVED[name]}: "
                         f"use 'from {_MOVED[name]} import {name}'")
    raise AttributeError(f"module 'stempress.reduce' has no attribute {name!r}")
