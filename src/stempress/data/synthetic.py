"""A physically plausible synthetic 4D-STEM source, so benchmarks and tests need no private data.

Two models share one source: ``kind="diffraction"`` (convergent-beam bright-field disk, Bragg disks of a
polycrystalline 2-D lattice, diffuse halo, an outer region with no signal) and ``kind="eels"`` (a spectrum
along det_x confined to a band of det_y rows). Each scan row is generated on its own from an RNG seeded
by ``(seed, row)``, so any block split gives the same bytes and a cube larger than memory streams out.
The expected electron counts (the truth) come from ``expected_rows``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import erf, erfc

from stempress.data.base import SourceBase
from stempress.errors import StempressError, require_choice

KINDS = ("diffraction", "eels")
MODES = ("counting", "integrating")
OUTPUT_DTYPES = ("uint8", "uint16", "uint32", "float32")
BINS = (1, 2, 4)

#: Pixels with an expected count below this are sampled by splitting a per-frame Poisson total
#: (cheap for sparse frames); brighter pixels by numpy's per-pixel sampler. Both are exact Poisson.
_SPLIT_LAMBDA = 0.25
#: Full-resolution pixels generated at once within a scan row: bounds the working set on wide scans.
_PIECE_PIXELS = 1 << 22
#: Template values below this fraction of their peak are dropped, so far pixels are exact zeros.
_TEMPLATE_FLOOR = 1e-7
#: Reflections whose Debye-Waller factor is below this are left out.
_MIN_REFLECTION = 0.01
#: Template stacks denser than this are kept dense (a BLAS product beats a sparse one there).
_DENSE_FILL = 0.1
#: Compute only a diffraction pattern's signal pixels when they are at most this fraction of the detector.
_SUPPORT_FILL = 0.5
#: EELS shapes are tabulated this many times finer than a channel (energy drift is quantized to it).
_EELS_SUBSTEP = 8
_PLASMON_ORDERS = (1, 2, 3)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic cube; equal specs give identical bytes.

    Diffraction geometry is in units of the detector half-size ``R = min(det) / 2`` so that one spec
    scales to any detector size; EELS energies are in eV with ``dispersion`` eV per det_x channel.
    ``dose`` is the expected number of electrons per pattern (the sum of the expected map).
    """

    name: str = "synthetic"
    kind: str = "diffraction"
    scan: tuple[int, int] = (16, 16)
    det: tuple[int, int] = (128, 128)  # full-resolution detector, before binning
    dtype: str = "uint16"
    bin: int = 1  # mean-binning of both detector axes (needs dtype float32)
    dose: float = 20000.0
    seed: int = 0
    # detector response
    mode: str = "counting"
    max_count: int | None = None  # counter depth / ADC ceiling; None -> the dtype's max
    gain: float = 1.0  # integrating: ADU per electron
    read_noise: float = 0.0  # integrating: Gaussian sigma in ADU
    offset: float = 0.0  # integrating: ADU added before rounding
    hot_pixels: int = 0  # detector defects inside the signal region, not part of the dose
    hot_rate: float = 0.0  # mean counts per frame of each hot pixel
    # specimen, both kinds
    thickness: float = 0.5  # mean thickness in inelastic mean free paths
    thickness_var: float = 0.3  # relative amplitude of its smooth variation over the scan
    # diffraction (R units)
    bf_radius: float = 0.12
    bf_edge: float = 0.012
    lattice: tuple[float, float, float] = (0.3, 0.3, 60.0)  # |g1|, |g2|, angle in degrees
    grains: int = 3
    bragg_share: float = 0.5  # of the scattered electrons, the share in Bragg disks at zone axis
    debye_waller: float = 0.6  # |g| at which reflection intensity falls by 1/e
    excitation_width: float = 0.05  # width of the excitation error (R^2 units)
    tilt: float = 0.08  # spread of grain tilts away from the zone axis
    bend: float = 0.03  # smooth tilt variation inside a grain
    strain: float = 0.004  # amplitude of the smooth strain-tensor field
    descan: tuple[float, float] = (0.0, 0.0)  # pattern shift across the scan along (det_y, det_x)
    halo_radius: float = 0.25
    halo_power: float = 2.0
    tail: float = 0.0  # flat diffuse level relative to the halo centre
    cutoff_radius: float = 0.8  # beyond it (plus its edge) the detector gets no signal
    cutoff_edge: float = 0.02
    convergence_mrad: float = 20.0  # BF disk semi-angle, for calibration only
    scan_step_nm: float = 0.5
    # eels
    dispersion: float = 0.25  # eV per channel
    energy_origin: float = -15.0  # energy of channel 0 (eV)
    zlp_fwhm: float = 1.0
    plasmon_energy: float = 16.0
    plasmon_fwhm: float = 6.0
    plasmon_share: float = 0.7  # of the inelastic electrons
    tail_energy: float = 25.0
    tail_power: float = 3.0
    edges: tuple[tuple[float, float], ...] = ((99.0, 0.04), (165.0, 0.02))  # (onset eV, share)
    energy_drift: float = 0.0  # ZLP drift across the scan (eV)
    band_center: float = 0.3  # spectrum band centre, fraction of det_y
    band_halfwidth: float = 0.05  # fraction of det_y
    band_edge: float = 0.01  # softness of the band edges, fraction of det_y

    def __post_init__(self) -> None:
        # accept lists (a spec read back from JSON metadata) and keep the spec hashable
        try:
            for field, kind in (("scan", int), ("det", int), ("lattice", float), ("descan", float)):
                object.__setattr__(self, field, tuple(kind(v) for v in getattr(self, field)))
            object.__setattr__(self, "edges", tuple((float(e), float(w)) for e, w in self.edges))
            for field in ("dose", "gain", "read_noise", "offset"):  # an int gain must not make integer arithmetic
                object.__setattr__(self, field, float(getattr(self, field)))
        except (TypeError, ValueError) as exc:
            raise StempressError(f"synthetic spec {self.name!r}: malformed scan, det, lattice, descan or "
                                 f"edges ({exc}); give sequences of numbers") from exc
        _validate(self)

    @property
    def out_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.scan[0], self.scan[1], self.det[0] // self.bin, self.det[1] // self.bin)

    @property
    def ceiling(self) -> int:
        """Largest stored count: the counter depth, or what the output dtype holds."""
        return _dtype_limit(self.dtype) if self.max_count is None else int(self.max_count)

    def replace(self, **changes: Any) -> SyntheticSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dtype_limit(dtype: str) -> int:
    """Largest count a dtype stores (float32 means: counts up to the uint32 range)."""
    dt = np.dtype(dtype)
    return int(np.iinfo(dt).max) if dt.kind == "u" else int(np.iinfo(np.uint32).max)


def _validate(s: SyntheticSpec) -> None:
    def bad(msg: str) -> StempressError:
        return StempressError(f"synthetic spec {s.name!r}: {msg}")

    where = f"synthetic spec {s.name!r}"
    require_choice(s.kind, KINDS, "kind", where)
    require_choice(s.mode, MODES, "mode", where)
    if s.dtype not in OUTPUT_DTYPES:
        raise bad(f"dtype {s.dtype!r} is not generated; use one of {', '.join(OUTPUT_DTYPES)}")
    if s.bin not in BINS:
        raise bad(f"bin {s.bin} is not supported; use 1, 2 or 4")
    if s.bin > 1 and s.dtype != "float32":
        raise bad(f"bin={s.bin} stores means, which need dtype float32; set dtype=float32 or bin=1")
    if len(s.lattice) != 3 or len(s.descan) != 2:
        raise bad("lattice needs 3 numbers (|g1|, |g2|, angle) and descan 2 (det_y, det_x)")
    if len(s.scan) != 2 or len(s.det) != 2 or min(*s.scan, *s.det) < 1:
        raise bad(f"scan {s.scan} and det {s.det} need two positive sizes each, like scan=16x16")
    if s.det[0] % s.bin or s.det[1] % s.bin:
        raise bad(f"det {s.det} is not divisible by bin={s.bin}; pick a detector size that is")
    if not (s.dose > 0 and math.isfinite(s.dose)):
        raise bad(f"dose {s.dose} must be a positive number of electrons per pattern")
    if s.seed < 0:
        raise bad(f"seed {s.seed} must be >= 0")
    if s.max_count is not None and not (1 <= s.max_count <= _dtype_limit(s.dtype)):
        raise bad(f"max_count {s.max_count} must be in 1..{_dtype_limit(s.dtype)} for dtype {s.dtype}")
    if s.gain <= 0 or s.read_noise < 0 or s.hot_pixels < 0 or s.hot_rate < 0:
        raise bad("gain must be > 0 and read_noise, hot_pixels, hot_rate >= 0")
    if not (0 <= s.thickness_var < 1) or s.thickness < 0:
        raise bad("thickness must be >= 0 and thickness_var in [0, 1)")
    if s.kind == "diffraction":
        if min(s.det) < 8:
            raise bad(f"det {s.det} is too small for a diffraction pattern; use at least 8x8")
        reach = s.cutoff_radius + 5 * s.cutoff_edge + 0.5 * max(abs(s.descan[0]), abs(s.descan[1]))
        if reach > 1.0 or s.bf_radius + 5 * s.bf_edge > s.cutoff_radius:
            raise bad("the pattern (cutoff_radius + 5*cutoff_edge + descan/2) must fit in the detector "
                      "(<= 1 in R units) and hold the BF disk; lower cutoff_radius, descan or bf_radius")
        if s.grains < 1 or min(s.lattice[:2]) <= 0 or s.bf_edge <= 0 or s.cutoff_edge <= 0:
            raise bad("grains >= 1, lattice lengths > 0, bf_edge > 0 and cutoff_edge > 0 are required")
        if not (0 <= s.bragg_share <= 1):
            raise bad(f"bragg_share {s.bragg_share} must be in [0, 1]")
    else:
        if s.dispersion <= 0 or s.zlp_fwhm <= 0 or s.plasmon_fwhm <= 0:
            raise bad("dispersion, zlp_fwhm and plasmon_fwhm must be > 0")
        if s.plasmon_share + sum(share for _, share in s.edges) > 1:
            raise bad("plasmon_share plus the edge shares must not exceed 1")


class _SmoothField:
    """A smooth random map over the scan in [-1, 1] (a few low-frequency cosines), evaluable by row."""

    def __init__(self, rng: np.random.Generator, scan: tuple[int, int], modes: int = 6, cycles: float = 2.0):
        k = rng.uniform(-cycles, cycles, size=(modes, 2)) / np.maximum(np.asarray(scan, float), 1.0)
        self.k = 2 * np.pi * k
        self.phase = rng.uniform(0, 2 * np.pi, modes)
        amp = rng.uniform(0.5, 1.0, modes)
        self.amp = amp / amp.sum()

    def row(self, y: int, x: np.ndarray) -> np.ndarray:
        arg = self.k[:, 0] * y + np.multiply.outer(x, self.k[:, 1]) + self.phase
        return (np.cos(arg) * self.amp).sum(axis=1)


def _soft_disk(shape: tuple[int, int], cy: float, cx: float, radius: float, edge: float,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A unit-sum soft-edged disk and its y/x gradients, as (flat indices, T, dT/dy, dT/dx)."""
    reach = radius + 5 * edge + 1
    y0, y1 = max(0, math.floor(cy - reach)), min(shape[0], math.ceil(cy + reach) + 1)
    x0, x1 = max(0, math.floor(cx - reach)), min(shape[1], math.ceil(cx + reach) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dy, dx)
    z = (rho - radius) / edge
    t = 0.5 * erfc(z / math.sqrt(2))
    dt_drho = -np.exp(-0.5 * z * z) / (edge * math.sqrt(2 * math.pi))
    with np.errstate(invalid="ignore", divide="ignore"):
        gy = np.where(rho > 0, dt_drho * dy / rho, 0.0)
        gx = np.where(rho > 0, dt_drho * dx / rho, 0.0)
    if t.size == 0:  # the disk misses the detector
        return np.zeros(0, np.int64), t.ravel(), gy.ravel(), gx.ravel()
    keep = t > _TEMPLATE_FLOOR * t.max()
    total = t[keep].sum()
    flat = (yy[keep] * shape[1] + xx[keep]).astype(np.int64)
    return flat, t[keep] / total, gy[keep] / total, gx[keep] / total


class _DiffractionModel:
    """Expected counts of a polycrystal's CBED-like patterns: templates fixed, per-frame weights vary.

    A frame is ``coef @ templates``: the BF disk, the diffuse halo and one disk per reflection, each with
    its two gradients, so sub-pixel shifts (descan, strain) enter to first order as weights; whole-pixel
    descan shifts move the finished frame.
    """

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator, use_support: bool):
        self.spec = spec
        dy, dx = spec.det
        self.r_unit = min(dy, dx) / 2.0
        self.center = ((dy - 1) / 2.0, (dx - 1) / 2.0)
        self.npix = dy * dx
        self.bf_px = spec.bf_radius * self.r_unit
        edge_px = max(spec.bf_edge * self.r_unit, 0.6)
        self.thickness = _SmoothField(rng, spec.scan)
        self.bend = (_SmoothField(rng, spec.scan), _SmoothField(rng, spec.scan))
        self.strain = tuple(_SmoothField(rng, spec.scan) for _ in range(3))
        n = spec.grains
        self.grain_xy = rng.uniform(0, 1, size=(n, 2)) * np.asarray(spec.scan, float)
        theta = rng.uniform(0, 2 * np.pi, n)
        tilt_dir = rng.uniform(0, 2 * np.pi, n)
        tilt_mag = spec.tilt * np.sqrt(rng.uniform(0, 1, n))
        self.grain_tilt = np.stack([tilt_mag * np.sin(tilt_dir), tilt_mag * np.cos(tilt_dir)], axis=1)
        self.grain_cryst = rng.uniform(0.4, 1.0, n)
        self.aperture = self._aperture()
        self.signal = np.flatnonzero(self.aperture > 0)
        # whole-pixel descan moves frames, so it needs the full detector in memory; a support that is
        # most of the detector saves less than scattering into it costs
        small = self.signal.size <= _SUPPORT_FILL * self.npix
        self.cols: np.ndarray | slice | None = self.signal if use_support and small and not any(spec.descan) \
            else None
        diffuse = self._diffuse()
        bf = self._clip(_soft_disk(spec.det, *self.center, self.bf_px, edge_px))
        self.g: list[np.ndarray] = []  # reflections per grain, (K, 2) in R units (y, x)
        self.templates: list[sp.csr_matrix | np.ndarray] = []
        self.norm: list[float] = []
        for gi in range(n):
            g = self._reflections(theta[gi])
            self.g.append(g)
            self.norm.append(float(self._intensity(g, np.zeros((1, 2)))[0].sum()) or 1.0)
            parts = [bf, diffuse]
            for gy, gx in g:
                cy, cx = self.center[0] + gy * self.r_unit, self.center[1] + gx * self.r_unit
                parts.append(self._clip(_soft_disk(spec.det, cy, cx, self.bf_px, edge_px)))
            self.templates.append(self._stack(parts))

    def _aperture(self) -> np.ndarray:
        """What reaches the detector: 1 inside cutoff_radius, a soft edge, exact zeros beyond."""
        s = self.spec
        yy, xx = np.mgrid[0:s.det[0], 0:s.det[1]].astype(np.float64)
        self.rho = np.hypot(yy - self.center[0], xx - self.center[1]).ravel() / self.r_unit
        a = 0.5 * erfc((self.rho - s.cutoff_radius) / (s.cutoff_edge * math.sqrt(2)))
        a[self.rho > s.cutoff_radius + 5 * s.cutoff_edge] = 0.0
        return a

    def _clip(self, part: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A disk seen through the aperture: electrons scattered beyond it never reach the detector."""
        flat, t, gy, gx = part
        a = self.aperture[flat]
        keep = a * t > _TEMPLATE_FLOOR * (t.max() if t.size else 0.0)
        return flat[keep], (t * a)[keep], (gy * a)[keep], (gx * a)[keep]

    def _diffuse(self) -> tuple[np.ndarray, np.ndarray, None, None]:
        s = self.spec
        d = ((1 + (self.rho / s.halo_radius) ** 2) ** (-s.halo_power) + s.tail) * self.aperture
        keep = np.flatnonzero(d > _TEMPLATE_FLOOR * d.max())
        return keep, d[keep] / d[keep].sum(), None, None

    def _reflections(self, theta: float) -> np.ndarray:
        """Lattice points whose disks reach the aperture and whose Debye-Waller factor is not negligible."""
        s = self.spec
        a, b, gamma = s.lattice
        g_max = min(s.cutoff_radius + s.bf_radius, s.debye_waller * math.sqrt(-math.log(_MIN_REFLECTION)))
        g1 = a * np.array([math.sin(theta), math.cos(theta)])
        g2 = b * np.array([math.sin(theta + math.radians(gamma)), math.cos(theta + math.radians(gamma))])
        n = math.ceil(g_max / min(a, b) / max(math.sin(math.radians(gamma)), 0.1)) + 1
        hk = np.array([(h, k) for h in range(-n, n + 1) for k in range(-n, n + 1) if (h, k) != (0, 0)], float)
        g = hk[:, :1] * g1 + hk[:, 1:] * g2
        return g[np.hypot(g[:, 0], g[:, 1]) < g_max]

    def _intensity(self, g: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Kinematic-ish reflection intensities (frames, K): Debye-Waller times excitation error."""
        s = self.spec
        g2 = (g * g).sum(axis=1)
        exc = g2[None, :] + 2 * tau @ g.T
        return np.exp(-g2 / s.debye_waller**2)[None, :] / (1 + (exc / s.excitation_width) ** 2)

    def _stack(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]],
               ) -> sp.csr_matrix | np.ndarray:
        """Rows: BF, dBF/dy, dBF/dx, diffuse, then (T, dT/dy, dT/dx) per reflection."""
        rows, cols, vals = [], [], []
        r = 0
        for flat, t, gy, gx in parts:
            for v in (t, gy, gx):
                if v is None:
                    continue
                rows.append(np.full(flat.size, r, np.int64))
                cols.append(flat)
                vals.append(v.astype(np.float32))
                r += 1
        m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(r, self.npix), dtype=np.float32)
        if self.cols is not None:
            m = m[:, self.cols].tocsr()
        return m.toarray() if m.nnz > _DENSE_FILL * m.shape[0] * m.shape[1] else m

    def expected(self, y: int, x: np.ndarray) -> np.ndarray:
        """Expected counts (len(x), pixels in ``cols``) float32 at scan positions (y, x); each sums to dose."""
        s = self.spec
        n = x.size
        t = s.thickness * (1 + s.thickness_var * self.thickness.row(y, x))
        s_bf = np.exp(-t)
        scattered = s.dose * (1 - s_bf)
        shift = self._shift_px(y, x)
        whole = np.rint(shift)
        frac = shift - whole
        dist = ((x[:, None] - self.grain_xy[None, :, 1]) ** 2 + (y - self.grain_xy[None, :, 0]) ** 2)
        grain = dist.argmin(axis=1)
        bend = np.stack([f.row(y, x) for f in self.bend], axis=1) * s.bend
        e_yy, e_xx, e_xy = (f.row(y, x) * s.strain for f in self.strain)
        out = np.empty((n, self.npix if self.cols is None else self.signal.size), np.float32)
        for gi in np.unique(grain):
            sel = np.flatnonzero(grain == gi)
            g = self.g[gi]
            inten = self._intensity(g, self.grain_tilt[gi] + bend[sel])
            w = (s.bragg_share * self.grain_cryst[gi] / self.norm[gi]) * inten * scattered[sel, None]
            total = w.sum(axis=1)
            cap = np.minimum(1.0, scattered[sel] / np.maximum(total, 1e-300))
            w *= cap[:, None]
            w_diffuse = scattered[sel] - w.sum(axis=1)
            w_bf = s.dose * s_bf[sel]
            # a reflection moves with the descan and with strain: g' = (1 - eps) g
            dgy = -(e_yy[sel, None] * g[None, :, 0] + e_xy[sel, None] * g[None, :, 1]) * self.r_unit
            dgx = -(e_xy[sel, None] * g[None, :, 0] + e_xx[sel, None] * g[None, :, 1]) * self.r_unit
            dy_k = frac[sel, 0:1] + dgy
            dx_k = frac[sel, 1:2] + dgx
            coef = np.empty((sel.size, 4 + 3 * g.shape[0]), np.float32)
            coef[:, 0] = w_bf
            coef[:, 1] = -w_bf * frac[sel, 0]
            coef[:, 2] = -w_bf * frac[sel, 1]
            coef[:, 3] = w_diffuse
            coef[:, 4::3] = w
            coef[:, 5::3] = -w * dy_k
            coef[:, 6::3] = -w * dx_k
            tmpl = self.templates[gi]
            out[sel] = coef @ tmpl if isinstance(tmpl, np.ndarray) else tmpl.T.dot(coef.T).T
        np.maximum(out, 0, out=out)  # first-order shifts can undershoot at disk edges
        out *= (s.dose / out.sum(axis=1, dtype=np.float64)).astype(np.float32)[:, None]
        if whole.any():
            _shift_frames(out.reshape(n, *s.det), whole.astype(np.int64))
        return out

    def _shift_px(self, y: int, x: np.ndarray) -> np.ndarray:
        s = self.spec
        fy = y / max(s.scan[0] - 1, 1) - 0.5
        fx = x / max(s.scan[1] - 1, 1) - 0.5
        return np.stack([np.full(x.size, s.descan[0] * fy), s.descan[1] * fx], axis=1) * self.r_unit


def _shift_frames(frames: np.ndarray, shifts: np.ndarray) -> None:
    """Shift each frame in place by whole pixels (zero fill); frames sharing a shift move together."""
    _, h, w = frames.shape
    for sy, sx in np.unique(shifts, axis=0):
        if sy == 0 and sx == 0:
            continue
        sel = np.flatnonzero((shifts[:, 0] == sy) & (shifts[:, 1] == sx))
        src = frames[sel]
        dst = np.zeros_like(src)
        dst[:, max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = \
            src[:, max(-sy, 0):h - max(sy, 0), max(-sx, 0):w - max(sx, 0)]
        frames[sel] = dst


class _EELSModel:
    """Expected counts of spectrum images: ZLP, plasmons, a power-law tail and edges along det_x.

    Component shapes are tabulated once on a grid 1/_EELS_SUBSTEP of a channel fine; a frame's energy
    drift then picks a shifted slice of the table, so a spectrum costs a gather and a weighted sum.
    """

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator, use_support: bool):
        self.spec = spec
        dy, dx = spec.det
        self.npix = dy * dx
        self.thickness = _SmoothField(rng, spec.scan)
        self.composition = [_SmoothField(rng, spec.scan) for _ in spec.edges]
        profile = self._band().astype(np.float32)
        rows = np.flatnonzero(profile)
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        self.signal = np.arange(r0 * dx, r1 * dx)
        self.cols: np.ndarray | slice | None = slice(r0 * dx, r1 * dx) if use_support else None
        self.profile = profile[r0:r1] if use_support else profile
        self.pad = math.ceil(abs(spec.energy_drift) / spec.dispersion / 2) + 1
        self.table = self._table()
        k = _EELS_SUBSTEP
        self.norms = np.stack([self.table[:, o:o + k * dx:k].sum(axis=1)
                               for o in range(2 * k * self.pad + 1)], axis=1)  # (components, offsets)

    def _band(self) -> np.ndarray:
        """Rows of the non-dispersive direction that see the spectrum (unit sum, exact zeros outside)."""
        s = self.spec
        h = s.det[0]
        if h == 1:
            return np.ones(1)
        y = np.arange(h, dtype=np.float64)
        c, half, edge = s.band_center * h, s.band_halfwidth * h, max(s.band_edge * h, 0.3) * math.sqrt(2)
        p = 0.5 * (erf((y - (c - half)) / edge) - erf((y - (c + half)) / edge))
        p[p < _TEMPLATE_FLOOR * p.max()] = 0.0
        return p / p.sum()

    def _table(self) -> np.ndarray:
        """Unnormalized component shapes: ZLP, plasmons 1..3, edges, tail; (components, fine grid)."""
        s = self.spec
        k = _EELS_SUBSTEP
        j = np.arange(k * (s.det[1] + 2 * self.pad))
        e = s.energy_origin + s.dispersion * (j / k - self.pad)
        sig = s.zlp_fwhm / 2.3548
        step = 0.5 * (1 + erf(e / (sig * math.sqrt(2))))  # nothing loses negative energy
        rows = [np.exp(-0.5 * (e / sig) ** 2)]
        for n in _PLASMON_ORDERS:
            rows.append(step / (1 + ((e - n * s.plasmon_energy) / (n * s.plasmon_fwhm / 2)) ** 2))
        for onset, _ in s.edges:
            rise = 0.5 * (1 + erf((e - onset) / (max(sig, s.dispersion) * math.sqrt(2))))
            rows.append(rise * (np.maximum(e, onset) / onset) ** (-s.tail_power))
        rows.append(step * (1 + (e / s.tail_energy) ** 2) ** (-s.tail_power / 2))
        return np.stack(rows)

    def weights(self, y: int, x: np.ndarray) -> np.ndarray:
        """Share of the dose in each component per frame (frames, components); rows sum to 1."""
        s = self.spec
        t = s.thickness * (1 + s.thickness_var * self.thickness.row(y, x))
        inelastic = 1 - np.exp(-t)
        orders = np.asarray(_PLASMON_ORDERS, float)
        multiple = t[:, None] ** orders / np.array([math.factorial(n) for n in _PLASMON_ORDERS])
        multiple /= np.maximum(multiple.sum(axis=1, keepdims=True), 1e-300)
        cols = [np.exp(-t)]
        cols += list(((inelastic * s.plasmon_share)[:, None] * multiple).T)
        edge_total = np.zeros(x.size)
        for (_, share), comp in zip(s.edges, self.composition, strict=True):
            w = inelastic * share * (1 + 0.8 * comp.row(y, x))
            edge_total += w
            cols.append(w)
        cols.append(np.maximum(inelastic * (1 - s.plasmon_share) - edge_total, 0))
        return np.stack(cols, axis=1)

    def spectra(self, y: int, x: np.ndarray) -> np.ndarray:
        """Expected electrons per channel (len(x), det_x), each spectrum summing to dose."""
        s = self.spec
        k = _EELS_SUBSTEP
        drift = s.energy_drift * ((y * s.scan[1] + x) / max(s.scan[0] * s.scan[1] - 1, 1) - 0.5)
        off = np.rint(k * (self.pad - drift / s.dispersion)).astype(np.int64)
        w = self.weights(y, x)
        norm = self.norms[:, off].T  # (frames, components)
        w = np.where(norm > 0, w / np.where(norm > 0, norm, 1), 0.0)
        idx = off[:, None] + k * np.arange(s.det[1])[None, :]
        out = np.einsum("fc,cfe->fe", w, self.table[:, idx])
        out *= s.dose / out.sum(axis=1, keepdims=True)
        return out

    def expected(self, y: int, x: np.ndarray) -> np.ndarray:
        """Expected counts (len(x), pixels in ``cols``): the band profile times each spectrum."""
        spec = self.spectra(y, x).astype(np.float32)
        return (self.profile[None, :, None] * spec[:, None, :]).reshape(x.size, -1)


def sample_poisson(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Exact Poisson counts (int32) for a (frames, pixels) map of expected counts.

    Bright pixels go through numpy's per-pixel sampler; the faint rest of each frame gets one Poisson
    total that is scattered over its faint pixels in proportion to their expectation (Poisson
    splitting), which costs a cumulative sum plus O(electrons) instead of a slow draw per pixel.
    """
    frames, npix = lam.shape
    flat = lam.ravel()
    counts = np.zeros(flat.size, np.int32)
    bright_mask = flat >= _SPLIT_LAMBDA
    bright = np.flatnonzero(bright_mask)
    weight = flat.astype(np.float64)
    if bright.size:
        counts[bright] = rng.poisson(weight[bright])
        weight[bright] = 0.0
    cdf = np.cumsum(weight, out=weight)
    ends = cdf[npix - 1::npix]
    starts = np.concatenate([[0.0], ends[:-1]])
    totals = np.maximum(ends - starts, 0.0)
    n = rng.poisson(totals)
    if n.any():
        owner = np.repeat(np.arange(frames), n)
        pos = starts[owner] + rng.random(owner.size) * totals[owner]
        # stay below the frame's end despite rounding: the first cdf entry above pos is then a pixel
        # of this frame with a positive expectation
        np.minimum(pos, np.nextafter(ends[owner], -np.inf), out=pos)
        j = np.searchsorted(cdf, pos, side="right")
        if j.size * 16 < flat.size:
            np.add.at(counts, j, 1)
        else:
            counts += np.bincount(j, minlength=flat.size).astype(np.int32)
    return counts.reshape(frames, npix)


class SyntheticSource(SourceBase):
    """A ``Dataset4D`` whose frames are computed on demand from a ``SyntheticSpec``."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        self.name = spec.name
        self.shape = spec.shape
        self.dtype = spec.out_dtype
        model_rng = np.random.default_rng([spec.seed, 0])
        # pixels outside the signal stay exact zeros unless read noise or an offset reaches them
        quiet = spec.mode == "counting" or (spec.read_noise == 0 and spec.offset == 0)
        model_cls = _DiffractionModel if spec.kind == "diffraction" else _EELSModel
        self._model = model_cls(spec, model_rng, quiet)
        n_hot = min(spec.hot_pixels, self._model.signal.size)
        self._hot = np.sort(model_rng.choice(self._model.signal, n_hot, replace=False))
        cols = self._model.cols
        if cols is None:
            self._hot_cols = self._hot
        elif isinstance(cols, slice):
            self._hot_cols = self._hot - cols.start
        else:
            self._hot_cols = np.searchsorted(cols, self._hot)
        self._clipped: dict[int, tuple[int, int]] = {}
        self.metadata: dict[str, Any] = self._metadata()

    # -- Dataset4D --------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        for i, row in enumerate(range(start, stop)):
            self._row(row, out[i])
        return out

    def expected_rows(self, start: int, stop: int) -> np.ndarray:
        """The truth: expected electrons per stored pixel (mean-binned like the data), float32.

        Detector effects (hot pixels, gain, offset, read noise, clipping) are not in it; with bin=1 each
        frame sums to ``dose``, with bin=b to ``dose / b**2``.
        """
        start, stop = self.check_rows(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), np.float32)
        for i, row in enumerate(range(start, stop)):
            for x0, x1 in self._pieces():
                lam = self._full(self._model.expected(row, np.arange(x0, x1)), np.float64)
                out[i, x0:x1] = self._bin(lam)
        return out

    def __repr__(self) -> str:
        return f"SyntheticSource({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    # -- generation -------------------------------------------------------------------------------
    def _pieces(self) -> list[tuple[int, int]]:
        """Fixed split of a scan row (a function of the spec only, so the RNG stream never depends on
        the caller's block size)."""
        per = max(1, _PIECE_PIXELS // (self.spec.det[0] * self.spec.det[1]))
        sx = self.spec.scan[1]
        return [(x0, min(x0 + per, sx)) for x0 in range(0, sx, per)]

    def _row(self, row: int, out: np.ndarray) -> None:
        s = self.spec
        rng = np.random.default_rng([s.seed, 1, row])
        high = low = 0
        for x0, x1 in self._pieces():
            n = x1 - x0
            counts = sample_poisson(rng, self._model.expected(row, np.arange(x0, x1)))
            if self._hot.size and s.hot_rate > 0:
                counts[:, self._hot_cols] += rng.poisson(s.hot_rate, size=(n, self._hot.size))
            if s.mode == "integrating":
                values = counts * s.gain + s.offset
                if s.read_noise > 0:
                    values += rng.standard_normal(values.shape) * s.read_noise
                np.rint(values, out=values)
                low += int(np.count_nonzero(values < 0))
                high += int(np.count_nonzero(values > s.ceiling))
                counts = np.clip(values, 0, s.ceiling).astype(np.int64)
            elif s.ceiling < np.iinfo(counts.dtype).max:
                high += int(np.count_nonzero(counts > s.ceiling))
                np.minimum(counts, s.ceiling, out=counts)
            if s.bin == 1:
                self._full(counts, self.dtype, out=out[x0:x1].reshape(n, -1))
            else:
                out[x0:x1] = self._bin(self._full(counts, np.int64))
        self._clipped[row] = (high, low)
        self.metadata["clipped_pixels"] = sum(h for h, _ in self._clipped.values())
        self.metadata["clipped_low_pixels"] = sum(lo for _, lo in self._clipped.values())
        self.metadata["clip_rows_counted"] = len(self._clipped)

    def _full(self, values: np.ndarray, dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Put values over the model's signal pixels into whole frames (frames, det_y*det_x)."""
        cols = self._model.cols
        if out is None:
            out = np.empty((values.shape[0], self.spec.det[0] * self.spec.det[1]), dtype)
        if cols is None:
            out[...] = values
        else:
            out[...] = 0
            out[:, cols] = values
        return out

    def _bin(self, frames: np.ndarray) -> np.ndarray:
        """Mean over bin x bin detector blocks, as the study's 2x2 / 4x4 cubes were made."""
        b = self.spec.bin
        n = frames.shape[0]
        h, w = self.spec.det
        if b == 1:
            return frames.reshape(n, h, w).astype(np.float32)
        total = frames.reshape(n, h // b, b, w // b, b).sum(axis=(2, 4))
        return (total / (b * b)).astype(np.float32)

    def _metadata(self) -> dict[str, Any]:
        s = self.spec
        b = s.bin
        md: dict[str, Any] = {
            "synthetic": True,
            "spec": s.to_dict(),
            "generator": "stempress.data.synthetic",
            "electrons_per_pattern": s.dose,
            "R_pixel_size": s.scan_step_nm,
            "R_pixel_units": "nm",
            "counter_max": s.ceiling,
            "clipped_pixels": 0,
            "clipped_low_pixels": 0,
            "clip_rows_counted": 0,
        }
        m = self._model
        if isinstance(m, _DiffractionModel):
            md.update({
                "Q_pixel_size": s.convergence_mrad / m.bf_px * b,
                "Q_pixel_units": "mrad",
                "bf_disk_radius_px": m.bf_px / b,
                "bf_disk_center_px": [(c - (b - 1) / 2) / b for c in m.center],
                "reflections_per_grain": [int(g.shape[0]) for g in m.g],
            })
        else:
            md.update({
                "Q_pixel_size": s.dispersion * b,
                "Q_pixel_units": "eV",
                "energy_axis": "det_x",
                "zlp_channel": (-s.energy_origin / s.dispersion - (b - 1) / 2) / b,
            })
        md["hot_pixels_yx"] = [[int(i // s.det[1]), int(i % s.det[1])] for i in self._hot]
        return md
