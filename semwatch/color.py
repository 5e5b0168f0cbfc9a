"""Lab <-> RGB on torch tensors, the model's value conventions, and gamut-safe output.

Conventions (DESIGN.md): L in [0, 100] enters the network as ``L/50 - 1``; ab is predicted
as ``ab/110`` through a tanh. The conversions themselves are kornia's (differentiable, on
any device), so training and the daemon use the same colour maths.

Output colour goes through :class:`ChromaLUT`: for an 8-bit gray level ``g`` and a
predicted (a, b) it gives the sRGB triple whose L equals that of (g, g, g) exactly, with
chroma reduced along the same hue until it fits the sRGB gamut. Plain clipping of an
out-of-gamut colour changes its luminance (bright pixels lose up to ~12 gray levels); the
table avoids that and turns the full-resolution Lab->RGB step into one gather.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import kornia.color
import torch

L_SCALE = 50.0
AB_SCALE = 110.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> Lab, L in [0, 100]."""
    return kornia.color.rgb_to_lab(rgb)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """(..., 3, H, W) Lab -> sRGB in [0, 1] (clipped unless ``clip`` is False)."""
    return kornia.color.lab_to_rgb(lab, clip=clip)


def l_to_input(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> network input in [-1, 1]."""
    return lightness / L_SCALE - 1.0


def input_to_l(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) * L_SCALE


def ab_to_target(ab: torch.Tensor) -> torch.Tensor:
    """ab in Lab units -> the generator's output range (tanh, about [-1, 1])."""
    return ab / AB_SCALE


def target_to_ab(y: torch.Tensor) -> torch.Tensor:
    return y * AB_SCALE


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(min=0.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def gray_levels_to_l(levels: int = 256, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """L of the sRGB gray (g, g, g) for g = 0..levels-1: for gray, Y is the linear value."""
    g = torch.arange(levels, dtype=dtype) / (levels - 1)
    y = _srgb_to_linear(g)
    eps = 216 / 24389
    kappa = 24389 / 27
    f = torch.where(y > eps, y ** (1 / 3), (kappa * y + 16) / 116)
    return 116 * f - 16


def gray_to_l(gray_u8: torch.Tensor) -> torch.Tensor:
    """uint8 gray levels -> L in [0, 100] (float32), exactly the L of (g, g, g)."""
    table = gray_levels_to_l().to(torch.float32).to(gray_u8.device)
    return table[gray_u8.long()]


# D65 white and the sRGB matrix, as in kornia and IEC 61966-2-1.
_WHITE = (0.950456, 1.0, 1.088754)
_XYZ_TO_RGB = (
    (3.2404813432005266, -1.5371515162713185, -0.4985363261688878),
    (-0.9692549499965682, 1.8759900014898907, 0.0415559265582928),
    (0.0556466391351772, -0.2040413383665112, 1.0573110696453443),
)


def _lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(..., 3) Lab -> linear RGB (unclipped), in float64 for an exact table."""
    lightness, a, b = lab.unbind(-1)
    fy = (lightness + 16) / 116
    fx = fy + a / 500
    fz = fy - b / 200
    delta = 6 / 29

    def finv(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > delta, t**3, 3 * delta**2 * (t - 4 / 29))

    xyz = torch.stack((finv(fx) * _WHITE[0], finv(fy) * _WHITE[1], finv(fz) * _WHITE[2]), dim=-1)
    matrix = torch.tensor(_XYZ_TO_RGB, dtype=lab.dtype, device=lab.device)
    return xyz @ matrix.T


@dataclass(frozen=True)
class ChromaLUTSpec:
    step: float = 2.0  # ab quantisation in Lab units; 2 keeps the error (<= 1) below a JND
    limit: float = AB_SCALE
    hue_bins: int = 1440  # resolution of the gamut boundary per gray level (0.25 degree)
    search_steps: int = 14  # bisection steps for the boundary chroma (~0.01 Lab units)


class ChromaLUT:
    """(gray level, a, b) -> sRGB uint8 with L preserved and chroma reduced into gamut.

    256 x n x n entries (n = 2*limit/step + 1: 111 for the defaults, 9.5 MB), built in about
    a second on a CPU: the gamut boundary is searched per (gray level, hue) only, and every
    (a, b) of that hue is scaled to it. The table is a pure function of (spec, device), so
    it is built once per process and device (:func:`chroma_table`) and shared read-only by
    every Colorizer: a reload, the web UI's sessions and the tests reuse it.
    """

    def __init__(self, device: torch.device | str = "cpu", spec: ChromaLUTSpec = ChromaLUTSpec()):
        self.spec = spec
        self.device = torch.device(device)
        self.n = table_side(spec)
        self.table = chroma_table(spec, self.device)  # (256 * n * n, 3) uint8, never written

    def index(self, gray_u8: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """Flat table index (int32) for gray (H, W) uint8 and ab (2, H, W) in Lab units."""
        # All in float32 (exact: indices stay far below 2**24), one conversion at the end.
        half = (self.n - 1) / 2
        q = ab.mul(1.0 / self.spec.step).add_(half + 0.5).clamp_(0, self.n - 0.5).floor_()
        idx = gray_u8.to(q.dtype).mul_(self.n * self.n)
        idx.add_(q[0], alpha=self.n).add_(q[1])
        return idx.to(torch.int32)

    def apply(self, gray_u8: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """gray (H, W) uint8 + ab (2, H, W) float in Lab units -> (H, W, 3) uint8 sRGB."""
        idx = self.index(gray_u8, ab)
        return self.table.index_select(0, idx.reshape(-1)).reshape(*gray_u8.shape, 3)


def table_side(spec: ChromaLUTSpec) -> int:
    """Entries per ab axis of the chroma table: -limit..limit in steps of `step`."""
    return int(round(2 * spec.limit / spec.step)) + 1


@functools.lru_cache(maxsize=4)
def chroma_table(spec: ChromaLUTSpec, device: torch.device) -> torch.Tensor:
    """The chroma table of `spec` on `device`: (256 * n * n, 3) uint8 (see :class:`ChromaLUT`).
    Cached per (spec, device): a build takes about a second and the result never changes;
    callers only read it (index_select), so one copy serves them all."""
    n = table_side(spec)
    lightness = gray_levels_to_l()
    boundary = _boundary_chroma(
        lightness.float(), spec.hue_bins, spec.limit * 1.5, spec.search_steps
    )  # (256, hue_bins + 1)
    axis = torch.linspace(-spec.limit, spec.limit, n, dtype=torch.float64)
    lab_l, a, b = torch.meshgrid(lightness, axis, axis, indexing="ij")
    chroma = torch.hypot(a, b)
    hue = torch.atan2(b, a).remainder(2 * math.pi) * (spec.hue_bins / (2 * math.pi))
    lower = hue.floor().long().clamp_(0, spec.hue_bins - 1)
    level = torch.arange(256).view(256, 1, 1).expand_as(lower)
    # The smaller boundary of the two neighbouring hue samples: never out of gamut.
    limit = torch.minimum(boundary[level, lower], boundary[level, lower + 1]).double()
    scale = torch.where(chroma > limit, limit / chroma.clamp(min=1e-9), torch.ones_like(chroma))
    lab = torch.stack((lab_l, a * scale, b * scale), dim=-1)
    rgb = _linear_to_srgb(_lab_to_linear_rgb(lab)).clamp(0, 1)
    return (rgb * 255 + 0.5).floor().to(torch.uint8).reshape(-1, 3).to(device)


def _boundary_chroma(lightness: torch.Tensor, hue_bins: int, search_max: float, steps: int) -> torch.Tensor:
    """Largest in-sRGB chroma per (L, hue sample), by bisection: (len(L), hue_bins + 1).

    The last column repeats the first (hue 360 = 0) so neighbours never wrap.
    """
    angles = torch.arange(hue_bins + 1, dtype=lightness.dtype) * (2 * math.pi / hue_bins)
    lab_l, angle = torch.meshgrid(lightness, angles, indexing="ij")
    cos, sin = torch.cos(angle), torch.sin(angle)

    def inside(chroma: torch.Tensor) -> torch.Tensor:
        rgb = _lab_to_linear_rgb(torch.stack((lab_l, chroma * cos, chroma * sin), dim=-1))
        tol = 1e-6
        return ((rgb >= -tol) & (rgb <= 1 + tol)).all(dim=-1)

    lo = torch.zeros_like(lab_l)
    hi = torch.full_like(lab_l, search_max)
    for _ in range(steps):
        mid = (lo + hi) / 2
        fits = inside(mid)
        lo = torch.where(fits, mid, lo)
        hi = torch.where(fits, hi, mid)
    return lo
