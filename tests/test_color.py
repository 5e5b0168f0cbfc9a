import numpy as np
import pytest
import torch

from semwatch.color import (
    ChromaLUT,
    ab_to_target,
    gray_levels_to_l,
    gray_to_l,
    input_to_l,
    l_to_input,
    lab_to_rgb,
    rgb_to_lab,
    target_to_ab,
)


@pytest.fixture(scope="module")
def lut() -> ChromaLUT:
    return ChromaLUT("cpu")


def test_gray_l_table_matches_kornia():
    g = torch.arange(256, dtype=torch.float32) / 255
    rgb = g.view(1, 1, 256).expand(3, 1, 256)
    lab = rgb_to_lab(rgb[None])[0]
    assert torch.allclose(lab[0, 0].double(), gray_levels_to_l(), atol=1e-3)
    assert torch.allclose(
        gray_to_l(torch.arange(256, dtype=torch.uint8)), gray_levels_to_l().float(), atol=1e-5
    )


def test_value_conventions_round_trip():
    lightness = torch.linspace(0, 100, 11)
    assert torch.allclose(l_to_input(lightness)[[0, -1]], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(input_to_l(l_to_input(lightness)), lightness)
    ab = torch.tensor([-110.0, 0.0, 110.0])
    assert torch.allclose(ab_to_target(ab), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(target_to_ab(ab_to_target(ab)), ab)


def test_lab_rgb_round_trip():
    rgb = torch.rand(2, 3, 8, 8)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)


def _lightness(rgb_u8: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab((rgb_u8.permute(2, 0, 1).float() / 255)[None])[0, 0]


def test_table_keeps_lightness_for_any_chroma(lut):
    gen = torch.Generator().manual_seed(1)
    gray = torch.randint(0, 256, (64, 64), dtype=torch.uint8, generator=gen)
    ab = (torch.rand(2, 64, 64, generator=gen) * 2 - 1) * 110  # many far out of gamut
    out = lut.apply(gray, ab)
    table = gray_levels_to_l().float()
    err = (_lightness(out) - table[gray.long()]).abs()
    # One 8-bit step of L is at least 0.27 (near black); rounding to uint8 stays below that.
    assert err.max() < 0.3


def test_zero_chroma_is_exact_gray(lut):
    gray = torch.arange(256, dtype=torch.uint8).view(16, 16)
    out = lut.apply(gray, torch.zeros(2, 16, 16))
    assert torch.equal(out, gray[..., None].expand(16, 16, 3))


def test_out_of_gamut_reduces_chroma_not_lightness(lut):
    # A saturated blue on a bright gray cannot exist in sRGB: clipping would darken it.
    gray = torch.full((1, 1), 240, dtype=torch.uint8)
    ab = torch.tensor([0.0, -100.0]).view(2, 1, 1)
    out = lut.apply(gray, ab)
    lab_out = rgb_to_lab((out.permute(2, 0, 1).float() / 255)[None])[0, :, 0, 0]
    target_l = gray_levels_to_l()[240].item()
    assert abs(lab_out[0].item() - target_l) < 0.3
    assert lab_out[2].item() < -5  # still blue
    assert abs(lab_out[1].item()) < 5  # hue kept: a stays near 0
    clipped = lab_to_rgb(torch.tensor([target_l, 0.0, -100.0]).view(1, 3, 1, 1))
    clipped_l = rgb_to_lab(clipped)[0, 0, 0, 0].item()
    assert target_l - clipped_l > 1.0  # what plain clipping would have done


def test_in_gamut_colour_passes_unchanged(lut):
    gray = torch.full((1, 1), 128, dtype=torch.uint8)
    ab = torch.tensor([20.0, -10.0]).view(2, 1, 1)
    out = lut.apply(gray, ab)
    lab_out = rgb_to_lab((out.permute(2, 0, 1).float() / 255)[None])[0, :, 0, 0]
    assert abs(lab_out[1].item() - 20) < 1.5 and abs(lab_out[2].item() + 10) < 1.5


def test_index_clamps_values_beyond_the_table(lut):
    gray = torch.zeros((1, 2), dtype=torch.uint8)
    ab = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    idx = lut.index(gray, ab.view(2, 1, 2))
    assert int(idx.min()) >= 0 and int(idx.max()) < lut.table.shape[0]
    assert np.isfinite(lut.apply(gray, ab.view(2, 1, 2)).numpy()).all()
