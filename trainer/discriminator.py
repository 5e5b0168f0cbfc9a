"""The PatchGAN discriminator of pix2pix (Isola et al. 2017), on concatenated (L, ab).

With ``n_layers=3`` every output logit judges one 70x70 patch of the input: a 256x256
pair gives a 30x30 grid of real/fake logits. Local realism is what the discriminator
should add on top of L1; the global colour layout is the generator's job.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Norm = Literal["batch", "instance", "none"]


def build_patchgan(
    *,
    in_channels: int = 3,
    base_channels: int = 64,
    n_layers: int = 3,
    norm: Norm = "batch",
    kernel_size: int = 4,
    negative_slope: float = 0.2,
    init_gain: float = 0.02,
) -> nn.Sequential:
    """pix2pix ``NLayerDiscriminator``: raw logits (N, 1, h, w), no sigmoid (losses take logits).

    Layout: conv(stride 2) + LeakyReLU; ``n_layers - 1`` x [conv(stride 2) + norm +
    LeakyReLU] with channels doubling up to 8x; conv(stride 1) + norm + LeakyReLU; conv to
    one channel. Weights start from N(0, init_gain) (norm scales from N(1, init_gain)), as
    in pix2pix.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    use_bias = norm != "batch"  # a bias before BatchNorm is cancelled by its mean
    padding = 1 if kernel_size == 4 else kernel_size // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, base_channels, kernel_size, stride=2, padding=padding),
        nn.LeakyReLU(negative_slope, inplace=True),
    ]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        stride = 2 if n < n_layers else 1
        layers += [
            nn.Conv2d(
                base_channels * prev,
                base_channels * mult,
                kernel_size,
                stride=stride,
                padding=padding,
                bias=use_bias,
            ),
            _norm_layer(norm, base_channels * mult),
            nn.LeakyReLU(negative_slope, inplace=True),
        ]
    layers.append(nn.Conv2d(base_channels * mult, 1, kernel_size, stride=1, padding=padding))
    model = nn.Sequential(*layers)
    _init_weights(model, init_gain)
    return model


def receptive_field(n_layers: int = 3, kernel_size: int = 4) -> int:
    """Input patch side seen by one output logit (70 for the pix2pix default)."""
    strides = [2] * n_layers + [1, 1]
    field = 1
    for stride in reversed(strides):
        field = (field - 1) * stride + kernel_size
    return field


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r} (expected batch, instance or none)")


def _init_weights(model: nn.Module, gain: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
