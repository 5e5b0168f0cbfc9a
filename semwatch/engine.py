"""Batched colorization: gray images in, full-resolution RGB out.

Fixed cost in, full resolution out (DESIGN.md): each image (data bar cropped off) is
down-scaled so its long side is ``chroma_size``, padded to one of a few canvas shapes so
that batches have static shapes, and run through the generator in batches. The predicted
ab is up-sampled to the image's full size and joined with the ORIGINAL gray levels through
the gamut-safe chroma table, so the output's L is the input's, exactly. Data-bar rows come
out gray. Between prediction and up-sampling, two optional refinements: hue made coherent
at object scale (:mod:`semwatch.coherence`, ``hue_scale``) and a lightness-guided filter
that puts colour edges on gray edges (:mod:`semwatch.guided`, ``guide_radius``).

The network call sits behind :class:`Backend` (:mod:`semwatch.backends`: eager PyTorch in
fp32/bf16/fp16, or TensorRT), so they are interchangeable; everything around it runs on the
backend's device in float32, and the full-resolution step is :mod:`semwatch.fullres`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from semwatch.backend_choice import make_backend
from semwatch.backends import (  # noqa: F401 - EngineError, resolve_device: the engine's API
    Backend,
    ChannelsLastSetting,
    EagerBackend,
    EngineError,
    resolve_device,
)
from semwatch.coherence import HueCoherence
from semwatch.color import AB_SCALE, ChromaLUT, gray_levels_to_l, l_to_input
from semwatch.fullres import FullResolution
from semwatch.gray import GrayLike
from semwatch.guided import GuidedFilter
from semwatch.hints import Hint, HintPoint, hint_planes
from semwatch.log import get_logger
from semwatch.model import STRIDE, LoadedGenerator, load_generator
from semwatch.model_file import model_file
from semwatch.palette import Palette, palette_planes
from semwatch.palette_fit import fit_palette
from semwatch.prototypes import (
    ENCODER_FEATURES,
    MAX_STYLE_POINTS,
    Prototype,
    RegionDescription,
    describe,
    match,
    match_threshold,
    matched_points,
)
from semwatch.regions import HINT_PULL, RegionSettings, apply_dominant_hue, segment, spread_hints
from semwatch.styles import palette_for
from semwatch.transfer import synchronize, to_device, to_host

if TYPE_CHECKING:
    from semwatch.config import EngineConfig
    from semwatch.styles import Style

log = get_logger(__name__)

# Canvas sides are multiples of chroma_size / CANVAS_STEPS (rounded up to the stride):
# at most CANVAS_STEPS**2 distinct batch shapes, at most ~25% padding on the short side.
CANVAS_STEPS = 4


HintsPerImage = Sequence[Sequence[Hint]] | None
StylesPerImage = Sequence["Style | None"] | None
PalettesPerImage = Sequence["Palette | None"] | None


@dataclass(frozen=True)
class GrayImage:
    """A decoded gray image: uint8 (H, W), and where its data bar starts (or None)."""

    gray: np.ndarray
    databar_row: int | None = None


@dataclass(frozen=True)
class Prediction:
    """The network's answer for one image, at its down-scaled size."""

    ab: torch.Tensor  # (2, h, w) in Lab units
    guide: torch.Tensor  # (h, w) lightness / 100 of the same down-scaled image


@dataclass(frozen=True)
class Guidance:
    """What steers one image's colour, at the network's down-scaled size."""

    network: list[HintPoint]  # into the hint planes (style matches first, the person's last)
    fill: list[HintPoint]  # regions holding these take their colour
    labels: torch.Tensor | None  # the regions, when matching found them already
    pull: float = 0.0  # share of the way other regions move to the nearest hint (--spread)


@dataclass(frozen=True)
class Plan:
    """How one image goes through the network."""

    height: int  # rows that are colorized (above the data bar)
    width: int
    small: tuple[int, int]  # the down-scaled size fed to the network
    canvas: tuple[int, int]  # the padded batch shape


def plan_image(height: int, width: int, chroma_size: int) -> Plan:
    """Down-scale so the long side is ``chroma_size`` (never up), pick the canvas bucket."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image region {height}x{width}")
    scale = min(1.0, chroma_size / max(height, width))
    small_h = max(1, round(height * scale))
    small_w = max(1, round(width * scale))
    unit = chroma_size / CANVAS_STEPS

    def bucket(side: int) -> int:
        steps = max(1, math.ceil(side / unit - 1e-9))
        return math.ceil(steps * unit / STRIDE) * STRIDE

    return Plan(height, width, (small_h, small_w), (bucket(small_h), bucket(small_w)))


def canvas_shapes(chroma_size: int) -> list[tuple[int, int]]:
    """Every batch shape :func:`plan_image` can choose at ``chroma_size`` (what a
    compile-ahead backend builds engines for)."""
    unit = chroma_size / CANVAS_STEPS
    sides = sorted({math.ceil(k * unit / STRIDE) * STRIDE for k in range(1, CANVAS_STEPS + 1)})
    return [(h, w) for h in sides for w in sides]


def _gray_float_to_l(gray: torch.Tensor) -> torch.Tensor:
    """sRGB gray in [0, 1] -> CIE L (the L of (g, g, g))."""
    linear = torch.where(gray <= 0.04045, gray / 12.92, ((gray + 0.055) / 1.055) ** 2.4)
    f = torch.where(
        linear > 216 / 24389, linear.clamp(min=1e-12) ** (1 / 3), (24389 / 27 * linear + 16) / 116
    )
    return 116 * f - 16


@dataclass(frozen=True)
class Refinement:
    """The colour post-processing between prediction and up-sampling (all off by default;
    the service's defaults are in ``[engine]``). Recorded in each output's provenance."""

    hue_scale: float = 0.0  # semwatch.coherence; 0 = off
    guide_radius: int = 0  # semwatch.guided; 0 = off
    guide_eps: float = 0.01
    region_hue: float = 0.0  # semwatch.regions: dominant hue per region; 0 = off
    region_size: int = 192  # long side at which the regions are found
    region_scale: float = 150.0  # Felzenszwalb scale (larger: larger regions)
    chroma_gain: float = 1.0  # predicted chroma x this (calibration), before the hints

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> Refinement:
        return cls(
            cfg.hue_scale,
            cfg.guide_radius,
            cfg.guide_eps,
            cfg.region_hue,
            cfg.region_size,
            cfg.region_scale,
            cfg.chroma_gain,
        )

    @property
    def regions(self) -> RegionSettings:
        return RegionSettings(self.region_hue, self.region_size, self.region_scale)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EngineInfo:
    """What an output's provenance says about the engine that made it. One per Colorizer,
    taken with the images it colorized: a reload while their writes are pending cannot
    mislabel them."""

    model_name: str
    model_sha256: str
    backend: str
    device: str
    precision: str
    chroma_size: int
    refinement: Mapping[str, float]

    def as_record(self) -> dict[str, Any]:
        """The engine's part of an output's provenance: the keyword arguments of
        :func:`semwatch.imaging.build_provenance` (one list of fields, not unpacked by hand)."""
        return dataclasses.asdict(self)

    def log_fields(self) -> dict[str, Any]:
        """How a log line names the engine in use ("model loaded", "model reloaded": the
        daemon, `semwatch colorize` and the web UI say it alike)."""
        return {
            "model": self.model_name,
            "sha256": self.model_sha256,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "chroma_size": self.chroma_size,
        }


class Colorizer:
    """Colorizes decoded gray images with one generator on one device."""

    def __init__(
        self,
        generator: LoadedGenerator,
        *,
        device: str | torch.device = "cpu",
        backend: str = "eager",
        chroma_size: int = 512,
        batch_size: int = 4,
        refinement: Refinement = Refinement(),
        precision: str = "auto",
        channels_last: ChannelsLastSetting = "auto",
        cache_dir: Path | None = None,
    ):
        if chroma_size % STRIDE or chroma_size < STRIDE:
            raise EngineError(f"chroma_size must be a positive multiple of {STRIDE}, got {chroma_size}")
        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        self.device_obj = resolve_device(device)
        self.backend = make_backend(
            backend,
            generator,
            self.device_obj,
            precision=precision,
            channels_last=channels_last,
            cache_dir=cache_dir,
        )
        self.generator = generator
        self.chroma_size = chroma_size
        self.batch_size = batch_size
        self.lut = ChromaLUT(self.device_obj)
        self.refinement = refinement
        self.coherence = HueCoherence(refinement.hue_scale)
        self.smoothing = GuidedFilter(refinement.guide_radius, refinement.guide_eps)
        self._l_table = (gray_levels_to_l() / 100).to(torch.float32).to(self.device_obj)
        self.fullres = FullResolution(self.lut, self._l_table)
        self.backend.prepare(self.canvas_shapes(), batch_size)

    @classmethod
    def from_file(
        cls,
        path: Path | None,
        *,
        device: str = "auto",
        backend: str = "auto",
        chroma_size: int = 512,
        batch_size: int = 4,
        refinement: Refinement = Refinement(),
        precision: str = "auto",
        channels_last: ChannelsLastSetting = "auto",
        cache_dir: Path | None = None,
    ) -> Colorizer:
        """Load a generator file (``None``: the bundled default) and build a Colorizer."""
        model_path = model_file(Path(path) if path is not None else None)
        dev = resolve_device(device)
        generator = load_generator(model_path, device=dev)
        return cls(
            generator,
            device=dev,
            backend=backend,
            chroma_size=chroma_size,
            batch_size=batch_size,
            refinement=refinement,
            precision=precision,
            channels_last=channels_last,
            cache_dir=cache_dir,
        )

    @classmethod
    def from_config(cls, cfg: EngineConfig, *, generator: LoadedGenerator | None = None) -> Colorizer:
        """The engine ``[engine]`` describes: the one factory from config (the daemon, the
        CLIs, the web UI, the trainer's evaluation). ``generator``: one already loaded (a
        training checkpoint) in place of engine.model's file."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        settings = {
            "device": cfg.device,
            "backend": cfg.backend,
            "chroma_size": cfg.chroma_size,
            "batch_size": cfg.batch_size,
            "refinement": Refinement.from_config(cfg),
            "precision": cfg.precision,
            "channels_last": cfg.channels_last,
            "cache_dir": cfg.cache_dir,
        }
        if generator is not None:
            return cls(generator, **settings)
        return cls.from_file(cfg.model, **settings)

    @property
    def model_name(self) -> str:
        return self.generator.name

    @property
    def model_sha256(self) -> str:
        return self.generator.sha256

    @property
    def model_path(self) -> Path:
        return self.generator.path

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return str(self.device_obj)

    @property
    def precision(self) -> str:
        """The network's numbers: fp32, bf16 or fp16 (``auto`` resolved)."""
        return self.backend.precision

    @functools.cached_property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model_name=self.model_name,
            model_sha256=self.model_sha256,
            backend=self.backend_name,
            device=self.device,
            precision=self.precision,
            chroma_size=self.chroma_size,
            refinement=self.refinement.as_dict(),
        )

    def canvas_shapes(self) -> list[tuple[int, int]]:
        """Every batch shape this Colorizer can use (for compile-ahead backends)."""
        return canvas_shapes(self.chroma_size)

    # -- public API -------------------------------------------------------------------

    @property
    def takes_hints(self) -> bool:
        """Whether the network itself sees hints (a 4-channel generator). Hints given to
        any model still colour the regions they fall in (:func:`semwatch.regions.spread_hints`)."""
        return self.generator.config.in_channels > 1

    @property
    def takes_palette(self) -> bool:
        """Whether the network itself sees a palette (semwatch.palette). A palette given to
        any model still colours the frame (:func:`semwatch.palette_fit.fit_palette`)."""
        return self.generator.config.palette_colours > 0

    def colorize(
        self,
        images: Sequence[GrayLike],
        hints: HintsPerImage = None,
        styles: StylesPerImage = None,
        *,
        spread: bool | Sequence[bool] = False,
        palettes: PalettesPerImage = None,
    ) -> list[np.ndarray]:
        """(H, W, 3) uint8 sRGB for each image, in order; ``hints``: one list per image
        (points in the image's pixels; points in the data bar are ignored with a warning);
        ``styles``: one style (or None) per image. A hint colours its object and the objects
        like it; ``spread`` (for all images, or one flag per image): instead, every other
        object is pulled toward the nearest hint's colour (the behaviour before issue 20);
        ``palettes``: one palette (or None) per image, "these colours" without positions; an
        image without one takes its style's palette, if any; the engine hands the palette's
        colours to the image's objects (:mod:`semwatch.palette_fit`), and a palette-taking
        network sees it as well."""
        preds = self._predict(images, hints, styles, spread=spread, palettes=palettes)
        rgbs = [to_host(self._compose(image, pred)) for image, pred in zip(images, preds)]
        synchronize(self.device_obj)  # the copies to the host were asynchronous on a GPU
        return [rgb.numpy() for rgb in rgbs]

    def predict_ab(
        self,
        images: Sequence[GrayLike],
        hints: HintsPerImage = None,
        styles: StylesPerImage = None,
        *,
        spread: bool | Sequence[bool] = False,
        palettes: PalettesPerImage = None,
    ) -> list[torch.Tensor]:
        """Full-resolution ab in Lab units (2, H, W) per image; data-bar rows are 0."""
        result = []
        preds = self._predict(images, hints, styles, spread=spread, palettes=palettes)
        for image, pred in zip(images, preds):
            height, width = image.gray.shape
            ab = torch.zeros((2, height, width), device=self.device_obj)
            rows = self._colour_rows(image)
            if rows and pred is not None:
                gray = _as_tensor(image.gray[:rows], self.device_obj)
                ab[:, :rows] = self._full_ab(pred, gray)
            result.append(ab)
        return result

    # -- steps ------------------------------------------------------------------------

    def _colour_rows(self, image: GrayLike) -> int:
        height = image.gray.shape[0]
        row = image.databar_row
        if row is None or row >= height:
            return height
        return max(0, int(row))

    def check_style(self, style: Style) -> None:
        """StyleError (naming the style file) unless this engine can apply ``style``."""
        style.check_model(self.model_sha256, self.model_name)

    def describe_hinted(
        self, image: GrayLike, hints: Sequence[Hint], *, features: str = ENCODER_FEATURES
    ) -> tuple[RegionDescription, list[HintPoint | None]]:
        """The regions of ``image`` as the engine sees them, described (what a style is made
        of), and each hint's point at that size (None for a hint in the data bar)."""
        self._check(image)
        rows = self._colour_rows(image)
        if rows == 0:
            raise ValueError("the image is all data bar")
        plan = plan_image(rows, image.gray.shape[1], self.chroma_size)
        guide = self._guide(self._lightness_input(image, plan), plan)
        description = describe(guide, self.refinement.regions, self.generator.model, features)
        points: list[HintPoint | None] = []
        for hint in hints:
            found = self._hint_points([hint], plan)
            points.append(found[0] if found else None)
        return description, points

    def _predict(
        self,
        images: Sequence[GrayLike],
        hints: HintsPerImage = None,
        styles: StylesPerImage = None,
        *,
        spread: bool | Sequence[bool] = False,
        palettes: PalettesPerImage = None,
    ) -> list[Prediction | None]:
        """Low-resolution prediction per image; None for images that are all data bar."""
        if hints is not None and len(hints) != len(images):
            raise ValueError(f"{len(hints)} hint lists for {len(images)} images")
        if palettes is not None and len(palettes) != len(images):
            raise ValueError(f"{len(palettes)} palettes for {len(images)} images")
        if styles is not None and len(styles) != len(images):
            raise ValueError(f"{len(styles)} styles for {len(images)} images")
        # A palette given for an image wins over its style's, and either over its hints' colours
        # (semwatch.styles.palette_for).
        palette_of = {}
        for i in range(len(images)):
            chosen, _ = palette_for(
                palettes[i] if palettes is not None else None,
                styles[i] if styles is not None else None,
                hints[i] if hints is not None else (),
            )
            if chosen is not None:
                palette_of[i] = chosen
        results: list[Prediction | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[tuple[int, Plan, torch.Tensor, Guidance]]] = defaultdict(list)
        for i, image in enumerate(images):
            self._check(image)
            rows = self._colour_rows(image)
            if rows == 0:
                continue
            plan = plan_image(rows, image.gray.shape[1], self.chroma_size)
            lightness = self._lightness_input(image, plan)
            points = self._hint_points(hints[i] if hints is not None else (), plan)
            style = styles[i] if styles is not None else None
            spreads = spread if isinstance(spread, bool) else bool(spread[i])
            guidance = self._guidance(self._guide(lightness, plan), points, style, spreads)
            groups[plan.canvas].append((i, plan, lightness, guidance))
        for members in groups.values():
            for chunk in _chunks(members, self.batch_size):
                batch = torch.stack(
                    [
                        self._with_hint_planes(x, plan, guidance.network, palette_of.get(i))
                        for i, plan, x, guidance in chunk
                    ]
                )
                out = self.backend(batch).float() * AB_SCALE
                for (i, plan, x, guidance), ab in zip(chunk, out):
                    h, w = plan.small
                    guide = self._guide(x, plan)
                    refined = self._refine(ab[:, :h, :w], guide, guidance, palette_of.get(i))
                    results[i] = Prediction(refined, guide)
        return results

    def _guidance(
        self, guide: torch.Tensor, points: list[HintPoint], style: Style | None, spread: bool
    ) -> Guidance:
        """Where colour is asked for: the person's hints, the regions that match them
        (unless ``spread``: then the old pull toward the nearest hint instead), and the
        regions that match the style's prototypes."""
        pull = HINT_PULL if spread and points else 0.0
        if style is None and (spread or not points):
            return Guidance(points, points, None, pull)
        if style is not None:
            self.check_style(style)
        kind = style.features if style is not None else ENCODER_FEATURES
        description = describe(guide, self.refinement.regions, self.generator.model, kind)
        labels = description.labels
        hinted = torch.zeros(description.count, dtype=torch.bool, device=labels.device)
        for p in points:
            hinted[labels[p.row, p.col]] = True
        extra: list[HintPoint] = []
        if points and not spread:
            # Locality: a hint colours its own object and the objects described like it.
            vectors = description.vectors()
            own = [Prototype(vectors[labels[p.row, p.col]], p.a, p.b, "") for p in points]
            found = match(vectors, own, match_threshold(kind, same_image=True), kind)
            extra += matched_points(description, found, skip=hinted)
        if style is not None:
            taken = hinted.clone()
            for p in extra:
                taken[labels[p.row, p.col]] = True
            # Measured from the style's reference frame, as its prototypes were.
            vectors = description.vectors(style.centre_tensor)
            found = match(vectors, style.engine_prototypes, match_threshold(kind), kind)
            extra += matched_points(description, found, skip=taken)
        # The person's points last: in the hint planes the later point wins an overlap.
        network = extra[:MAX_STYLE_POINTS] + points
        return Guidance(network, extra + points, labels, pull)

    def _hint_points(self, hints: Sequence[Hint], plan: Plan) -> list[HintPoint]:
        """Hints in the down-scaled image's pixels; those in the data bar are dropped."""
        points = []
        scale_y = plan.small[0] / plan.height
        scale_x = plan.small[1] / plan.width
        for hint in hints:
            if hint.y >= plan.height:
                log.warning("hint in the data bar ignored", x=hint.x, y=hint.y, databar_row=plan.height)
                continue
            row = min(plan.small[0] - 1, int(hint.y * scale_y))
            col = min(plan.small[1] - 1, int(hint.x * scale_x))
            points.append(HintPoint(row, col, hint.a, hint.b))
        return points

    def _refine(
        self, ab: torch.Tensor, guide: torch.Tensor, guidance: Guidance, palette: Palette | None = None
    ) -> torch.Tensor:
        """The colour refinements on one down-scaled prediction (2, h, w): chroma gain, each
        region's dominant hue, the palette's colours handed to the regions, then the hints'
        and style's colours in theirs (they say where, so they win)."""
        settings = self.refinement.regions
        if self.refinement.chroma_gain != 1.0:
            ab = ab * self.refinement.chroma_gain
        if settings.strength > 0 or guidance.fill or palette is not None:
            labels = guidance.labels if guidance.labels is not None else segment(guide, settings)
            ab = apply_dominant_hue(ab, labels, settings.strength)
            if palette is not None:
                ab = fit_palette(ab, guide, labels, palette)
            ab = spread_hints(ab, labels, guidance.fill, pull=guidance.pull)
        return self.coherence.apply(ab)

    def _check(self, image: GrayLike) -> None:
        gray = image.gray
        if gray.dtype != np.uint8 or gray.ndim != 2:
            raise ValueError(f"expected a 2-D uint8 gray image, got {gray.dtype} {gray.shape}")

    def _network_input(
        self, image: GrayLike, plan: Plan, points: Sequence[HintPoint] = (), palette: Palette | None = None
    ) -> torch.Tensor:
        """(C, canvas_h, canvas_w): down-scaled L/50 - 1, edge-padded to the canvas; for a
        hint-taking network, then the hint planes (zero in the padding); for a palette-taking
        one, then the palette planes."""
        return self._with_hint_planes(self._lightness_input(image, plan), plan, points, palette)

    @staticmethod
    def _guide(lightness: torch.Tensor, plan: Plan) -> torch.Tensor:
        """(h, w) L/100 of the down-scaled image, from the network's lightness input."""
        h, w = plan.small
        return (lightness[0, :h, :w] + 1.0) * 0.5  # L/50 - 1 -> L/100

    def _with_hint_planes(
        self, lightness: torch.Tensor, plan: Plan, points: Sequence[HintPoint], palette: Palette | None = None
    ) -> torch.Tensor:
        parts = [lightness]
        if self.takes_hints:
            parts.append(hint_planes(points, *plan.canvas, device=self.device_obj))
        if self.takes_palette:
            parts.append(palette_planes(palette, *plan.canvas, device=self.device_obj))
        return torch.cat(parts) if len(parts) > 1 else lightness

    def _lightness_input(self, image: GrayLike, plan: Plan) -> torch.Tensor:
        """(1, canvas_h, canvas_w): down-scaled L/50 - 1, edge-padded to the canvas."""
        gray = _as_tensor(image.gray[: plan.height], self.device_obj)
        x = gray.to(torch.float32).div_(255.0)[None, None]
        if plan.small != (plan.height, plan.width):
            x = F.interpolate(
                x, size=plan.small, mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        x = l_to_input(_gray_float_to_l(x))
        pad_h = plan.canvas[0] - plan.small[0]
        pad_w = plan.canvas[1] - plan.small[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x[0]

    def _low_res_planes(self, pred: Prediction) -> torch.Tensor:
        """What the full-resolution step expands: the guided filter's coefficients
        (4, h, w), computed at the network's resolution, or the ab itself (2, h, w)."""
        if not self.smoothing.enabled:
            return pred.ab
        return self.smoothing.coefficients(pred.guide, pred.ab)

    def _full_ab(self, pred: Prediction, gray: torch.Tensor) -> torch.Tensor:
        """Full-resolution ab for the colour rows ``gray`` (uint8, on the device)."""
        return self.fullres.ab(gray, self._low_res_planes(pred))

    def _compose(self, image: GrayLike, pred: Prediction | None) -> torch.Tensor:
        """Full-resolution RGB (H, W, 3) uint8 on the device: chroma table above the bar,
        plain gray in it."""
        height, width = image.gray.shape
        rows = self._colour_rows(image)
        out = torch.empty((height, width, 3), dtype=torch.uint8, device=self.device_obj)
        gray = _as_tensor(image.gray, self.device_obj)
        if rows and pred is not None:
            self.fullres.rgb_into(out[:rows], gray[:rows], self._low_res_planes(pred))
        if rows < height:
            out[rows:] = gray[rows:, :, None]
        return out


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The image on the engine's device (a view on the CPU; pinned, asynchronous on a GPU)."""
    return to_device(array, device)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
