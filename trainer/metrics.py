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

import numpy as np
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
        raise ValueError(
            f"{what}: expected ({channels}, H, W) or (N, {channels}, H, W), got {tuple(x.shape)}"
        )
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


# Region hue coherence (trainer evaluate): the truth is cut into the regions its colorist
# painted as one colour at a fixed size, so the figure does not depend on image size.
COHERENCE_SIZE = 256  # long side of the evaluation copy
COHERENCE_SCALE = 300.0  # Felzenszwalb scale on the truth's ab / 100 (about 12 regions per image)
COHERENCE_MIN_SIZE = 200  # smallest region, pixels at COHERENCE_SIZE
COHERENCE_CHROMA_MIN = 5.0  # a region "has colour in the truth" above this mean chroma
# Predicted pixels paler than this (Lab chroma) have no hue to agree on: they do not count,
# so a gray prediction scores 0, not the agreement of its rounding noise.
HUE_CHROMA_MIN = 2.0


def truth_regions(ab_true: torch.Tensor) -> torch.Tensor:
    """Labels (h, w) of the regions painted as one colour, from the truth's ab (2, h, w)."""
    from skimage.segmentation import felzenszwalb

    image = (ab_true.float() / 100.0).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    labels = felzenszwalb(
        image, scale=COHERENCE_SCALE, sigma=0.5, min_size=COHERENCE_MIN_SIZE, channel_axis=-1
    )
    return torch.from_numpy(labels.astype(np.int64))


def region_hue_coherence(ab_pred: torch.Tensor, ab_true: torch.Tensor) -> float:
    """How much one hue each painted region of the truth gets in the prediction, in [0, 1].

    Both ab (2, H, W) are shrunk to a long side of :data:`COHERENCE_SIZE`; the truth is
    segmented into its painted regions (:func:`truth_regions`); in each region with colour
    in the truth, the chroma-weighted mean resultant length of the predicted hue
    (|sum of predicted ab vectors| / sum of their lengths: 1 = one hue, 0 = hues cancel
    or no colour at all; pixels below :data:`HUE_CHROMA_MIN` have no hue and do not
    count); the mean over regions weighted by area. Scaling all predicted
    chroma by one factor does not change it; rainbow patches inside a region lower it.
    Measured on the truth itself it gives the painting's own coherence.
    """
    if ab_pred.shape != ab_true.shape:
        raise ValueError(
            f"region_hue_coherence: shapes differ, {tuple(ab_pred.shape)} vs {tuple(ab_true.shape)}"
        )
    pred, true = _shrink(ab_pred.float().cpu()), _shrink(ab_true.float().cpu())
    labels = truth_regions(true).reshape(-1)
    count = int(labels.max()) + 1
    area = torch.bincount(labels, minlength=count).double()
    true_chroma = torch.bincount(
        labels, weights=torch.hypot(true[0], true[1]).reshape(-1).double(), minlength=count
    )
    coloured = true_chroma / area.clamp(min=1) > COHERENCE_CHROMA_MIN
    if not bool(coloured.any()):
        return float("nan")
    pa, pb = pred[0].reshape(-1).double(), pred[1].reshape(-1).double()
    pale = torch.hypot(pa, pb) < HUE_CHROMA_MIN
    pa, pb = pa.masked_fill(pale, 0.0), pb.masked_fill(pale, 0.0)
    sum_a = torch.bincount(labels, weights=pa, minlength=count)
    sum_b = torch.bincount(labels, weights=pb, minlength=count)
    length = torch.bincount(labels, weights=torch.hypot(pa, pb), minlength=count)
    resultant = torch.hypot(sum_a, sum_b) / length.clamp(min=1e-9)
    weights = area * coloured
    return float((resultant * weights).sum() / weights.sum())


def hue_contrast(ab: torch.Tensor, min_chroma: float = 5.0) -> float:
    """How many hues a frame holds, in [0, 1]: 1 - the chroma-weighted hue resultant over
    the pixels with chroma > ``min_chroma`` (|sum of their ab vectors| / sum of their
    lengths). 0 = one hue everywhere; figure and ground in opposite hues approach 1. NaN
    when no pixel is coloured. Scaling all chroma by one factor does not change it."""
    flat = ab.reshape(2, -1).double()
    chroma = torch.hypot(flat[0], flat[1])
    coloured = chroma > min_chroma
    if not bool(coloured.any()):
        return float("nan")
    vectors = flat[:, coloured]
    return float(1.0 - torch.hypot(vectors[0].sum(), vectors[1].sum()) / chroma[coloured].sum())


def _shrink(ab: torch.Tensor) -> torch.Tensor:
    height, width = ab.shape[-2:]
    scale = COHERENCE_SIZE / max(height, width)
    if scale >= 1.0:
        return ab
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(ab[None], size=size, mode="area")[0]
