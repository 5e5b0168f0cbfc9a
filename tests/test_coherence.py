"""Hue coherence on synthetic ab fields: rainbow bands become one hue, chroma stays local."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import max_lightness_error
from test_engine import Blotchy

from semwatch.coherence import HueCoherence, gaussian_blur
from semwatch.engine import Colorizer, GrayImage, Refinement
from semwatch.model import load_generator


def _field(hue: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    return torch.stack((chroma * torch.cos(hue), chroma * torch.sin(hue)))


def _hue(ab: torch.Tensor) -> torch.Tensor:
    return torch.atan2(ab[1], ab[0])


def _hue_spread(ab: torch.Tensor) -> float:
    """Circular standard deviation of the hue (radians): 0 for one hue."""
    unit = ab / torch.linalg.vector_norm(ab, dim=0, keepdim=True).clamp_min(1e-6)
    resultant = float(torch.linalg.vector_norm(unit.mean(dim=(1, 2))))
    return math.sqrt(-2.0 * math.log(max(resultant, 1e-12)))


def test_a_rainbow_band_inside_one_object_becomes_one_hue() -> None:
    # Hue swinging by +-70 degrees in bands 50 px apart (the GAN's hedge), constant chroma.
    x = torch.arange(160.0).expand(128, 160)
    ab = _field(0.5 + 1.2 * torch.sin(2 * math.pi * x / 50.0), torch.full((128, 160), 30.0))
    out = HueCoherence(0.2).apply(ab)
    centre = np.s_[:, 16:-16, 16:-16]
    assert _hue_spread(out[centre]) < 0.35 * _hue_spread(ab[centre])
    # The hues mostly agree, so the colour keeps most of its strength.
    assert float(torch.linalg.vector_norm(out[centre], dim=0).mean()) > 0.7 * 30.0


def test_one_hue_with_shading_is_left_alone() -> None:
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    chroma = 20.0 + 10.0 * torch.sin(x / 20.0) * torch.cos(y / 15.0)  # chroma varies, hue not
    ab = _field(torch.full((96, 128), 2.0), chroma)
    out = HueCoherence(0.2).apply(ab)
    assert float((_hue(out) - 2.0).abs().max()) < 1e-3
    # Chroma is only lightly smoothed: the local pattern survives.
    out_chroma = torch.linalg.vector_norm(out, dim=0)
    assert float((out_chroma - chroma).abs().mean()) < 1.0


def test_disagreeing_hues_turn_pale_instead_of_picking_one_at_full_strength() -> None:
    gen = torch.Generator().manual_seed(3)
    hue = torch.rand(96, 128, generator=gen) * 2 * math.pi  # every pixel its own hue
    ab = _field(hue, torch.full((96, 128), 30.0))
    out = HueCoherence(0.2).apply(ab)
    assert float(torch.linalg.vector_norm(out, dim=0).mean()) < 0.3 * 30.0


def test_two_objects_far_apart_keep_their_own_hues() -> None:
    hue = torch.full((64, 256), 0.3)
    hue[:, 128:] = 2.5
    ab = _field(hue, torch.full((64, 256), 25.0))
    out = HueCoherence(0.03).apply(ab)  # sigma ~8 px: far less than the 128 px objects
    assert float((_hue(out[:, :, :96]) - 0.3).abs().max()) < 0.05
    assert float((_hue(out[:, :, 160:]) - 2.5).abs().max()) < 0.05


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (7, 5), (40, 33)])
def test_any_size_works_and_zero_stays_zero(shape: tuple[int, int]) -> None:
    out = HueCoherence(0.3).apply(torch.zeros((2, *shape)))
    assert out.shape == (2, *shape) and torch.isfinite(out).all() and float(out.abs().max()) == 0.0


def test_off_is_the_identity_and_the_blur_keeps_a_constant() -> None:
    ab = torch.randn(2, 20, 30)
    assert HueCoherence(0.0).apply(ab) is ab
    constant = torch.full((1, 9, 50), 4.0)
    assert torch.allclose(gaussian_blur(constant, 6.0), constant)


def test_engine_applies_it_and_lightness_stays_exact(tiny_model) -> None:
    generator = load_generator(tiny_model)
    generator.model = Blotchy().eval()
    rng = np.random.default_rng(0)
    gray = np.clip(120 + rng.normal(0, 4, (128, 160)), 0, 255).astype(np.uint8)  # one flat object
    image = GrayImage(gray)
    plain = Colorizer(generator, device="cpu", chroma_size=128).predict_ab([image])[0]
    engine = Colorizer(generator, device="cpu", chroma_size=128, refinement=Refinement(hue_scale=0.3))
    coherent = engine.predict_ab([image])[0]
    assert _hue_spread(coherent) < 0.5 * _hue_spread(plain)
    assert max_lightness_error(engine.colorize([image])[0], gray) <= 1.0
