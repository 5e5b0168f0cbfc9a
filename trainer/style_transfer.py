"""``trainer evaluate --style-transfer`` and ``--locality``: styles and hints, measured.

Style transfer (issue 20) the way a series works: each truth image is cut into two fields
of view of one specimen — A, the left :data:`VIEW_SHARE` of the frame, and B, the right
:data:`VIEW_SHARE` shrunk by :data:`B_SCALE` (a shared strip, the rest new ground). Hints
on A are simulated from the truth, a style is made from A and applied to B. Reported for
B: ab MAE with A's style, without any style, with 10 hints placed on B itself, and with a
style whose prototypes are plain gray-texture statistics (every region takes the nearest
hinted region's colour: the calibration the learned features must beat); and B's region
hue coherence with the style, beside the truth's own.

Hint locality: one hint at a random point of each image, with the truth's colour there.
The image's gray segments (Felzenszwalb, the engine's region settings) are ranked by how
unlike the hinted segment they are in gray-texture statistics; of the pixels in the less
alike half, the share whose a,b moves by more than :data:`MOVE_LAB` (full resolution)
against the automatic colour. Reported: the median over images, for hints that stay
local (the default) and for ``--spread``.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from semwatch.color import rgb_to_lab
from semwatch.engine import Colorizer, GrayImage
from semwatch.hints import Hint
from semwatch.prototypes import ENCODER_FEATURES, GRAY_FEATURES, gray_statistics
from semwatch.regions import segment_small, upscale_labels
from semwatch.styles import make_style
from trainer.metrics import region_hue_coherence
from trainer.truth import gray_from_lightness, rgb_u8_to_tensor, simulated_hints

VIEW_SHARE = 0.6  # each field of view is this share of the frame's width
B_SCALE = 0.85  # B is seen at this scale (another magnification)
STYLE_HINTS = 8  # hints on A
B_HINTS = 10  # the comparison: this many hints on B itself
MOVE_LAB = 10.0  # locality: a pixel "moved" when its a,b changed by more than this


@dataclass(frozen=True)
class StyleTransferReport:
    images: int
    ab_mae_auto: float  # B without a style
    ab_mae_style: float  # B with A's style (learned features)
    ab_mae_gray_style: float  # B with A's style made of gray-texture statistics
    ab_mae_hints: float  # B with 10 hints on itself
    coherence_style: float
    coherence_auto: float
    coherence_truth: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LocalityReport:
    images: int
    moved_local: float  # median share of the unlike half's pixels that moved, hints local
    moved_spread: float  # the same with --spread (the behaviour before issue 20)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_views(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two fields of view of one truth (H, W, 3): A the left share, B the right share at
    :data:`B_SCALE`."""
    height, width = rgb.shape[:2]
    share = round(width * VIEW_SHARE)
    view_a = np.ascontiguousarray(rgb[:, :share])
    right = Image.fromarray(np.ascontiguousarray(rgb[:, width - share :]))
    size = (max(1, round(share * B_SCALE)), max(1, round(height * B_SCALE)))
    view_b = np.array(right.resize(size, Image.Resampling.LANCZOS))  # writable: torch reads it
    return view_a, view_b


def _truth(rgb: np.ndarray) -> tuple[torch.Tensor, GrayImage]:
    lab = rgb_to_lab(rgb_u8_to_tensor(rgb, torch.device("cpu"))[None])[0]
    return lab, GrayImage(gray_from_lightness(lab[0]).numpy())


def _ab_of(colorizer: Colorizer, image: GrayImage, **kwargs: Any) -> torch.Tensor:
    """The delivered colour's a,b (through the 8-bit RGB output, as evaluate measures)."""
    rgb = colorizer.colorize([image], **kwargs)[0]
    return rgb_to_lab(rgb_u8_to_tensor(rgb, torch.device("cpu"))[None])[0, 1:]


def _mae(ab: torch.Tensor, truth_ab: torch.Tensor) -> tuple[float, int]:
    return float((ab - truth_ab).abs().sum(dtype=torch.float64)), ab.numel()


def style_transfer(
    colorizer: Colorizer, truths: Iterable[tuple[Path, np.ndarray]], *, seed: int = 0
) -> StyleTransferReport:
    """The protocol of the module docstring over ``truths`` (path, RGB)."""
    sums = {key: [0.0, 0] for key in ("auto", "style", "gray", "hints")}
    coherence: dict[str, list[float]] = {"style": [], "auto": [], "truth": []}
    images = 0
    for path, rgb in truths:
        view_a, view_b = split_views(rgb)
        lab_a, gray_a = _truth(view_a)
        lab_b, gray_b = _truth(view_b)
        hints_a = simulated_hints(path, lab_a, STYLE_HINTS, seed)
        style = make_style(
            colorizer, gray_a, hints_a, name="A", source_name=path.name, source_sha256="0" * 64
        )
        gray_style = make_style(
            colorizer,
            gray_a,
            hints_a,
            name="A",
            source_name=path.name,
            source_sha256="0" * 64,
            features=GRAY_FEATURES,
        )
        hints_b = simulated_hints(Path(path.name + "#B"), lab_b, B_HINTS, seed)
        results = {
            "auto": _ab_of(colorizer, gray_b),
            "style": _ab_of(colorizer, gray_b, styles=[style]),
            "gray": _ab_of(colorizer, gray_b, styles=[gray_style]),
            "hints": _ab_of(colorizer, gray_b, hints=[hints_b]),
        }
        for key, ab in results.items():
            total, count = _mae(ab, lab_b[1:])
            sums[key][0] += total
            sums[key][1] += count
        for key in ("style", "auto"):
            value = region_hue_coherence(results[key], lab_b[1:])
            if value == value:  # not NaN: the truth has coloured regions
                coherence[key].append(value)
        truth_value = region_hue_coherence(lab_b[1:], lab_b[1:])
        if truth_value == truth_value:
            coherence["truth"].append(truth_value)
        images += 1
    if not images:
        raise ValueError("no images for the style-transfer measurement")

    def mae(key: str) -> float:
        return sums[key][0] / max(sums[key][1], 1)

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return StyleTransferReport(
        images=images,
        ab_mae_auto=mae("auto"),
        ab_mae_style=mae("style"),
        ab_mae_gray_style=mae("gray"),
        ab_mae_hints=mae("hints"),
        coherence_style=mean(coherence["style"]),
        coherence_auto=mean(coherence["auto"]),
        coherence_truth=mean(coherence["truth"]),
    )


def unlike_half(colorizer: Colorizer, gray: np.ndarray, row: int, col: int) -> torch.Tensor:
    """(H, W) bool: the pixels in the half of the image's gray segments least like the
    segment at (row, col), by gray-texture statistics (half by count of segments)."""
    guide = torch.from_numpy(gray).float() / 255.0
    settings = colorizer.refinement.regions
    small = segment_small(guide, settings)
    count = int(small.max()) + 1
    vectors = gray_statistics(guide, small, count)
    labels = upscale_labels(small, guide.shape)
    hinted = int(labels[row, col])
    distance = (vectors - vectors[hinted]).norm(dim=1)
    order = torch.argsort(distance, descending=True)
    far = torch.zeros(count, dtype=torch.bool)
    far[order[: count // 2]] = True
    far[hinted] = False
    return far[labels]


def locality(
    colorizer: Colorizer, truths: Iterable[tuple[Path, np.ndarray]], *, seed: int = 0
) -> LocalityReport:
    """The hint-locality measurement of the module docstring over ``truths``."""
    moved: dict[bool, list[float]] = {False: [], True: []}
    for path, rgb in truths:
        lab, gray = _truth(rgb)
        digest = hashlib.sha256(f"{seed}:{path.name}:locality".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        height, width = gray.gray.shape
        row, col = int(rng.integers(height)), int(rng.integers(width))
        a, b = float(lab[1, row, col]), float(lab[2, row, col])
        hint = Hint(float(col), float(row), a, b, "#000000")
        mask = unlike_half(colorizer, gray.gray, row, col)
        if not bool(mask.any()):
            continue
        auto = colorizer.predict_ab([gray])[0].cpu()
        for spread in (False, True):
            hinted = colorizer.predict_ab([gray], [[hint]], spread=spread)[0].cpu()
            change = (hinted - auto).norm(dim=0)
            moved[spread].append(float((change[mask] > MOVE_LAB).float().mean()))
    if not moved[False]:
        raise ValueError("no images for the locality measurement")
    return LocalityReport(len(moved[False]), statistics.median(moved[False]), statistics.median(moved[True]))


__all__ = [
    "ENCODER_FEATURES",
    "LocalityReport",
    "StyleTransferReport",
    "locality",
    "split_views",
    "style_transfer",
]
