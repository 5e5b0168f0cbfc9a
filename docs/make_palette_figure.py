"""The README's palette picture: real SEM frames through the bundled model with no input at
all (top row) and with one two-colour palette, "#e0b030,#3060d0" (bottom row).

    python docs/make_palette_figure.py [--data ../shared/data/sem-real]
                                       [--palette "#e0b030,#3060d0"] [--out docs/palette-sem-real.jpg]

Everything runs through the engine at the service's defaults; each frame's data bar is kept
(the engine leaves it gray, as the service does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sem-real"
FRAMES = ("pollen-hibiscus-300x.png", "pollen-1062-550x.png", "fei-helios-rbc.tif", "zeiss-sem-1k.tif")
PANEL_HEIGHT = 300
LABEL_WIDTH = 150


def panel(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb)
    scale = PANEL_HEIGHT / image.height
    return image.resize((round(image.width * scale), PANEL_HEIGHT), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--palette", default="#e0b030,#3060d0")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "palette-sem-real.jpg")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from semwatch.config import EngineConfig
    from semwatch.engine import Colorizer
    from semwatch.imaging import read_image
    from semwatch.palette import parse_palette

    colorizer = Colorizer.from_config(EngineConfig(device="cpu", batch_size=1))
    palette = parse_palette(args.palette)
    rows: list[list[Image.Image]] = [[], []]
    for name in FRAMES:
        decoded = read_image(args.data / name)
        plain, steered = colorizer.colorize([decoded, decoded], palettes=[None, palette])
        rows[0].append(panel(plain))
        rows[1].append(panel(steered))
    gap = 8
    width = LABEL_WIDTH + sum(p.width for p in rows[0]) + gap * (len(FRAMES) - 1)
    figure = Image.new("RGB", (width, 2 * PANEL_HEIGHT + gap), "white")
    draw = ImageDraw.Draw(figure)
    for r, (label, panels) in enumerate(zip(("no input", f"palette\n{args.palette}"), rows)):
        y = r * (PANEL_HEIGHT + gap)
        draw.multiline_text((8, y + PANEL_HEIGHT // 2 - 12), label.replace(",", "\n"), fill="black")
        x = LABEL_WIDTH
        for p in panels:
            figure.paste(p, (x, y))
            x += p.width + gap
    # JPEG: photograph-like panels at a fraction of a PNG's size in the repository.
    figure.save(args.out, quality=88, optimize=True)
    print(f"{args.out}: {figure.width}x{figure.height}")


if __name__ == "__main__":
    main()
