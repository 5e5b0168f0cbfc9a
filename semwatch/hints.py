"""Colour hints: a person's "this point should be this colour" (Zhang et al. 2017).

A hint is a point (x, y) in pixels of the input image (origin top-left) and an sRGB
colour; only the colour's CIELAB a,b is used — the image's own gray stays the lightness.
The generator sees hints as three extra input planes at its down-scaled resolution: hint
a/110, hint b/110 (zero elsewhere) and a mask that is 1 where a hint was given. Training
(trainer.hints) builds the same planes from the truth, so both sides share
:func:`hint_planes`.

Hint files (``semwatch colorize --hints FILE``) are JSON:
``{"hints": [{"x": 120, "y": 340, "color": "#e0b030"}, ...]}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from semwatch.color import AB_SCALE, rgb_to_lab

# Side of the square a hint fills in the network's input, in down-scaled pixels. Training
# reveals patches of 1..HINT_PATCH_MAX pixels; the product uses the middle of that range.
HINT_PATCH = 3
HINT_PATCH_MAX = 5
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


class HintError(ValueError):
    """A hint file or entry that cannot be used; str() names the file and the entry."""


@dataclass(frozen=True)
class Hint:
    """One colour hint: position in input-image pixels and the wanted CIELAB a,b."""

    x: float
    y: float
    a: float
    b: float
    color: str  # the sRGB colour as given ("#rrggbb"), recorded in the provenance

    @classmethod
    def from_color(cls, x: float, y: float, color: str) -> Hint:
        a, b = color_to_ab(color)
        return cls(float(x), float(y), a, b, normalise_color(color))

    def as_record(self) -> dict[str, Any]:
        """The provenance form: position and colour as the user gave them."""
        return {"x": _plain_number(self.x), "y": _plain_number(self.y), "color": self.color}


def normalise_color(color: str) -> str:
    match = _HEX.match(color.strip()) if isinstance(color, str) else None
    if not match:
        raise ValueError(f"colour {color!r} is not an sRGB hex colour like '#e0b030'")
    return "#" + match.group(1).lower()


def color_to_ab(color: str) -> tuple[float, float]:
    """CIELAB (a, b) of an sRGB hex colour."""
    hex_digits = normalise_color(color)[1:]
    rgb = torch.tensor([int(hex_digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]).view(1, 3, 1, 1)
    lab = rgb_to_lab(rgb)[0, :, 0, 0]
    return float(lab[1]), float(lab[2])


def parse_hints(data: Any, source: str) -> list[Hint]:
    """Hints from the decoded JSON of a hint file; HintError names ``source`` and the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("hints"), list):
        raise HintError(f'{source}: expected a JSON object {{"hints": [{{"x", "y", "color"}}, ...]}}')
    hints = []
    for index, entry in enumerate(data["hints"]):
        where = f"{source}: hints[{index}]"
        if not isinstance(entry, dict):
            raise HintError(f"{where}: expected an object with x, y and color")
        missing = [k for k in ("x", "y", "color") if k not in entry]
        if missing:
            raise HintError(f"{where}: missing {', '.join(missing)}")
        x, y = entry["x"], entry["y"]
        for name, value in (("x", x), ("y", y)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HintError(f"{where}: {name} must be a number of pixels, got {value!r}")
            if value < 0:
                raise HintError(f"{where}: {name} = {value} is negative (origin is the top-left pixel)")
        try:
            hints.append(Hint.from_color(x, y, entry["color"]))
        except ValueError as exc:
            raise HintError(f"{where}: {exc}") from None
    return hints


def load_hints(path: Path) -> list[Hint]:
    """Read a hint file; HintError with a one-line reason naming the file (and entry)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HintError(f"{path}: cannot read hint file ({exc.__class__.__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HintError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_hints(data, str(path))


def check_hints_fit(hints: Sequence[Hint], height: int, width: int, source: str) -> None:
    """HintError for a hint outside the image (``height`` x ``width`` pixels)."""
    for index, hint in enumerate(hints):
        if hint.x >= width or hint.y >= height:
            raise HintError(
                f"{source}: hints[{index}] at ({_plain_number(hint.x)}, {_plain_number(hint.y)}) "
                f"is outside the {width}x{height} image"
            )


class HintPoint(NamedTuple):
    """A hint at the network's resolution: centre pixel, Lab a,b, side of its square."""

    row: int
    col: int
    a: float
    b: float
    patch: int = HINT_PATCH


def hint_planes(
    points: Sequence[HintPoint], height: int, width: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(3, height, width): hint a/110, hint b/110, mask.

    Each point fills a ``patch`` x ``patch`` square centred on it (clipped at the borders);
    where squares overlap, the later point wins.
    """
    planes = torch.zeros((3, height, width), device=device)
    for row, col, a, b, patch in points:
        half = patch // 2
        r0, r1 = max(0, row - half), min(height, row - half + patch)
        c0, c1 = max(0, col - half), min(width, col - half + patch)
        if r0 >= r1 or c0 >= c1:
            continue
        planes[0, r0:r1, c0:c1] = a / AB_SCALE
        planes[1, r0:r1, c0:c1] = b / AB_SCALE
        planes[2, r0:r1, c0:c1] = 1.0
    return planes


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)
