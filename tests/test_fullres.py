"""The full-resolution step against the straightforward computation it replaces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import textured_gray

from semwatch.color import ChromaLUT, gray_levels_to_l
from semwatch.fullres import FullResolution
from semwatch.guided import GuidedFilter


@pytest.fixture(scope="module")
def lut() -> ChromaLUT:
    return ChromaLUT("cpu")


@pytest.fixture(scope="module")
def fullres(lut) -> FullResolution:
    return FullResolution(lut, (gray_levels_to_l() / 100).float())


def smooth_planes(channels: int, height: int, width: int, scale: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 6, 8, generator=gen) * scale
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


def reference_ab(gray: torch.Tensor, planes: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """Whole-image bilinear up-sampling, then the guided filter's affine model (as the
    engine computed it before semwatch.fullres)."""
    up = F.interpolate(planes[None], size=gray.shape, mode="bilinear", align_corners=False)[0]
    if planes.shape[0] == 4:
        return GuidedFilter.apply(up, lightness[gray.long()])
    return up


@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("shape", [(301, 417), (96, 128), (64, 64)])
def test_matches_the_reference_computation(lut, fullres, channels, shape):
    gray = torch.from_numpy(textured_gray(*shape))
    # Coefficients: A in ab per unit of L/100 (so A * L/100 spans tens of Lab units), B in ab.
    planes = smooth_planes(channels, 96, 128, 40.0)
    ab = reference_ab(gray, planes, fullres.lightness)
    assert torch.allclose(fullres.ab(gray, planes), ab, atol=1e-3)
    expected = lut.index(gray, ab)
    index = fullres.index(gray, planes)
    # Bins are folded in at low resolution, so a value within float rounding of a bin edge
    # may land in the neighbouring bin; never further.
    n = lut.n
    for got, want in ((index // n % n, expected // n % n), (index % n, expected % n)):
        assert (got - want).abs().max() <= 1
    assert (index // (n * n) == expected // (n * n)).all()  # the gray level itself: exact
    assert (index == expected).float().mean() > 0.999


def test_rgb_is_the_table_at_the_index(lut, fullres):
    gray = torch.from_numpy(textured_gray(120, 160, seed=3))
    planes = smooth_planes(4, 30, 40, 40.0, seed=3)
    out = torch.empty((120, 160, 3), dtype=torch.uint8)
    fullres.rgb_into(out, gray, planes)
    expected = lut.table[fullres.index(gray, planes).long()]
    assert torch.equal(out, expected)


def test_saturating_colour_stays_in_the_table(lut, fullres):
    gray = torch.from_numpy(np.full((40, 50), 128, np.uint8))
    planes = torch.full((2, 10, 10), 1e4)  # far beyond the table's +-110
    index = fullres.index(gray, planes)
    assert int(index.max()) < lut.table.shape[0] and int(index.min()) >= 0
