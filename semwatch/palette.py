"""Global palettes: "these colours", without saying where (Zhang et al. 2017's global hints).

A palette is up to :data:`PALETTE_COLOURS` sRGB colours with weights (how much of the
coloured frame each should take). Only their CIELAB a,b matter, as with point hints. A
palette-taking generator sees it as :data:`PALETTE_PLANES` constant input planes after the
image planes: for each colour (heaviest first) a/110, b/110 and its weight (the weights sum
to 1; absent colours are zero), then a presence flag (1 when a palette was given). The
generator reads them once, globally, and feeds them to its bottleneck
(:class:`semwatch.model.UNetGenerator`).

Training shows the truth's own dominant colours (:func:`dominant_colours`, k-means over the
chromatic pixels' a,b) for about half the items, so with no palette the model still
chooses; evaluation gives the truth's 3 dominant colours the same way.

Text form (``semwatch colorize --palette``, style files, the web UI):
``"#e0b030,#3060d0"`` (equal weights) or ``"#e0b030:0.7,#3060d0:0.3"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from semwatch.color import AB_SCALE, lab_to_rgb
from semwatch.hints import color_to_ab, normalise_color

PALETTE_COLOURS = 4
PALETTE_PLANES = 3 * PALETTE_COLOURS + 1
# Pixels whose chroma is at most this count as gray: they neither make a dominant colour
# nor take part in the hue-contrast figure (trainer.metrics).
MIN_CHROMA = 5.0
# A palette drawn from an image's own colours uses at most this many pixels (k-means cost).
_SAMPLE_PIXELS = 4096


class PaletteError(ValueError):
    """A palette that cannot be used; str() says which entry and why."""


@dataclass(frozen=True)
class PaletteColour:
    """One palette entry: the sRGB colour (as given or rendered at L=65), its a,b, weight."""

    color: str
    a: float
    b: float
    weight: float

    def as_record(self) -> dict[str, Any]:
        return {"color": self.color, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class Palette:
    """Up to PALETTE_COLOURS colours, heaviest first, weights summing to 1."""

    colours: tuple[PaletteColour, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.colours) <= PALETTE_COLOURS:
            raise PaletteError(f"a palette has 1 to {PALETTE_COLOURS} colours, got {len(self.colours)}")

    def as_record(self) -> list[dict[str, Any]]:
        """The provenance / style-file form."""
        return [c.as_record() for c in self.colours]

    def as_text(self) -> str:
        return ",".join(f"{c.color}:{c.weight:.3g}" for c in self.colours)


def make_palette(entries: Sequence[tuple[str | None, float, float, float]]) -> Palette:
    """A palette from (colour or None, a, b, weight) entries: weights normalised to sum 1,
    heaviest first; a missing colour name is rendered from a,b at L = 65."""
    kept = [(c, a, b, w) for c, a, b, w in entries if w > 0]
    if not kept:
        raise PaletteError("a palette needs at least one colour with a positive weight")
    total = sum(w for *_, w in kept)
    colours = [
        PaletteColour(c if c is not None else ab_to_hex(a, b), float(a), float(b), float(w) / total)
        for c, a, b, w in kept
    ]
    colours.sort(key=lambda c: -c.weight)
    return Palette(tuple(colours))


def parse_palette(text: str) -> Palette:
    """``"#e0b030,#3060d0"`` or ``"#e0b030:0.7,#3060d0:0.3"``; PaletteError says what is wrong."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise PaletteError("the palette is empty (expected colours like '#e0b030,#3060d0')")
    if len(items) > PALETTE_COLOURS:
        raise PaletteError(f"a palette has at most {PALETTE_COLOURS} colours, got {len(items)}")
    entries = []
    for item in items:
        colour, _, weight_text = item.partition(":")
        try:
            colour = normalise_color(colour)
        except ValueError as exc:
            raise PaletteError(str(exc)) from None
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise PaletteError(f"weight {weight_text!r} of {colour} is not a number") from None
        if not np.isfinite(weight) or weight <= 0:
            raise PaletteError(f"weight {weight_text!r} of {colour} must be a positive number")
        entries.append((colour, *color_to_ab(colour), weight))
    return make_palette(entries)


def palette_from_record(data: Any, source: str) -> Palette:
    """A palette from its record form (a list of {"color", "weight"}) or its text form."""
    if isinstance(data, str):
        return _named(parse_palette, data, source)
    if not isinstance(data, list):
        raise PaletteError(f"{source}: palette must be a list of {{'color', 'weight'}} or a string")
    parts = []
    for entry in data:
        if not isinstance(entry, dict) or "color" not in entry:
            raise PaletteError(f"{source}: palette entry {entry!r} needs a 'color'")
        weight = entry.get("weight", 1.0)
        parts.append(f"{entry['color']}:{weight}")
    return _named(parse_palette, ",".join(parts), source)


def _named(parse: Any, text: str, source: str) -> Palette:
    try:
        return parse(text)
    except PaletteError as exc:
        raise PaletteError(f"{source}: {exc}") from None


def palette_provenance(palette: Palette, origin: str) -> dict[str, Any]:
    """The provenance entry of a palette: its colours and where it came from. ``applied``
    is always true since the engine places every palette (semwatch.palette_fit); outputs of
    earlier versions say false where their model took no palette, so readers keep it."""
    return {"colors": palette.as_record(), "from": origin, "applied": True}


def ab_to_hex(a: float, b: float, lightness: float = 65.0) -> str:
    """The sRGB hex colour of (L, a, b), clipped into the gamut."""
    lab = torch.tensor([lightness, a, b], dtype=torch.float32).view(1, 3, 1, 1)
    rgb = lab_to_rgb(lab)[0, :, 0, 0].clamp(0.0, 1.0)
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in rgb)


def dominant_colours(
    ab: np.ndarray | torch.Tensor, count: int, *, seed: int = 0, min_chroma: float = MIN_CHROMA
) -> Palette | None:
    """The ``count`` dominant a,b clusters of an image's chromatic pixels (k-means), each
    weighted by its share of them; None when (almost) nothing is coloured.

    ``ab``: (2, H, W) in Lab units. Deterministic for a given ``seed``.
    """
    values = ab.detach().cpu().numpy() if isinstance(ab, torch.Tensor) else np.asarray(ab)
    pixels = values.reshape(2, -1).T.astype(np.float64)
    pixels = pixels[np.hypot(pixels[:, 0], pixels[:, 1]) > min_chroma]
    if len(pixels) < max(count, 16):
        return None
    rng = np.random.default_rng(seed)
    if len(pixels) > _SAMPLE_PIXELS:
        pixels = pixels[rng.choice(len(pixels), _SAMPLE_PIXELS, replace=False)]
    count = max(1, min(count, PALETTE_COLOURS))
    centres, labels = kmeans2(pixels, count, minit="++", seed=rng)
    shares = np.bincount(labels, minlength=count) / len(labels)
    entries = [(None, float(c[0]), float(c[1]), float(s)) for c, s in zip(centres, shares) if s > 0]
    return make_palette(entries)


# Hints whose a,b lie within this many Lab units are one palette colour (the same colour
# clicked on several objects, or a truth's shades of one hue).
_SAME_COLOUR = 12.0


def palette_from_hints(hints: Sequence[Any], areas: Sequence[float]) -> Palette | None:
    """The palette of a person's hints: their colours, each weighted by the area of the
    objects it was clicked on (``areas``, one per hint, any unit), near colours merged and the
    PALETTE_COLOURS heaviest kept. ``hints`` need ``a``, ``b`` and ``color``. None: no hint
    with a positive area."""
    groups: list[list[float]] = []  # [sum of a * area, sum of b * area, sum of area]
    names: list[str] = []
    for hint, area in sorted(zip(hints, areas), key=lambda pair: -pair[1]):
        if area <= 0:
            continue
        for group in groups:
            if np.hypot(group[0] / group[2] - hint.a, group[1] / group[2] - hint.b) <= _SAME_COLOUR:
                group[0] += hint.a * area
                group[1] += hint.b * area
                group[2] += area
                break
        else:
            groups.append([hint.a * area, hint.b * area, area])
            names.append(hint.color)
    if not groups:
        return None
    ranked = sorted(zip(groups, names), key=lambda pair: -pair[0][2])[:PALETTE_COLOURS]
    # The heaviest hint's colour names a group whose a,b is the area-weighted mean: the name
    # is what a person recognises, the mean what the network is given.
    return make_palette([(name, g[0] / g[2], g[1] / g[2], g[2]) for g, name in ranked])


# A person's hints are also the frame's palette once they name at least this many colours.
# One colour as a palette would paint every object in it, where a single hint should colour
# only its own object and the objects like it.
HINT_PALETTE_MIN_COLOURS = 2


def palette_of_hints(hints: Sequence[Any], areas: Sequence[float] | None = None) -> Palette | None:
    """The colours a person's hints ask for, as the frame's palette: one share per hint, or
    the ``areas`` of the objects they were clicked on (a style's, which knows them; near
    colours merged, :func:`palette_from_hints`). None when they name fewer than
    :data:`HINT_PALETTE_MIN_COLOURS` colours.

    Hints say "this object is this colour"; the objects no hint reaches then take the
    person's colours too, grouped by what they look like (:mod:`semwatch.palette_fit`),
    instead of the model's own guess. Measured on the val split with 10 simulated hints:
    0.578x -> 0.531x a gray image's ab error."""
    palette = palette_from_hints(hints, [1.0] * len(hints) if areas is None else areas)
    if palette is None or len(palette.colours) < HINT_PALETTE_MIN_COLOURS:
        return None
    return palette


def palette_vector(palette: Palette | None, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(PALETTE_PLANES,) the network's palette values; all zero without a palette."""
    vector = torch.zeros(PALETTE_PLANES, device=device)
    if palette is None:
        return vector
    for i, colour in enumerate(palette.colours):
        vector[3 * i] = colour.a / AB_SCALE
        vector[3 * i + 1] = colour.b / AB_SCALE
        vector[3 * i + 2] = colour.weight
    vector[-1] = 1.0
    return vector


def palette_planes(
    palette: Palette | None, height: int, width: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(PALETTE_PLANES, height, width): :func:`palette_vector` as constant planes."""
    return palette_vector(palette, device=device)[:, None, None].expand(-1, height, width).contiguous()
