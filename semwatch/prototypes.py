"""What an object looks like, in numbers that survive a new field of view; and matching.

A colorist's hint says "this object is this colour"; a style (:mod:`semwatch.styles`)
carries that choice to other images of the series, and locality (issue 20) keeps a hint to
its object and the objects like it. Both need a description of each region
(:func:`semwatch.regions.segment`) that is the same for the same kind of object in another
frame: the generator's own encoder features, pooled over the region, joined with plain gray
statistics. The encoder was trained to tell what colour things are, so its features
separate the objects a colorist separates; two depths are pooled (layer1: fine texture,
layer2: structure), each normalised to unit length so no part outweighs the others.

Plain gray-texture statistics (mean, spread and edge strength of the gray levels) are
the baseline they are measured against (``trainer evaluate --style-transfer``), and what
the hint-locality measurement calls "alike".

Everything works on the network's down-scaled image (``guide``: L/100, (h, w)), on its
device, with the generator in float32 whatever the backend runs in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semwatch.hints import HintPoint
from semwatch.model import STRIDE, UNetGenerator
from semwatch.regions import RegionSettings, region_means, segment_small, upscale_labels

# Long side of the copy the encoder describes. Half the network's size: the features only
# have to tell objects apart, and at 256 the extra encoder pass costs ~5% of a frame's
# engine time (benchmarks/colorize.py) where the full size would cost ~20%.
# (Measured to layer3; the pass now stops at layer2.)
FEATURE_SIZE = 256
# The descriptor's name, stored in every style: a style made with another recipe is
# refused like one made with another model.
ENCODER_FEATURES = "encoder-pooled/1"
GRAY_FEATURES = "gray-statistics/1"
# A region takes a prototype's colour when the similarity of their descriptors (cosine,
# centred on the reference frame) is at least this and the prototype is its most similar:
# a region not even positively alike to any hinted object keeps the automatic colour.
# On a val subsample (trainer evaluate --style-transfer) B's ab MAE was 0.504x without a
# style at 0.0 and 0.15, 0.498x when every region matched, 0.547x at 0.4.
MATCH_THRESHOLD = 0.0
# Regions this alike to a hinted region of the same image take its colour too (locality:
# a hint colours its object and the objects that match it). Stricter than across images:
# within one frame the same kind of object is described almost identically, and a click
# must not recolour the frame (pixels of unlike objects moved by a hint: 10% at 0.9, 13%
# at 0.8; the bound is 20%).
SAME_IMAGE_THRESHOLD = 0.9
# Style matches put at most this many points into the network's hint planes (training saw
# up to 40); the region fill colours every matched region whatever their number.
MAX_STYLE_POINTS = 40
# Encoder depths pooled (layer1: fine texture, layer2: structure), and the weight of the
# gray statistics joined to them. Measured on a val subsample, B's ab MAE x no style with
# every region matched: layers 1-3 + gray 0.5: 0.507x; + gray 1.0: 0.504x; layers 2-3:
# 0.581x; layer 1 alone: 0.509x; layers 1-2 + gray 1.0: 0.498x; + gray 2.0: 0.507x; gray
# statistics alone: 0.521x. Object identity in SEM lives in texture more than in context.
LAYERS = (1, 2)
GRAY_WEIGHT = 1.0
# A matched region's colour is the mean of the prototypes' colours weighted by
# softmax(similarity / T) (Zhang et al. 2016's annealed mean, over prototypes instead of
# ab bins): a clear winner gives its own colour (0.1 apart in cosine: 7:1 at T = 0.05,
# 2.7:1 at 0.1), near ties between differently coloured objects a colour between them
# instead of a coin toss. B's ab MAE x no style on the full val split: 0.531x with the
# most similar prototype alone; 0.489x at T = 0.05; 0.488x at 0.1; 0.488x at 0.2.
# Gray statistics (the baseline) keep the nearest prototype's colour.
MATCH_TEMPERATURE = 0.1


def match_threshold(kind: str, *, same_image: bool = False) -> float:
    """How alike a region must be to take a prototype's colour. Gray statistics are the
    evaluation's baseline, which gives every region its nearest prototype."""
    if kind == GRAY_FEATURES:
        return float("-inf")
    return SAME_IMAGE_THRESHOLD if same_image else MATCH_THRESHOLD


@dataclass(frozen=True)
class RegionDescription:
    """The regions of one down-scaled image and a raw descriptor per region.

    Raw descriptors are plain means (of each encoder depth's features, of the gray
    statistics), joined; :func:`embed` makes them comparable. ``centre`` is the frame's
    own mean descriptor (area-weighted), what a hint in this frame is compared against.
    """

    labels: torch.Tensor  # (h, w) int64 at the network's down-scaled size
    small_labels: torch.Tensor  # (hs, ws) the same regions where they were found
    raw: torch.Tensor  # (count, D) float32
    centre: torch.Tensor  # (D,) float32
    parts: tuple[int, ...]  # the sizes of the joined parts of D
    kind: str

    @property
    def count(self) -> int:
        return int(self.raw.shape[0])

    def vectors(self, centre: torch.Tensor | None = None) -> torch.Tensor:
        """(count, D) comparable descriptors, centred on ``centre`` (default: this frame's)."""
        return embed(self.raw, self.centre if centre is None else centre, self.parts, self.kind)


@dataclass(frozen=True)
class Prototype:
    """A described object (an :func:`embed`-ed descriptor) and the colour it should have
    (Lab a,b and the sRGB as given)."""

    vector: torch.Tensor  # (D,)
    a: float
    b: float
    color: str


@dataclass(frozen=True)
class Match:
    """For each region: the most similar prototype, whether it is similar enough, and the
    colour a matched region takes (:data:`MATCH_TEMPERATURE`)."""

    prototype: torch.Tensor  # (count,) int64 index into the prototypes
    similarity: torch.Tensor  # (count,) float32
    matched: torch.Tensor  # (count,) bool
    ab: torch.Tensor  # (count, 2) float32 Lab a,b


def describe(
    guide: torch.Tensor,
    settings: RegionSettings,
    model: UNetGenerator | None,
    kind: str = ENCODER_FEATURES,
) -> RegionDescription:
    """Segment ``guide`` (h, w) and describe each region (``kind``: encoder or gray)."""
    small_labels = segment_small(guide, settings)
    labels = upscale_labels(small_labels, guide.shape)
    count = int(small_labels.max()) + 1
    gray = gray_statistics(guide, small_labels, count)
    if kind == ENCODER_FEATURES:
        if model is None:
            raise ValueError("encoder features need the generator")
        parts = [*encoder_means(model, guide, small_labels, count), gray]
    elif kind == GRAY_FEATURES:
        parts = [gray]
    else:
        raise ValueError(f"unknown region descriptor {kind!r}")
    raw = torch.cat(parts, dim=1)
    area = torch.bincount(small_labels.reshape(-1), minlength=count).to(raw)
    centre = (raw * area[:, None]).sum(dim=0) / area.sum()
    return RegionDescription(labels, small_labels, raw, centre, tuple(p.shape[1] for p in parts), kind)


def embed(raw: torch.Tensor, centre: torch.Tensor, parts: Sequence[int], kind: str) -> torch.Tensor:
    """Comparable descriptors from raw ones (…, D).

    Encoder: each part centred on ``centre`` — ReLU features of any two regions point the
    same way (cosine ~0.9 for everything); what tells objects apart is how each differs
    from the reference frame — then each part to unit length (no depth outweighs the
    others; the gray statistics at :data:`GRAY_WEIGHT`), joined, to unit length. A style
    keeps its reference frame's centre, so a new frame of other composition is measured
    from the same origin. Gray statistics alone (the baseline): as they are.
    """
    if kind == GRAY_FEATURES:
        return raw
    chunks = torch.split(raw - centre.to(raw), list(parts), dim=-1)
    weights = [1.0] * (len(chunks) - 1) + [GRAY_WEIGHT]
    return _unit(torch.cat([w * _unit(c) for c, w in zip(chunks, weights)], dim=-1))


@torch.no_grad()
def encoder_features(model: UNetGenerator, guide: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's maps (1, C, h', w') at the depths :data:`LAYERS` for ``guide`` (h, w)
    with no hints, computed on a copy whose long side is :data:`FEATURE_SIZE`."""
    height, width = guide.shape
    scale = min(1.0, FEATURE_SIZE / max(height, width))
    x = guide[None, None].float()
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="area")
    pad_h, pad_w = -size[0] % STRIDE, -size[1] % STRIDE
    x = x * 2.0 - 1.0  # L/100 -> the network's L/50 - 1
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    channels = model.config.in_channels
    if channels > 1:  # a hint-taking network, asked without hints: zero planes
        x = torch.cat((x, x.new_zeros((1, channels - 1, *x.shape[-2:]))), dim=1)
    weight = model.stem[0].weight
    x = x.to(device=weight.device, dtype=weight.dtype)
    maps = []
    f = model.pool(model.stem(x))
    for depth, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), 1):
        if depth > max(LAYERS):
            break
        f = layer(f)
        if depth in LAYERS:
            # Crop the padding away (each map's share of the valid area).
            factor = x.shape[-1] / f.shape[-1]
            rows = max(1, round(size[0] / factor))
            cols = max(1, round(size[1] / factor))
            maps.append(f[:, :, :rows, :cols].float())
    return maps


def encoder_means(
    model: UNetGenerator, guide: torch.Tensor, small_labels: torch.Tensor, count: int
) -> list[torch.Tensor]:
    """Per encoder depth, (count, C): the mean of its features over each region."""
    parts = []
    for feature in encoder_features(model, guide):
        grid = F.interpolate(feature, size=small_labels.shape, mode="bilinear", align_corners=False)[0]
        parts.append(region_means(grid.to(small_labels.device), small_labels, count))
    return parts


def gray_statistics(guide: torch.Tensor, small_labels: torch.Tensor, count: int) -> torch.Tensor:
    """Per region (count, 3), plain gray-texture statistics: mean and spread of the
    lightness and the mean edge strength, each divided by a typical range so that a
    distance weighs them alike."""
    g = F.interpolate(guide[None, None].float(), size=small_labels.shape, mode="area")[0, 0]
    gy, gx = torch.gradient(g)
    edge = torch.hypot(gx, gy)
    means = region_means(torch.stack((g, g * g, edge)), small_labels, count)
    spread = (means[:, 1] - means[:, 0] ** 2).clamp(min=0).sqrt()
    return torch.stack((means[:, 0] / 0.25, spread / 0.08, means[:, 2] / 0.03), dim=1)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def similarity(vectors: torch.Tensor, prototypes: torch.Tensor, kind: str) -> torch.Tensor:
    """(count, K) how alike each region is to each prototype: cosine for the encoder's unit
    vectors; for gray statistics, 1 - distance / 2 (the same direction: larger is closer)."""
    if kind == GRAY_FEATURES:
        return 1.0 - torch.cdist(vectors, prototypes) / 2.0
    return vectors @ prototypes.t()


def match(vectors: torch.Tensor, prototypes: Sequence[Prototype], threshold: float, kind: str) -> Match:
    """Each region's (``vectors``, embedded) most similar prototype, matched when the
    similarity reaches ``threshold``."""
    stacked = torch.stack([p.vector.to(vectors) for p in prototypes])
    sims = similarity(vectors, stacked, kind)
    best, index = sims.max(dim=1)
    colours = torch.tensor([[p.a, p.b] for p in prototypes], dtype=torch.float32, device=sims.device)
    if kind == GRAY_FEATURES:
        ab = colours[index]
    else:
        ab = torch.softmax(sims.float() / MATCH_TEMPERATURE, dim=1) @ colours
    return Match(index, best, best >= threshold, ab)


def region_points(labels: torch.Tensor, regions: torch.Tensor) -> list[tuple[int, int]]:
    """One (row, col) inside each of ``regions`` (labels at the network's size): the pixel
    nearest the region's centroid among those whose 5x5 neighbourhood is all that region
    (so the hint square lies inside the object), else the region's pixel nearest it."""
    if regions.numel() == 0:
        return []
    height, width = labels.shape
    count = int(labels.max()) + 1
    lab = labels[None, None].float()
    interior = (F.max_pool2d(lab, 5, 1, 2) == F.max_pool2d(-lab, 5, 1, 2).neg())[0, 0]
    rows = torch.arange(height, device=labels.device).view(-1, 1).expand(height, width).float()
    cols = torch.arange(width, device=labels.device).view(1, -1).expand(height, width).float()
    flat = labels.reshape(-1)
    area = torch.bincount(flat, minlength=count).clamp(min=1).float()
    cy = torch.zeros(count, device=labels.device).index_add_(0, flat, rows.reshape(-1)) / area
    cx = torch.zeros(count, device=labels.device).index_add_(0, flat, cols.reshape(-1)) / area
    distance = (rows - cy[labels]) ** 2 + (cols - cx[labels]) ** 2
    key = (distance + (~interior).float() * (height * width) ** 2).reshape(-1)
    best = torch.full((count,), float("inf"), device=labels.device)
    best = best.scatter_reduce(0, flat, key, reduce="amin")
    is_best = key == best[flat]
    # First pixel (in raster order) reaching its region's minimum.
    positions = torch.arange(flat.numel(), device=labels.device)
    first = torch.full((count,), flat.numel(), device=labels.device, dtype=torch.long)
    first = first.scatter_reduce(0, flat[is_best], positions[is_best], reduce="amin")
    chosen = first[regions.to(labels.device)].tolist()
    return [(p // width, p % width) for p in chosen]


def matched_points(
    description: RegionDescription,
    found: Match,
    *,
    skip: torch.Tensor | None = None,
) -> list[HintPoint]:
    """A hint point (at the network's size) inside each matched region, with the colour
    the match gives it, largest region first; regions in ``skip`` (bool per region: already
    hinted) left out."""
    chosen = found.matched.clone()
    if skip is not None:
        chosen &= ~skip.to(chosen.device)
    regions = torch.nonzero(chosen).flatten()
    area = torch.bincount(description.labels.reshape(-1), minlength=description.count)
    regions = regions[torch.argsort(area[regions], descending=True, stable=True)]
    points = []
    colours = found.ab.tolist()
    for region, (row, col) in zip(regions.tolist(), region_points(description.labels, regions)):
        a, b = colours[region]
        points.append(HintPoint(row, col, a, b))
    return points
