"""Colour by region: one hue per object, and hints that fill the object they fall in.

A colorist paints an SEM image region by region: one object one hue, the background a
contrasting one. The network's raw colour drifts in hue across an object (rainbow
patches); averaging hue over a neighbourhood (:mod:`semwatch.coherence`) removes the
drift but, where hues disagree, the average goes to a muddy olive. Here the gray image is
cut into regions (Felzenszwalb's graph segmentation, scikit-image, at a small fixed size)
and each region takes its DOMINANT hue — the mode of its chroma-weighted hue histogram,
not the mean — while every pixel keeps its own chroma. The same regions carry colour
hints: a region holding hints takes their colour (an edge-aware spread, so a hint stops
at the object's border).

Everything works on the network's down-scaled prediction, before up-sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import felzenszwalb

from semwatch.hints import HintPoint

# Hue histogram resolution for the dominant hue (15 degrees per bin).
HUE_BINS = 24
# Pixels paler than this (Lab chroma) do not vote on a region's hue: their hue is noise.
VOTE_CHROMA_MIN = 3.0
# With --spread (the behaviour before issue 20), colour outside the hinted regions moves
# this share of the way to the nearest hint's: hints show the palette a person wants, and
# the network's own guess there is the least certain part of the picture. Chosen on the validation split (10 simulated hints: ab error
# 0.665x -> 0.62x gray at 0.5; 0.7 gave no more; 1.0 would erase the network's distinctions).
HINT_PULL = 0.5


@dataclass(frozen=True)
class RegionSettings:
    """How the gray image is cut into regions (``strength`` 0 and no hints: not at all)."""

    strength: float = 0.0  # 0 = off; 1 = every pixel takes its region's dominant hue
    size: int = 192  # long side at which regions are found (cost grows with its square)
    scale: float = 150.0  # Felzenszwalb scale: larger gives larger regions
    min_size: int = 40  # smallest region, in pixels at ``size``


def segment(guide: torch.Tensor, settings: RegionSettings) -> torch.Tensor:
    """Region labels (h, w) int64 for a lightness image ``guide`` (h, w) in [0, 1]."""
    return upscale_labels(segment_small(guide, settings), guide.shape)


def upscale_labels(labels: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Labels found on the small copy, at ``shape`` (nearest neighbour)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    return F.interpolate(labels[None, None].float(), size=tuple(shape), mode="nearest")[0, 0].long()


def segment_small(guide: torch.Tensor, settings: RegionSettings) -> torch.Tensor:
    """Region labels at the size they are found (long side ``settings.size``), on the
    guide's device."""
    height, width = guide.shape
    scale = min(1.0, settings.size / max(height, width))
    small = guide[None, None].float()
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = F.interpolate(small, size=size, mode="area")
    gray = small[0, 0].cpu().numpy().astype(np.float64)
    labels = felzenszwalb(gray, scale=settings.scale, sigma=0.8, min_size=settings.min_size)
    return torch.from_numpy(labels.astype(np.int64)).to(guide.device)


def dominant_hue(ab: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per region: the unit (a, b) direction of its dominant hue (2, count) and its vote
    weight (count,) — the chroma behind the winning hue; 0 where the region has no colour.

    The mode bin of the chroma-weighted hue histogram (circularly smoothed, so a hue on a
    bin border is not split) picks the hue family; the direction is the chroma-weighted
    mean of the pixels in that bin and its two neighbours: precise, and never a blend of
    two different hues.
    """
    a, b = ab[0].reshape(-1), ab[1].reshape(-1)
    chroma = torch.hypot(a, b)
    weight = torch.where(chroma > VOTE_CHROMA_MIN, chroma, torch.zeros_like(chroma))
    angle = torch.atan2(b, a)
    bins = ((angle + math.pi) / (2 * math.pi) * HUE_BINS).long().clamp_(0, HUE_BINS - 1)
    flat = labels.reshape(-1)
    hist = torch.zeros(count * HUE_BINS, device=ab.device, dtype=torch.float32)
    hist.index_add_(0, flat * HUE_BINS + bins, weight)
    hist = hist.view(count, HUE_BINS)
    smooth = hist + 0.5 * (hist.roll(1, dims=1) + hist.roll(-1, dims=1))
    mode = smooth.argmax(dim=1)
    offset = (bins - mode[flat]) % HUE_BINS
    near = (offset <= 1) | (offset >= HUE_BINS - 1)
    w = torch.where(near, weight, torch.zeros_like(weight))
    sums = torch.zeros((count, 2), device=ab.device, dtype=torch.float32)
    sums.index_add_(
        0, flat, torch.stack((a * w / chroma.clamp(min=1e-6), b * w / chroma.clamp(min=1e-6)), dim=1)
    )
    votes = torch.zeros(count, device=ab.device, dtype=torch.float32).index_add_(0, flat, w)
    direction = sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return direction.t(), votes


def apply_dominant_hue(ab: torch.Tensor, labels: torch.Tensor, strength: float) -> torch.Tensor:
    """``ab`` (2, h, w) with each pixel's hue turned toward its region's dominant hue by
    ``strength`` (1 = all the way); chroma stays each pixel's own."""
    if strength <= 0:
        return ab
    count = int(labels.max()) + 1
    direction, votes = dominant_hue(ab, labels, count)
    chroma = torch.hypot(ab[0], ab[1])
    own = ab / chroma.clamp(min=1e-6)
    target = direction[:, labels]
    has_hue = (votes > 0)[labels]
    mixed = own * (1.0 - strength) + target * strength
    mixed = mixed / mixed.norm(dim=0, keepdim=True).clamp(min=1e-6)
    return torch.where(has_hue, mixed * chroma, ab)


def spread_hints(
    ab: torch.Tensor, labels: torch.Tensor, points: Sequence[HintPoint], *, pull: float = 0.0
) -> torch.Tensor:
    """``ab`` (2, h, w) where every region holding hints takes their colour.

    A colorist's hint means "this object is this colour": the region (edge-aware: it ends
    where the gray image has an edge) takes the hint's a,b outright. A region holding
    several hints blends them by inverse squared distance, so each point's colour holds
    near it and two different colours in one region never average to mud across it.
    Elsewhere the network's answer (which has seen the hints as input, when the model takes
    them) stays, or with ``pull`` (:data:`HINT_PULL` when a person asks hints to spread)
    moves that share of the way toward the colour of the nearest hint.
    """
    if not points:
        return ab
    height, width = labels.shape
    rows = [min(max(p.row, 0), height - 1) for p in points]
    cols = [min(max(p.col, 0), width - 1) for p in points]
    held = [int(labels[row, col]) for row, col in zip(rows, cols)]
    count = int(labels.max()) + 1
    # A region holding one point (every style match) takes its colour by table look-up;
    # only regions holding several points, and the pull, need a distance map per point.
    per_region = torch.bincount(torch.tensor(held), minlength=count)
    table = torch.zeros((count, 2), dtype=ab.dtype)
    for point, region in zip(points, held):
        table[region] = torch.tensor((point.a, point.b), dtype=ab.dtype)
    single = (per_region == 1).to(ab.device)
    out = torch.where(single[labels], table.to(ab.device).t()[:, labels], ab)
    shared = [i for i, region in enumerate(held) if per_region[region] > 1]
    if not shared and not pull:
        return out
    y = torch.arange(height, device=ab.device, dtype=torch.float32)[:, None]
    x = torch.arange(width, device=ab.device, dtype=torch.float32)[None, :]
    weighted = torch.zeros_like(ab)
    weights = torch.zeros((height, width), device=ab.device)
    nearest_colour = torch.zeros_like(ab)
    nearest_distance = torch.full((height, width), float("inf"), device=ab.device)
    for index, (point, row, col) in enumerate(zip(points, rows, cols)):
        if not pull and per_region[held[index]] == 1:
            continue
        colour = torch.tensor((point.a, point.b), device=ab.device, dtype=ab.dtype)[:, None, None]
        distance = (y - row) ** 2 + (x - col) ** 2
        if per_region[held[index]] > 1:
            weight = (labels == held[index]) / (distance + 1.0)
            weighted += weight * colour
            weights += weight
        closer = distance < nearest_distance
        nearest_distance = torch.where(closer, distance, nearest_distance)
        nearest_colour = torch.where(closer, colour, nearest_colour)
    inside = weighted / weights.clamp(min=1e-12)
    hinted = single[labels] | (weights > 0)
    pulled = ab + pull * (nearest_colour - ab) if pull else ab
    return torch.where(weights > 0, inside, torch.where(hinted, out, pulled))


def region_means(values: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """(count, C): the mean of ``values`` (C, h, w) over each region of ``labels`` (h, w)."""
    flat = labels.reshape(-1)
    channels = values.shape[0]
    # Summed along the pixels of each channel as the values lie in memory: three times
    # faster on the CPU than gathering per pixel across the channels, and the same sums.
    sums = torch.zeros((channels, count), device=values.device, dtype=torch.float32)
    sums.index_add_(1, flat, values.reshape(channels, -1).float())
    area = torch.bincount(flat, minlength=count).clamp(min=1).to(sums)
    return (sums / area).t()
