"""Colorization quality figures, on torch tensors (batched, on whatever device they live).

Used by training (validation each epoch; stage 2 picks its ``best`` by histogram
intersection) and by ``trainer evaluate``. Conventions:

- ab in Lab units (not the network's ab/110), shape (N, 2, H, W) or (2, H, W).
- RGB for :func:`psnr` is float sRGB in [0, 1]; :func:`colorfulness` takes uint8 (0..255)
  or float in [0, 1] and always reports on the 0..255 scale of Hasler and Suesstrunk.

Why histogram intersection: L1 on ab rewards the desaturated "sepia" mean colour on
ambiguous regions; comparing the distribution of colours actually produced with the
distribution in the ground truth rewards a model that dares the truth's colours.
"""

from __future__ import annotations

import math

import torch

# A PSNR of identical images is infinite; a finite cap keeps means and JSON well-defined.
# 100 dB is far above anything an 8-bit image can differ by (one level in one pixel of a
# 1-pixel image is already 48 dB).
PSNR_CAP_DB = 100.0


def _as_batch(x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """(C, H, W) -> (1, C, H, W); checks the channel count."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected ({channels}, H, W) or (N, {channels}, H, W), got {tuple(x.shape)}")
    return x


def ab_histogram(
    ab: torch.Tensor, chroma_min: float = 5.0, bin_size: float = 8.0, limit: float = 128.0
) -> torch.Tensor:
    """Pooled 2-D histogram (counts) of the ab values of pixels with chroma > ``chroma_min``.

    ``ab`` is (N, 2, H, W) or (2, H, W) in Lab units. The result is (n, n) float64 on the
    same device, n = ceil(2 * limit / bin_size), first axis a, second axis b, bins
    starting at -limit; values outside [-limit, limit) land in the edge bins. Near-gray
    pixels are left out because their hue is noise: a gray prediction has an empty
    histogram, not a spike at the origin.
    """
    ab = _as_batch(ab, 2, "ab_histogram")
    if bin_size <= 0 or limit <= 0:
        raise ValueError(f"ab_histogram: bin_size and limit must be > 0, got {bin_size}, {limit}")
    n = math.ceil(2 * limit / bin_size)
    a = ab[:, 0].reshape(-1).float()
    b = ab[:, 1].reshape(-1).float()
    keep = (a * a + b * b) > chroma_min * chroma_min
    ia = ((a[keep] + limit) / bin_size).floor().clamp_(0, n - 1).long()
    ib = ((b[keep] + limit) / bin_size).floor().clamp_(0, n - 1).long()
    counts = torch.bincount(ia * n + ib, minlength=n * n)
    return counts.to(torch.float64).reshape(n, n)


def histogram_intersection(h1: torch.Tensor, h2: torch.Tensor) -> float:
    """sum(min(p1, p2)) of the two histograms normalised to sum 1: 1 = same distribution.

    An empty histogram (no coloured pixel on that side) intersects nothing: 0.0. That is
    what a gray prediction scores, and it is why the figure cannot be gamed by abstaining.
    """
    if h1.shape != h2.shape:
        raise ValueError(f"histogram_intersection: shapes differ, {tuple(h1.shape)} vs {tuple(h2.shape)}")
    s1 = float(h1.sum())
    s2 = float(h2.sum())
    if s1 <= 0 or s2 <= 0:
        return 0.0
    p1 = h1.to(torch.float64) / s1
    p2 = h2.to(device=h1.device, dtype=torch.float64) / s2
    return float(torch.minimum(p1, p2).sum().clamp(0.0, 1.0))


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colorfulness M per image, on the 0..255 scale: (N,) float32.

    ``rgb`` is (N, 3, H, W) or (3, H, W), uint8 0..255 or float sRGB in [0, 1].
    M = sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2), with
    rg = R - G and yb = (R + G)/2 - B over each image's pixels. Gray is exactly 0.
    (Hasler & Suesstrunk, "Measuring colourfulness in natural images", 2003.)
    """
    rgb = _as_batch(rgb, 3, "colorfulness")
    x = rgb.float() if rgb.dtype == torch.uint8 else rgb.float() * 255.0
    r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    offset = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return spread + 0.3 * offset


def psnr(rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, (N,) float32; RGB float in [0, 1], peak 1.

    Identical images give :data:`PSNR_CAP_DB` instead of infinity.
    """
    pred = _as_batch(rgb_pred, 3, "psnr").float()
    true = _as_batch(rgb_true, 3, "psnr").float()
    if pred.shape != true.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(true.shape)}")
    mse = (pred - true).square().flatten(1).mean(dim=1)
    floor = 10.0 ** (-PSNR_CAP_DB / 10.0)
    return -10.0 * torch.log10(mse.clamp(min=floor))


def ab_mae(ab_pred: torch.Tensor, ab_true: torch.Tensor) -> float:
    """Mean absolute error over all pixels and both channels (a and b), in Lab units."""
    if ab_pred.shape != ab_true.shape:
        raise ValueError(f"ab_mae: shapes differ, {tuple(ab_pred.shape)} vs {tuple(ab_true.shape)}")
    if ab_pred.numel() == 0:
        raise ValueError("ab_mae: empty input")
    return float((ab_pred.float() - ab_true.float()).abs().mean())
