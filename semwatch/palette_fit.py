"""Putting a palette's colours on the frame's objects: "these colours", the engine decides where.

A palette says which colours and how much of each, never where (:mod:`semwatch.palette`). The
network's own colours say which objects belong together — its regions of one colour are the
objects a colorist would paint alike far more often than its hue is the colorist's (on the
held-out split, giving each of its colour groups the best palette colour would cut the error
to 0.58x a gray image's, while its hues alone are worse than gray) — so the engine groups the
regions by what they look like and how the model coloured them, and hands the palette's
colours out so that each colour covers about the share of the frame its weight asks for:

1. Each region (the engine's segmentation, :mod:`semwatch.regions`) is described by its mean
   lightness and mean predicted a,b (all in Lab units).
2. The regions fall into as many groups as the palette has colours (area-weighted k-means,
   seeded, so the same frame always splits the same way).
3. Of every way to give the groups colours (at most 4**4), the one whose areas best match
   the weights wins, hue closeness to the model's own colour breaking near ties.
4. Each pixel takes its group's colour at the colour's own chroma, faded where the model
   left the pixel pale (so what the model saw as gray stays quiet).

Hints and style points still win in their regions: they are applied after this.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from semwatch.palette import Palette
from semwatch.regions import region_means

# A pixel the model coloured at least this strongly (Lab chroma) takes the full palette
# colour; paler ones take it in proportion, down to none at gray.
FULL_CHROMA = 10.0
# Weight of "the group's own colour is near this palette colour" against "the group's
# area matches this colour's weight" (an area share difference of 1 costs 1; a,b distance
# counts per 30 Lab units). Tuned on the val split: area is the stronger cue.
HUE_WEIGHT = 0.5
_HUE_UNIT = 30.0
_KMEANS_ROUNDS = 20


def fit_palette(
    ab: torch.Tensor, guide: torch.Tensor, labels: torch.Tensor, palette: Palette
) -> torch.Tensor:
    """``ab`` (2, h, w, Lab units) recoloured with ``palette``'s colours; ``guide`` (h, w) is
    L/100 and ``labels`` (h, w) the regions."""
    count = int(labels.max()) + 1
    means = region_means(torch.cat((guide[None] * 100.0, ab)), labels, count).double().cpu().numpy()
    weights = torch.bincount(labels.reshape(-1), minlength=count).double().cpu().numpy()
    colours = np.array([[c.a, c.b] for c in palette.colours])
    groups = _weighted_kmeans(means, weights, len(colours))
    choice = _assign(means[:, 1:], weights, groups, colours, np.array([c.weight for c in palette.colours]))
    table = torch.as_tensor(colours[choice[groups]], dtype=ab.dtype, device=ab.device)  # (count, 2)
    chroma = torch.hypot(ab[0], ab[1])
    fade = (chroma / FULL_CHROMA).clamp(max=1.0)
    return table[labels].permute(2, 0, 1) * fade


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Group of each point: k-means weighted by area, k-means++ seeding with a fixed seed.
    Fewer distinct points than groups: each its own."""
    present = weights > 0
    if int(present.sum()) <= k:
        return _own_groups(present)
    rng = np.random.default_rng(0)
    share = weights / weights.sum()
    centres = [points[rng.choice(len(points), p=share)]]
    for _ in range(1, k):
        dist = ((points[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1) * weights
        if dist.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=dist / dist.sum())])
    centre = np.array(centres)
    for _ in range(_KMEANS_ROUNDS):
        group = ((points[:, None] - centre[None]) ** 2).sum(-1).argmin(1)
        moved = centre.copy()
        for j in range(len(centre)):
            member = (group == j) & present
            if member.any():
                moved[j] = np.average(points[member], axis=0, weights=weights[member])
        if np.allclose(moved, centre):
            break
        centre = moved
    return ((points[:, None] - centre[None]) ** 2).sum(-1).argmin(1)


def _own_groups(present: np.ndarray) -> np.ndarray:
    """Each region with pixels its own group (label numbers can skip: those get group 0)."""
    groups = np.zeros(len(present), dtype=np.int64)
    groups[present] = np.arange(int(present.sum()))
    return groups


def _assign(
    ab: np.ndarray, weights: np.ndarray, groups: np.ndarray, colours: np.ndarray, colour_weights: np.ndarray
) -> np.ndarray:
    """The palette colour (index) of each group: the assignment whose group areas best match
    the colours' weights, plus HUE_WEIGHT x the area-weighted distance of each group's own
    mean a,b to its colour."""
    k = int(groups.max()) + 1
    area = np.bincount(groups, weights=weights, minlength=k)
    share = area / max(area.sum(), 1e-12)
    own = np.array(
        [
            np.average(ab[groups == j], axis=0, weights=weights[groups == j]) if area[j] > 0 else np.zeros(2)
            for j in range(k)
        ]
    )
    distance = np.sqrt(((own[:, None] - colours[None]) ** 2).sum(-1)) / _HUE_UNIT  # (groups, colours)
    best, best_cost = None, np.inf
    for option in itertools.product(range(len(colours)), repeat=k):
        chosen = np.array(option)
        covered = np.bincount(chosen, weights=share, minlength=len(colours))
        cost = (
            np.abs(covered - colour_weights).sum()
            + HUE_WEIGHT * (share * distance[np.arange(k), chosen]).sum()
        )
        if cost < best_cost - 1e-12:
            best, best_cost = chosen, cost
    return best
