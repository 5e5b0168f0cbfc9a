"""Luminance-guided smoothing of predicted colour (the fast guided filter of He et al.).

The network's colour is predicted at low resolution and can be blotchy inside one object.
A guided filter with the image's lightness as the guide makes colour locally an affine
function of lightness: flat where lightness is flat (one object, one colour), changing
where lightness has an edge. Its coefficients are computed at the network's resolution and
applied with the full-resolution lightness, which also puts colour edges where the gray
image has them instead of where bilinear up-sampling smears them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GuidedFilter:
    radius: int  # box radius, in pixels of the low-resolution prediction; 0 disables
    eps: float  # regularisation in (L/100)**2 units: larger keeps colour flatter across edges

    @property
    def enabled(self) -> bool:
        return self.radius > 0

    def coefficients(self, guide: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Smoothed affine coefficients (2C, h, w): src ~ A * guide + B, A first then B.

        guide: (h, w) lightness / 100; src: (C, h, w).
        """
        kernel = 2 * self.radius + 1

        def along_rows(x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, (1, kernel), stride=1, padding=(0, self.radius), count_include_pad=False)

        def box(x: torch.Tensor) -> torch.Tensor:
            # Mean over the window's pixels inside the image, as two 1-D passes (2k instead
            # of k*k additions per pixel; the same numbers, since a window's valid width
            # does not depend on its row). The vertical pass runs along the rows of the
            # transposed planes: PyTorch's CPU pooling is 1.4x faster that way round, with
            # bit-identical sums.
            return along_rows(along_rows(x[None]).transpose(-1, -2)).transpose(-1, -2)[0]

        guide = guide[None]
        mean_i = box(guide)
        mean_p = box(src)
        cov_ip = box(guide * src) - mean_i * mean_p
        var_i = box(guide * guide) - mean_i * mean_i
        a = cov_ip / (var_i + self.eps)
        b = mean_p - a * mean_i
        return box(torch.cat((a, b)))

    @staticmethod
    def apply(coefficients: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """(C, H, W) output from (2C, H, W) coefficients and a (H, W) guide."""
        a, b = coefficients.chunk(2)
        return torch.addcmul(b, a, guide[None])
