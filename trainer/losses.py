"""Training losses: L1 on ab (optionally class-rebalanced) and the two GAN objectives of pix2pix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

GanLossKind = Literal["bce", "lsgan"]
AB_UNITS = 110.0  # network ab units -> Lab units, for reporting


# Rebalancing bins: Zhang et al. 2016's 10-unit ab grid over [-110, 110), and their
# smoothing of the empirical prior (a Gaussian of 5 ab units = half a bin).
REBALANCE_BIN = 10.0
_BINS = int(2 * AB_UNITS / REBALANCE_BIN)
_PRIOR_SIGMA_BINS = 0.5


def l1_ab(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error in the network's ab/110 units (multiply by AB_UNITS for Lab units);
    with ``weights`` (N, 1, H, W), each pixel's error is weighted (:class:`Rebalance`)."""
    if weights is None:
        return F.l1_loss(pred.float(), target.float())
    return (weights * (pred.float() - target.float()).abs()).mean()


@dataclass(frozen=True)
class Rebalance:
    """Per-pixel loss weights from the rarity of the truth's colour (Zhang et al. 2016).

    ``table[i, j]`` weighs a truth in ab bin (i, j): 1 / (r * prior + (1 - r) / Q), Q the
    bins the training data uses, normalised so the prior-weighted mean weight is 1. The
    common orange-browns and near-grays then count less, the rare blues and greens more,
    which works against regression's drift to the mean hue.
    """

    table: torch.Tensor  # (_BINS, _BINS) float32
    strength: float

    @classmethod
    def from_counts(cls, counts: np.ndarray, strength: float) -> Rebalance:
        """From a (_BINS, _BINS) histogram of the training truth's a,b (Lab units)."""
        if not 0.0 < strength < 1.0:
            raise ValueError(f"rebalance strength must be in (0, 1), got {strength}")
        prior = gaussian_filter(counts.astype(np.float64), _PRIOR_SIGMA_BINS, mode="constant")
        prior /= max(prior.sum(), 1e-12)
        used = max(int((prior > 1e-6).sum()), 1)
        weights = 1.0 / (strength * prior + (1.0 - strength) / used)
        weights /= (prior * weights).sum()
        return cls(torch.from_numpy(weights.astype(np.float32)), strength)

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) weights for a (N, 2, H, W) target in the network's ab/110 units."""
        index = ((target.float() * AB_UNITS + AB_UNITS) / REBALANCE_BIN).long().clamp_(0, _BINS - 1)
        table = self.table.to(target.device)
        return table[index[:, 0], index[:, 1]].unsqueeze(1)

    @property
    def spread(self) -> float:
        """Largest over smallest weight among the bins the data uses (for the log)."""
        used = self.table[self.table < self.table.max()]
        return float(self.table.max() / used.min()) if used.numel() else 1.0


def ab_counts(ab: torch.Tensor) -> np.ndarray:
    """(_BINS, _BINS) histogram of a (2, ...) tensor of a,b in Lab units."""
    index = ((ab.reshape(2, -1).float() + AB_UNITS) / REBALANCE_BIN).long().clamp_(0, _BINS - 1)
    flat = index[0] * _BINS + index[1]
    return torch.bincount(flat, minlength=_BINS * _BINS).view(_BINS, _BINS).numpy()


def gan_loss(logits: torch.Tensor, real: bool, kind: GanLossKind) -> torch.Tensor:
    """Loss of discriminator logits against an all-real or all-fake target.

    ``bce``: the original cGAN objective, BCE with logits (numerically safe, autocast-safe).
    ``lsgan``: least squares on the raw logits (Mao et al. 2017), steadier gradients when
    the discriminator wins early.
    """
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"unknown GAN loss {kind!r} (expected 'bce' or 'lsgan')")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: GanLossKind
) -> torch.Tensor:
    """pix2pix halves D's loss so that it learns at half the generator's pace."""
    return 0.5 * (gan_loss(real_logits, True, kind) + gan_loss(fake_logits, False, kind))
