"""Style files: a person's chosen colours, carried to every image of a series.

A style is made from hints on one reference image: for each hint, the colour and a
prototype of the object it fell on (:mod:`semwatch.prototypes`: the generator's encoder
features pooled over the object's region). Applied to a new image, each region that
matches a prototype takes its colour through the hint machinery (network hint planes and
region fill); regions that match nothing keep the automatic colour, or take the style's
palette when it has one (by default: the hints' colours, when they are two or more).

The file is versioned JSON (README, "Styles")::

    {"format": "semwatch-style", "version": 1, "name": "pollen", "created": "...",
     "model": {"name", "sha256"},
     "features": {"kind": "encoder-pooled/1", "parts": [64, 128, 256, 3], "centre": [...]},
     "source": {"name", "sha256", "shape": [h, w]},
     "hints": [{"x", "y", "color"}, ...],
     "colors": [{"color": "#e0b030", "prototypes": [{"hint": 0, "vector": [...]}, ...]}, ...],
     "palette": [{"color": "#e0b030", "weight": 0.7}, ...]}

``palette`` (version 2; optional) is a global palette (:mod:`semwatch.palette`): colours
without positions that the engine places on the whole frame (any model), unless the image
is given its own palette. A style without one is written as version 1, which every semwatch
that reads styles understands; one with a palette is version 2, so an older semwatch
says "upgrade" instead of misreading it.

A prototype's vector is the raw mean descriptor of its object (encoder depths and gray
statistics joined, ``parts`` their sizes); ``centre`` is the reference frame's mean, the
origin every later frame is measured from (:func:`semwatch.prototypes.embed`).

Prototypes are only meaningful with the model that described them: a style made with
another model is refused; it keeps its hints and its source's SHA-256, so it can be
re-derived from the same source image (``semwatch style make IMAGE --from STYLE``).
Loading is strict: anything unexpected is a :class:`StyleError` whose text names the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from semwatch.errors import one_line
from semwatch.fsutil import atomic_path
from semwatch.gray import GrayLike
from semwatch.hints import Hint, HintError, HintPoint, parse_hints
from semwatch.palette import Palette, PaletteError, palette_from_record, palette_of_hints
from semwatch.paths import rel_inside
from semwatch.prototypes import ENCODER_FEATURES, GRAY_FEATURES, Prototype, RegionDescription, embed


class DescribesRegions(Protocol):
    """What making a style needs of the engine (semwatch.engine.Colorizer): the regions of
    an image as it sees them, and the model they were described with."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_sha256(self) -> str: ...

    def describe_hinted(
        self, image: GrayLike, hints: Sequence[Hint], *, features: str = ...
    ) -> tuple[RegionDescription, list[HintPoint | None]]: ...


FORMAT_NAME = "semwatch-style"
FORMAT_VERSION = 2
# The version that added the optional "palette" key; a style without one is still written as 1.
PALETTE_VERSION = 2
# The file a watch folder's style lives in (the nearest one up the tree applies).
STYLE_FILENAME = "semwatch-style.json"
# Style files are small (a few prototypes of a few hundred numbers); a larger one is a mistake.
MAX_STYLE_BYTES = 4 * 1024 * 1024
_TOP_KEYS = {"format", "version", "name", "created", "model", "features", "source", "hints", "colors"}
_OPTIONAL_KEYS = {"palette"}
_KINDS = (ENCODER_FEATURES, GRAY_FEATURES)
# A JSON list of plain numbers as json.dumps(indent=1) spreads it, one per line.
_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.eE+-]*,?\s*)+)\]")


class StyleError(ValueError):
    """A style file that cannot be used; str() is one line naming the file and the reason."""


@dataclass(frozen=True)
class StylePrototype:
    """One hinted object: the hint it came from (index into the style's hints) and its
    descriptor. Its colour is the hint's."""

    hint: int
    vector: tuple[float, ...]


@dataclass(frozen=True)
class Style:
    name: str
    created: str
    model_name: str
    model_sha256: str
    features: str  # which descriptor made the vectors (semwatch.prototypes)
    parts: tuple[int, ...]  # sizes of the joined parts of each vector
    centre: tuple[float, ...]  # the reference frame's mean descriptor
    source_name: str
    source_sha256: str
    source_shape: tuple[int, int]
    hints: tuple[Hint, ...]
    prototypes: tuple[StylePrototype, ...]
    # Colours without positions for the whole frame (semwatch.palette); None: no palette.
    palette: Palette | None = None
    # Where it was read from and the SHA-256 of those bytes (provenance); "" when made here.
    path: str = field(default="", compare=False)
    sha256: str = field(default="", compare=False)

    @property
    def record(self) -> dict[str, str]:
        """What an output's provenance says about the style."""
        return {"name": self.name, "sha256": self.sha256}

    @functools.cached_property
    def centre_tensor(self) -> torch.Tensor:
        return torch.tensor(self.centre, dtype=torch.float32)

    @functools.cached_property
    def engine_prototypes(self) -> list[Prototype]:
        """The prototypes as the engine matches them (CPU tensors; moved where needed)."""
        return [
            Prototype(
                embed(
                    torch.tensor(p.vector, dtype=torch.float32), self.centre_tensor, self.parts, self.features
                ),
                self.hints[p.hint].a,
                self.hints[p.hint].b,
                self.hints[p.hint].color,
            )
            for p in self.prototypes
        ]

    def colors(self) -> list[str]:
        """The style's colours, in the order of their first hint."""
        return list(dict.fromkeys(self.hints[p.hint].color for p in self.prototypes))

    def to_json(self) -> dict[str, Any]:
        colors = []
        for color in self.colors():
            protos = [p for p in self.prototypes if self.hints[p.hint].color == color]
            colors.append(
                {
                    "color": color,
                    "prototypes": [{"hint": p.hint, "vector": _rounded(p.vector)} for p in protos],
                }
            )
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": PALETTE_VERSION if self.palette is not None else 1,
            "name": self.name,
            "created": self.created,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "features": {"kind": self.features, "parts": list(self.parts), "centre": _rounded(self.centre)},
            "source": {
                "name": self.source_name,
                "sha256": self.source_sha256,
                "shape": list(self.source_shape),
            },
            "hints": [h.as_record() for h in self.hints],
            "colors": colors,
        }
        if self.palette is not None:
            data["palette"] = self.palette.as_record()
        return data

    def dumps(self) -> str:
        """Indented JSON with each list of numbers on one line (readable, diffable)."""
        text = json.dumps(self.to_json(), indent=1)
        return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"

    def check_model(self, model_sha256: str, model_name: str = "") -> None:
        """StyleError unless the prototypes were described by this model."""
        if self.model_sha256 != model_sha256:
            running = f"{model_name} ({model_sha256[:12]})" if model_name else model_sha256[:12]
            raise StyleError(
                f"{self.path or self.name}: style made with model {self.model_name} "
                f"({self.model_sha256[:12]}), the engine runs {running}; re-derive it from its "
                f"source image: semwatch style make {self.source_name} --from {self.path or 'STYLE.json'}"
            )


# --------------------------------------------------------------------------- reading


def parse_style(data: Any, source: str, *, sha256: str = "") -> Style:
    """A Style from the decoded JSON of a style file; StyleError names ``source``."""

    def fail(reason: str) -> StyleError:
        return StyleError(f"{source}: {reason}")

    if not isinstance(data, dict):
        raise fail("expected a JSON object (a semwatch style file)")
    if data.get("format") != FORMAT_NAME:
        raise fail(f"not a semwatch style file (format {data.get('format')!r}, expected {FORMAT_NAME!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise fail(
            f"style version {version!r} is not supported (supports 1..{FORMAT_VERSION}); upgrade semwatch"
        )
    unknown = sorted(set(data) - _TOP_KEYS - (_OPTIONAL_KEYS if version >= PALETTE_VERSION else set()))
    missing = sorted(_TOP_KEYS - set(data))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}")
    if missing:
        raise fail(f"missing key(s) {', '.join(missing)}")
    name = _text(data["name"], "name", fail)
    created = _text(data["created"], "created", fail)
    model = _object(data["model"], "model", ("name", "sha256"), fail)
    model_sha = _sha(model["sha256"], "model.sha256", fail)
    described = _object(data["features"], "features", ("kind", "parts", "centre"), fail)
    features = described["kind"]
    if features not in _KINDS:
        raise fail(f"features.kind {features!r} is not known to this semwatch ({', '.join(_KINDS)})")
    parts = described["parts"]
    if not (isinstance(parts, list) and parts and all(_positive_int(v) for v in parts)):
        raise fail(f"features.parts must be a list of positive sizes, got {parts!r}")
    centre = _numbers(described["centre"], "features.centre", fail)
    if len(centre) != sum(parts):
        raise fail(f"features.centre has {len(centre)} numbers, its parts {sum(parts)}")
    src = _object(data["source"], "source", ("name", "sha256", "shape"), fail)
    shape = src["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(_positive_int(v) for v in shape)):
        raise fail(f"source.shape must be [height, width] in pixels, got {shape!r}")
    try:
        hints = tuple(parse_hints({"hints": data["hints"]}, source))
    except HintError as exc:
        raise StyleError(str(exc)) from None
    if not isinstance(data["colors"], list) or not data["colors"]:
        raise fail("colors must be a non-empty list of {color, prototypes}")
    prototypes: list[StylePrototype] = []
    for i, entry in enumerate(data["colors"]):
        where = f"colors[{i}]"
        entry = _object(entry, where, ("color", "prototypes"), fail)
        if not isinstance(entry["prototypes"], list) or not entry["prototypes"]:
            raise fail(f"{where}.prototypes must be a non-empty list")
        for j, proto in enumerate(entry["prototypes"]):
            at = f"{where}.prototypes[{j}]"
            proto = _object(proto, at, ("hint", "vector"), fail)
            index = proto["hint"]
            if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(hints)):
                raise fail(f"{at}.hint must be the index of one of the {len(hints)} hints, got {index!r}")
            if hints[index].color != str(entry["color"]).lower():
                raise fail(f"{at}: hint {index} is {hints[index].color}, not this colour {entry['color']!r}")
            vector = _numbers(proto["vector"], f"{at}.vector", fail)
            if len(vector) != len(centre):
                raise fail(f"{at}.vector has {len(vector)} numbers, features.centre {len(centre)}")
            prototypes.append(StylePrototype(index, vector))
    palette = None
    if "palette" in data:
        try:
            palette = palette_from_record(data["palette"], f"{source}: palette")
        except PaletteError as exc:
            raise StyleError(str(exc)) from None
    return Style(
        name=name,
        created=created,
        model_name=_text(model["name"], "model.name", fail),
        model_sha256=model_sha,
        features=features,
        parts=tuple(parts),
        centre=centre,
        source_name=_text(src["name"], "source.name", fail),
        source_sha256=_sha(src["sha256"], "source.sha256", fail),
        source_shape=(int(shape[0]), int(shape[1])),
        hints=hints,
        prototypes=tuple(prototypes),
        palette=palette,
        path=source,
        sha256=sha256,
    )


def load_style(path: Path) -> Style:
    """Read a style file; StyleError with a one-line reason naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STYLE_BYTES + 1)
    except OSError as exc:
        raise StyleError(f"{path}: cannot read style file ({one_line(exc)})") from None
    return parse_style_bytes(raw, str(path))


def parse_style_bytes(raw: bytes, label: str) -> Style:
    """A style from a file's bytes (read from disk or uploaded), ``label`` naming it in the
    one-line StyleError; its SHA-256 is that of these bytes."""
    if len(raw) > MAX_STYLE_BYTES:
        raise StyleError(f"{label}: style file larger than {MAX_STYLE_BYTES // (1024 * 1024)} MB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StyleError(f"{label}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise StyleError(f"{label}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_style(data, label, sha256=hashlib.sha256(raw).hexdigest())


def save_style(style: Style, path: Path) -> Style:
    """Write atomically; returns the style as read back from there (path and SHA-256 set)."""
    path = Path(path)
    data = style.dumps().encode("utf-8")
    with atomic_path(path, ".json") as tmp:
        tmp.write_bytes(data)
    # What a reader of the file gets (numbers rounded as written), not the unrounded original.
    return parse_style(json.loads(data), str(path), sha256=hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------- making


def make_style(
    colorizer: DescribesRegions,
    image: GrayLike,
    hints: Sequence[Hint],
    *,
    name: str,
    source_name: str,
    source_sha256: str,
    features: str = ENCODER_FEATURES,
    palette: Palette | None = None,
    hint_palette: bool = True,
) -> Style:
    """A style from ``hints`` on ``image``: one prototype per hint, the descriptor of the
    region it falls in. Hints in the data bar are left out (the engine ignores them too).
    ``palette``: stored as given. Without one (and unless ``hint_palette`` is False), the
    style carries the hints' own colours as its palette when they are two or more, each
    weighted by the area of the region it was clicked on
    (:func:`semwatch.palette.palette_of_hints`): the person's colours, so a new frame's
    unmatched regions take the series' colours too. Never the model's own guess on the
    reference: that is not the person's choice."""
    if not hints:
        raise StyleError(f"{source_name}: a style needs at least one hint")
    description, points = colorizer.describe_hinted(image, hints, features=features)
    prototypes = []
    kept = []
    regions = []
    for hint, point in zip(hints, points):
        if point is None:
            continue
        region = int(description.labels[point.row, point.col])
        kept.append(hint)
        regions.append(region)
        prototypes.append(StylePrototype(len(kept) - 1, tuple(description.raw[region].tolist())))
    if not prototypes:
        raise StyleError(f"{source_name}: every hint is in the data bar; nothing to make a style of")
    if palette is None and hint_palette:
        areas = torch.bincount(description.labels.flatten(), minlength=len(description.raw))
        palette = palette_of_hints(kept, [float(areas[region]) for region in regions])
    return Style(
        name=name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_name=colorizer.model_name,
        model_sha256=colorizer.model_sha256,
        features=features,
        parts=description.parts,
        centre=tuple(description.centre.tolist()),
        source_name=source_name,
        source_sha256=source_sha256,
        source_shape=(int(image.gray.shape[0]), int(image.gray.shape[1])),
        hints=tuple(kept),
        prototypes=tuple(prototypes),
        palette=palette,
    )


# --------------------------------------------------------------------------- helpers


def _text(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{key} must be a non-empty string")
    return value


def _sha(value: Any, key: str, fail) -> str:
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        raise fail(f"{key} must be a SHA-256 in hex (64 lower-case digits)")
    return value


def _object(value: Any, key: str, keys: Sequence[str], fail) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{key} must be an object with {', '.join(keys)}")
    missing = [k for k in keys if k not in value]
    unknown = sorted(set(value) - set(keys))
    if missing:
        raise fail(f"{key}: missing {', '.join(missing)}")
    if unknown:
        raise fail(f"{key}: unknown key(s) {', '.join(unknown)}")
    return value


def _numbers(value: Any, key: str, fail) -> tuple[float, ...]:
    if not (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise fail(f"{key} must be a non-empty list of finite numbers")
    return tuple(float(v) for v in value)


def _rounded(values: Sequence[float]) -> list[float]:
    # Five significant digits: far below what tells two objects apart, a third of the size.
    return [float(f"{v:.5g}") for v in values]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------- watch folders


class StyleFinder:
    """Which style applies to a source file under a watch folder: the nearest
    ``semwatch-style.json`` from the file's folder up to the watch root, else the
    service's default (``[engine] style``), else none.

    Read when each job runs (a style edited mid-run applies to the next image); a file is
    parsed again only when its size, mtime or inode changed. A style file that is a
    symlink leading out of the watch root is refused, like any broken one: StyleError
    naming the file, which fails the jobs under it and nothing else.
    """

    def __init__(self, root: Path, default: Path | None = None) -> None:
        self.root = Path(root)
        self.default = Path(default) if default is not None else None
        self._cache: dict[str, tuple[tuple[int, int, int], Style]] = {}

    def path_for(self, source: Path) -> Path | None:
        """The style file that applies to ``source`` (a path under the root), or None."""
        root = os.path.abspath(self.root)
        folder = os.path.dirname(os.path.abspath(source))
        if rel_inside(root, folder) is None:
            raise StyleError(f"{source}: not inside the watch folder {self.root}")
        while True:
            candidate = os.path.join(folder, STYLE_FILENAME)
            if os.path.lexists(candidate):
                real_root = os.path.realpath(root)
                if rel_inside(real_root, os.path.realpath(candidate)) is None:
                    raise StyleError(f"{candidate}: style file leads outside the watch folder {self.root}")
                return Path(candidate)
            if folder == root:
                return self.default
            folder = os.path.dirname(folder)

    def style_for(self, source: Path) -> Style | None:
        """The style that applies to ``source``, read now (cached while unchanged)."""
        path = self.path_for(source)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StyleError(f"{path}: cannot read style file ({one_line(exc)})") from None
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._cache.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        style = load_style(path)
        self._cache[str(path)] = (key, style)
        return style


def palette_for(
    explicit: Palette | None, style: Style | None, hints: Sequence[Hint] = ()
) -> tuple[Palette | None, str | None]:
    """The palette an image is colorized with and where it came from ("given", "style" or
    "hints"): a palette given for the image (the --palette option, the web UI's field) wins
    over its style's, so a person can override a series' colours for one run; without
    either, the image's own hints are its palette when they name two colours or more
    (:func:`semwatch.palette.palette_of_hints`). The engine and the provenance record both ask
    here, so what is recorded is what was used."""
    if explicit is not None:
        return explicit, "given"
    if style is not None and style.palette is not None:
        return style.palette, "style"
    from_hints = palette_of_hints(hints)
    if from_hints is not None:
        return from_hints, "hints"
    return None, None
