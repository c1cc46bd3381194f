"""Reducers: task summaries (virtual images, CoM, patterns) computed from blocks of frames in one pass.

``run_reducers(source, default_reducers(calibrate(source)))`` (``run_reducers`` and ``calibrate`` from
``stempress.store.reducing``: running them over a source is an engine pass, a layer above) gives BF/ADF/HAADF
images, the CoM map and the mean pattern; ``run_reducers(..., executor=ThreadExecutor(4))`` gives the same
results from partitions reduced on workers.
"""

from stempress.reduce.calibration import Calibration, estimate_calibration, find_bf_disk
from stempress.reduce.engine import Projection, single_blas_thread
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
    radius_map,
)
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
