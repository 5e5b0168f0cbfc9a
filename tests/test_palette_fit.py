"""The engine hands a palette's colours to the frame's objects (semwatch.palette_fit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semwatch.engine import Colorizer, GrayImage
from semwatch.hints import Hint, color_to_ab
from semwatch.palette import make_palette, parse_palette
from semwatch.palette_fit import FULL_CHROMA, fit_palette

H, W = 60, 80


def scene(ground_ab: tuple[float, float], figure_ab: tuple[float, float], figure_cols: int = 20):
    """A bright figure (the left ``figure_cols`` columns) on a dark ground, each one region,
    the model's colours as given."""
    labels = torch.zeros((H, W), dtype=torch.long)
    labels[:, :figure_cols] = 1
    guide = torch.where(labels == 1, torch.tensor(0.8), torch.tensor(0.3))
    ab = torch.empty((2, H, W))
    for channel in range(2):
        ab[channel] = torch.where(
            labels == 1, torch.tensor(figure_ab[channel]), torch.tensor(ground_ab[channel])
        )
    return ab, guide, labels


def colour_of(ab: torch.Tensor, labels: torch.Tensor, region: int) -> tuple[float, float]:
    values = ab[:, labels == region]
    assert torch.allclose(values, values[:, :1].expand_as(values)), "a region took more than one colour"
    return float(values[0, 0]), float(values[1, 0])


def test_each_colour_covers_about_the_share_its_weight_asks_for() -> None:
    # The model paints both the same orange: only the areas (1/4 figure, 3/4 ground) can
    # tell which colour goes where.
    ab, guide, labels = scene((30.0, 40.0), (30.0, 40.0))
    ab[:, labels == 1] += 8.0  # a little different, so the two are two groups
    palette = make_palette([(None, -20.0, -40.0, 0.75), (None, 60.0, 50.0, 0.25)])
    out = fit_palette(ab, guide, labels, palette)
    assert colour_of(out, labels, 0) == (-20.0, -40.0)  # ground: the heavy colour
    assert colour_of(out, labels, 1) == (60.0, 50.0)
    # Weights the other way round swap them.
    swapped = make_palette([(None, -20.0, -40.0, 0.25), (None, 60.0, 50.0, 0.75)])
    out = fit_palette(ab, guide, labels, swapped)
    assert colour_of(out, labels, 0) == (60.0, 50.0)


def test_with_equal_areas_each_object_takes_the_colour_nearest_its_own() -> None:
    ab, guide, labels = scene((-10.0, -30.0), (40.0, 30.0), figure_cols=W // 2)
    palette = make_palette([(None, 50.0, 40.0, 0.5), (None, -20.0, -45.0, 0.5)])
    out = fit_palette(ab, guide, labels, palette)
    assert colour_of(out, labels, 1) == (50.0, 40.0)
    assert colour_of(out, labels, 0) == (-20.0, -45.0)


def test_what_the_model_left_gray_stays_gray_and_pale_pixels_take_less() -> None:
    ab, guide, labels = scene((0.0, 0.0), (30.0, 40.0))
    ab[:, :5, :5] = 0.0  # gray inside the figure
    ab[:, 10, 3] = torch.tensor([FULL_CHROMA * 0.3, FULL_CHROMA * 0.4])  # half the full chroma
    out = fit_palette(ab, guide, labels, parse_palette("#3060d0"))
    a, b = color_to_ab("#3060d0")
    assert float(out[:, labels == 0].abs().max()) == 0.0
    assert float(out[:, :5, :5].abs().max()) == 0.0
    assert torch.allclose(out[:, 10, 3], torch.tensor([a, b]) * 0.5, atol=1e-4)
    assert torch.allclose(out[:, 30, 10], torch.tensor([a, b]), atol=1e-4)


def test_the_same_frame_always_splits_the_same_way() -> None:
    rng = np.random.default_rng(3)
    labels = torch.as_tensor(rng.integers(0, 12, (H, W)))
    guide = torch.as_tensor(rng.random((H, W)), dtype=torch.float32)
    ab = torch.as_tensor(rng.normal(0, 30, (2, H, W)), dtype=torch.float32)
    palette = parse_palette("#e0b030:0.5,#3060d0:0.3,#d03030:0.2")
    first = fit_palette(ab, guide, labels, palette)
    assert torch.equal(first, fit_palette(ab, guide, labels, palette))
    # Only the palette's colours (faded by the model's chroma) come out.
    colours = torch.tensor([[c.a, c.b] for c in palette.colours])
    chroma = torch.hypot(ab[0], ab[1])
    strong = chroma >= FULL_CHROMA
    pixels = first[:, strong].T
    assert (torch.cdist(pixels, colours).min(dim=1).values < 1e-3).all()
    # A colour may go unused when no group's area fits its weight (a light colour then
    # costs less error than a forced one), but one colour for everything fits nothing here.
    assert len({tuple(p) for p in pixels.round(decimals=3).tolist()}) >= 2


def test_a_hint_still_wins_in_its_region_over_the_palette(tiny_model: Path) -> None:
    engine = Colorizer.from_file(tiny_model, device="cpu", chroma_size=128)
    gray = np.full((96, 128), 60, dtype=np.uint8)
    gray[20:70, 30:90] = 200  # one bright object
    image = GrayImage(gray)
    hint = Hint.from_color(60, 45, "#30c060")
    (placed,) = engine.predict_ab([image], hints=[[hint]], palettes=[parse_palette("#3060d0")])
    a, b = color_to_ab("#30c060")
    inside = placed[:, 40:50, 55:65].mean(dim=(1, 2))
    assert abs(float(inside[0]) - a) < 8 and abs(float(inside[1]) - b) < 8
