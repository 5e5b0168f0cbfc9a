"""Training losses: L1 on ab and the two GAN objectives of pix2pix."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GanLossKind = Literal["bce", "lsgan"]
AB_UNITS = 110.0  # network ab units -> Lab units, for reporting


def l1_ab(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in the network's ab/110 units (multiply by AB_UNITS for Lab units)."""
    return F.l1_loss(pred.float(), target.float())


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
