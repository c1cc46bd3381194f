"""Named synthetic suites, and ``synthetic:...`` strings, so a benchmark can name its data in one word.

``paper-like`` mirrors the study's Table 1 (same dataset names, so result tables join with theirs) at a
size a 2-core machine benchmarks in minutes; its parameters were tuned until each cube's fraction of
zeros and maximum land near the study's (``STUDY_TABLE1``). ``smoke`` is the same five kinds, tiny;
``counted`` is a sparse counted-electron cube like the later revision's cost-table cube.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import parse_qsl

from stempress.data.synthetic import KINDS, SyntheticSource, SyntheticSpec
from stempress.errors import StempressError

#: The study's measured values per dataset (dataset_inventory.csv), the targets of ``paper-like``.
STUDY_TABLE1: dict[str, dict[str, Any]] = {
    "4D_EELS": {"shape": (64, 64, 256, 1024), "dtype": "uint16", "sparsity": 0.928317, "max": 4095.0},
    "4D_Diff": {"shape": (256, 256, 256, 256), "dtype": "uint16", "sparsity": 0.747353, "max": 4016.0},
    "4D_Diff-2x2-binning": {"shape": (256, 256, 128, 128), "dtype": "float32", "sparsity": 0.708912,
                            "max": 1035.5},
    "4D_Diff-4x4-binning": {"shape": (256, 256, 64, 64), "dtype": "float32", "sparsity": 0.609100,
                            "max": 296.5},
    "3D_EELS": {"shape": (64, 64, 1, 1024), "dtype": "uint16", "sparsity": 0.494717, "max": 65535.0},
}

# A Merlin on a spectrometer: 12-bit counter, spectrum in a band of rows, saturated zero-loss peak.
_EELS_4D = SyntheticSpec(
    name="4D_EELS", kind="eels", scan=(16, 16), det=(128, 1024), dtype="uint16", max_count=4095,
    dose=413_000.0, seed=11, thickness=0.5, tail_power=3.5, energy_drift=0.5,
    band_center=0.16, band_halfwidth=0.031, band_edge=0.01,
)
# Ptychography-style 4D-STEM: a large BF disk (overlapping weak Bragg disks of a thin crystal), a faint
# diffuse tail out to a limiting aperture, nothing beyond it, and two hot pixels (the study's 4016-count
# maximum is one pixel far above its neighbours).
_DIFF = SyntheticSpec(
    name="4D_Diff", kind="diffraction", scan=(32, 32), det=(256, 256), dtype="uint16", max_count=4095,
    dose=112_800.0, seed=12, thickness=0.25, bragg_share=0.15, bf_radius=0.54, bf_edge=0.01,
    lattice=(0.28, 0.28, 60.0), debye_waller=0.35, halo_radius=0.2111, halo_power=5.49, tail=9.83e-5,
    cutoff_radius=0.899, hot_pixels=2, hot_rate=3800.0,
)
# A spectrum on an integrating camera: gain, a little read noise, clipped at 0 and 65535.
_EELS_3D = SyntheticSpec(
    name="3D_EELS", kind="eels", scan=(64, 64), det=(1, 1024), dtype="uint16", mode="integrating",
    dose=9400.0, gain=49.3, read_noise=0.52, seed=13, thickness=0.6, tail_power=3.0, energy_drift=1.0,
    dispersion=0.5, energy_origin=-29.0, edges=((99.0, 0.03), (284.0, 0.02), (456.0, 0.01), (532.0, 0.01)),
)


def _binned(spec: SyntheticSpec, b: int) -> SyntheticSpec:
    """The same acquisition mean-binned b x b, as the study made its 2x2 and 4x4 cubes."""
    return spec.replace(name=f"{spec.name}-{b}x{b}-binning", bin=b, dtype="float32")


def _shrunk(spec: SyntheticSpec, scan: tuple[int, int], det: tuple[int, int], **changes: Any) -> SyntheticSpec:
    """A smaller cube with the same expected counts per pixel (dose scales with the detector area)."""
    area = (det[0] * det[1]) / (spec.det[0] * spec.det[1])
    return spec.replace(scan=scan, det=det, dose=spec.dose * area, **changes)


def _paper_like() -> list[SyntheticSpec]:
    return [_EELS_4D, _DIFF, _binned(_DIFF, 2), _binned(_DIFF, 4), _EELS_3D]


def _smoke() -> list[SyntheticSpec]:
    # a 64x64 detector needs its own fit: disk edges weigh more at 16x16 after 4x4 binning
    diff = _DIFF.replace(scan=(8, 8), det=(64, 64), hot_pixels=1, dose=6095.0, bf_radius=0.534,
                         halo_radius=0.2254, halo_power=5.363, tail=5.93e-5, cutoff_radius=0.880)
    # 4x wider channels over the same energy range keep the spectrum's shape
    eels = _shrunk(_EELS_4D, (8, 8), (32, 256), dispersion=1.0)
    return [eels, diff, _binned(diff, 2), _binned(diff, 4), _shrunk(_EELS_3D, (16, 16), (1, 1024))]


def _counted() -> list[SyntheticSpec]:
    return [SyntheticSpec(
        name="counted", kind="diffraction", scan=(32, 32), det=(147, 169), dtype="uint8", dose=375.0,
        seed=21, thickness=0.25, bragg_share=0.5, bf_radius=0.14, halo_radius=0.3, halo_power=2.0,
        cutoff_radius=0.9,
    )]


SUITES: dict[str, list[SyntheticSpec]] = {
    "paper-like": _paper_like(),
    "smoke": _smoke(),
    "counted": _counted(),
}


def suite(name: str) -> list[SyntheticSource]:
    """The sources of a named suite, in the study's table order."""
    if name not in SUITES:
        raise StempressError(f"unknown synthetic suite {name!r}; use one of {', '.join(SUITES)}")
    return [SyntheticSource(spec) for spec in SUITES[name]]


def suite_spec(suite_name: str, member: str) -> SyntheticSpec:
    """One member's spec, e.g. ``suite_spec("smoke", "4D_Diff")``."""
    if suite_name not in SUITES:
        raise StempressError(f"unknown synthetic suite {suite_name!r}; use one of {', '.join(SUITES)}")
    names = [s.name for s in SUITES[suite_name]]
    if member not in names:
        raise StempressError(
            f"suite {suite_name!r} has no member {member!r}; use one of {', '.join(names)}")
    return SUITES[suite_name][names.index(member)]


def parse_synthetic(text: str) -> SyntheticSpec:
    """``synthetic:SUITE/NAME`` or ``synthetic:KIND?key=value&...`` -> spec (query keys are spec fields)."""
    body = text.removeprefix("synthetic:")
    if body == text:
        raise StempressError(f"{text!r} is not a synthetic source; write synthetic:smoke/4D_Diff or "
                             "synthetic:diffraction?scan=32x32&det=256x256")
    head, _, query = body.partition("?")
    if "/" in head:
        suite_name, _, member = head.partition("/")
        spec = suite_spec(suite_name, member)
    elif head in KINDS:
        tidy = "-".join(re.sub(r"[^A-Za-z0-9.]+", "", f"{k}{v}") for k, v in parse_qsl(query))
        spec = SyntheticSpec(name=f"synthetic-{head}" + (f"-{tidy}" if tidy else ""), kind=head)
    else:
        raise StempressError(
            f"unknown synthetic source {head!r}; use a kind ({', '.join(KINDS)}) or SUITE/NAME with suite "
            f"one of {', '.join(SUITES)}")
    changes = {key: _parse_field(key, value) for key, value in parse_qsl(query, keep_blank_values=True)}
    if changes.get("bin", 1) > 1 and "dtype" not in changes:
        changes["dtype"] = "float32"  # binned cubes hold means
    try:
        return spec.replace(**changes)
    except (TypeError, ValueError) as exc:
        raise StempressError(f"bad synthetic parameters in {text!r}: {exc}; check the values") from exc


def open_synthetic(text: str) -> SyntheticSource:
    """Open ``synthetic:smoke/4D_Diff`` or ``synthetic:diffraction?scan=32x32&dose=5000&seed=1``."""
    return SyntheticSource(parse_synthetic(text))


def as_synthetic(text: str) -> str:
    """A suite member or query as ``simulate`` takes it (``smoke/4D_Diff``), with the ``synthetic:`` prefix."""
    return text if text.startswith("synthetic:") else f"synthetic:{text}"


_FIELDS = {f.name: f for f in dataclasses.fields(SyntheticSpec)}


def _parse_field(key: str, value: str) -> Any:
    """Turn one query value into the spec field's type: ``32x32``, ``0.3,0.3,60``, ``99:0.04,165:0.02``."""
    if key not in _FIELDS:
        raise StempressError(f"unknown synthetic parameter {key!r}; use one of {', '.join(_FIELDS)}")
    default = _FIELDS[key].default
    try:
        if key == "edges":
            return tuple((float(a), float(b)) for a, b in (p.split(":") for p in value.split(",") if p))
        if key == "max_count":
            return None if value.lower() in ("", "none") else int(value)
        if isinstance(default, tuple):
            parts = value.replace("x", ",").split(",")
            kind = int if all(isinstance(v, int) for v in default) else float
            return tuple(kind(p) for p in parts)
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return value
    except ValueError as exc:
        raise StempressError(f"synthetic parameter {key}={value!r} is malformed ({exc}); "
                             f"write it like the default {default!r}") from exc
