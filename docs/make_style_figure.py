"""The README's "Styles" picture: a reference field of view with its hints, and two other
fields of view of the same specimen coloured by the style made from them.

    python docs/make_style_figure.py [--image ../shared/data/sem-real/pollen-hibiscus-300x.png]
                                     [--out docs/styles-hibiscus.png]

The fields of view are cut from one real frame (the sample data has one frame per
specimen): A, the left 60 % (the reference, hinted); B, the right 60 % at 0.85 scale (the
protocol of `trainer evaluate --style-transfer`); C, the lower right quarter at 1.3x.
Everything runs through the engine at the service's defaults with the bundled model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "sem-real" / "pollen-hibiscus-300x.png"
# (x, y) in A's pixels and the colour: three pollen grains yellow, the background blue.
HINTS = [
    (1040, 1120, "#e0b030"),
    (1000, 680, "#e0b030"),
    (1360, 240, "#e0b030"),
    (240, 1200, "#3060c0"),
    (300, 300, "#3060c0"),
    (200, 1700, "#3060c0"),
]
PANEL_HEIGHT = 420


def fields_of_view(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    height, width = gray.shape
    share = round(width * 0.6)
    view_a = gray[:, :share]
    right = Image.fromarray(np.ascontiguousarray(gray[:, width - share :]))
    view_b = np.asarray(right.resize((round(share * 0.85), round(height * 0.85)), Image.Resampling.LANCZOS))
    quarter = Image.fromarray(
        np.ascontiguousarray(gray[height // 3 : height // 3 + height // 2, width // 2 :])
    )
    size = (round(quarter.width * 1.3), round(quarter.height * 1.3))
    view_c = np.asarray(quarter.resize(size, Image.Resampling.LANCZOS))
    return view_a, view_b, view_c


def panel(rgb: np.ndarray, dots: list[tuple[float, float, str]] = ()) -> Image.Image:
    image = Image.fromarray(rgb)
    scale = PANEL_HEIGHT / image.height
    image = image.resize((round(image.width * scale), PANEL_HEIGHT), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    for x, y, color in dots:
        cx, cy = x * scale, y * scale
        draw.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=color, outline="white", width=2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "styles-hibiscus.png")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from semwatch.config import EngineConfig
    from semwatch.engine import Colorizer, GrayImage
    from semwatch.hints import Hint
    from semwatch.imaging import read_image
    from semwatch.styles import make_style

    colorizer = Colorizer.from_config(EngineConfig(device="cpu", batch_size=1))
    decoded = read_image(args.image)
    # The data bar stays out of every field of view: the views are cut above it.
    rows = decoded.databar_row or decoded.gray.shape[0]
    view_a, view_b, view_c = (GrayImage(np.ascontiguousarray(v)) for v in fields_of_view(decoded.gray[:rows]))
    hints = [Hint.from_color(x, y, color) for x, y, color in HINTS]
    style = make_style(colorizer, view_a, hints, name="hibiscus", source_name="A", source_sha256="0" * 64)
    reference = colorizer.colorize([view_a], hints=[hints])[0]
    styled = colorizer.colorize([view_b, view_c], styles=[style, style])
    panels = [panel(reference, HINTS), panel(styled[0]), panel(styled[1])]
    gap = 8
    figure = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), PANEL_HEIGHT), "white")
    x = 0
    for p in panels:
        figure.paste(p, (x, 0))
        x += p.width + gap
    figure.save(args.out, optimize=True)
    print(f"{args.out}: {figure.width}x{figure.height}")


if __name__ == "__main__":
    main()
