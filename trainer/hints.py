"""Simulated colour hints for training and evaluation (after Zhang et al. 2017).

A person gives a few points with the colour they want; training imitates that from the
truth: a share of the items gets no hint at all (so the automatic colour stays good), the
rest a geometric number of points at uniform positions, each revealing the mean a,b of a
small square of the truth around it. Evaluation (``trainer evaluate --hints N``) draws
exactly N such points per image from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from semwatch.hints import HINT_PATCH, HINT_PATCH_MAX, HintPoint
from semwatch.palette import PALETTE_COLOURS, Palette, dominant_colours


@dataclass(frozen=True)
class HintSimulation:
    """How many hints an item gets; ``none_share = 1`` gives every item empty hint planes."""

    none_share: float = 0.3  # items with no hint at all
    mean_points: float = 8.0  # mean of the geometric number of points (>= 1) otherwise
    max_points: int = 40
    patch_max: int = HINT_PATCH_MAX  # squares of 1..patch_max pixels

    def count(self, rng: np.random.Generator) -> int:
        if self.none_share >= 1.0 or rng.random() < self.none_share:
            return 0
        return int(min(self.max_points, rng.geometric(1.0 / max(1.0, self.mean_points))))


def sample_points(
    ab: torch.Tensor,
    count: int,
    rng: np.random.Generator,
    *,
    patch_max: int | None = None,
    rows: int | None = None,
) -> list[HintPoint]:
    """``count`` hints from the truth ``ab`` (2, H, W) in Lab units: uniform positions in the
    first ``rows`` rows, each the mean a,b of a square around it. ``patch_max`` None: the
    product's fixed square (what evaluation uses); else a random side in 1..patch_max."""
    height, width = ab.shape[-2:]
    rows = height if rows is None else max(1, min(rows, height))
    points = []
    for _ in range(count):
        row = int(rng.integers(0, rows))
        col = int(rng.integers(0, width))
        patch = HINT_PATCH if patch_max is None else int(rng.integers(1, patch_max + 1))
        half = patch // 2
        square = ab[:, max(0, row - half) : row - half + patch, max(0, col - half) : col - half + patch]
        mean = square.reshape(2, -1).mean(dim=1)
        points.append(HintPoint(row, col, float(mean[0]), float(mean[1]), patch))
    return points


@dataclass(frozen=True)
class PaletteSimulation:
    """Which items are shown their truth's palette, and how many colours it has.

    ``share = 0`` gives every item an absent palette (zero planes): validation, which
    measures the automatic colour.
    """

    share: float = 0.5
    max_colours: int = PALETTE_COLOURS

    def draw(self, ab: torch.Tensor, rng: np.random.Generator) -> Palette | None:
        """The truth's 1..max_colours dominant a,b clusters (``ab`` in Lab units), or None."""
        if self.share <= 0.0 or rng.random() >= self.share:
            return None
        count = int(rng.integers(1, self.max_colours + 1))
        return dominant_colours(ab, count, seed=int(rng.integers(0, 2**31)))
