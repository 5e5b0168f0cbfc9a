"""``trainer evaluate``: how well a generator colorizes ground-truth colour images.

Each truth image is turned into the gray image a microscope would have produced for it,
colorized through the daemon's own engine (:class:`semwatch.engine.Colorizer`: the
down-scaled chroma pass, full-resolution recombination with the original gray levels,
gamut mapping), and the delivered RGB is compared with the truth at the image's own
resolution. The gray baseline (a = b = 0, i.e. the gray image itself) goes through the same
measurements, so every figure has its "did nothing" reference beside it.

Which gray: the engine reads a gray level g as the sRGB colour (g, g, g) and keeps its CIE
L exactly. The gray for a truth pixel is therefore the level whose L is nearest the truth's
L (the inverse of :func:`semwatch.color.gray_levels_to_l`, by search in that increasing
table). Prediction and truth then differ in chroma only, up to the 8-bit quantisation of L
(at most half a gray level), which is what a colorization metric should see.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from tqdm import tqdm

from semwatch.cli_options import (
    CONTEXT,
    batch_size_option,
    chroma_size_option,
    config_option,
    device_option,
    load_cli_config,
)
from semwatch.color import rgb_to_lab
from semwatch.engine import Colorizer, EngineError, GrayImage
from semwatch.log import configure_cli_logging, get_logger
from semwatch.model import LoadedGenerator, ModelError, file_sha256
from semwatch.palette import PALETTE_COLOURS, Palette, dominant_colours
from trainer.checkpoint import CheckpointError, load_any_generator
from trainer.data import DataError, is_really_gray, list_images, load_rgb, split_of
from trainer.metrics import (
    ab_histogram,
    colorfulness,
    histogram_intersection,
    hue_contrast,
    psnr,
    region_hue_coherence,
)
from trainer.truth import gray_from_lightness, rgb_u8_to_tensor, simulated_hints  # noqa: F401 - API

log = get_logger(__name__)

# The histogram the issue specifies: chroma above 5, bins of 8 Lab units.
HIST_CHROMA_MIN = 5.0
HIST_BIN_SIZE = 8.0


class EvaluationError(ValueError):
    """Evaluation cannot run as asked; str() names the file or folder and the reason."""


@dataclass(frozen=True)
class MetricSet:
    """One side of the report (the model, or the gray baseline), on the same images."""

    ab_mae: float  # mean |a - a_true| and |b - b_true| over every pixel of every image
    psnr: float  # dB, mean over images
    colorfulness: float  # Hasler-Suesstrunk, 0..255 scale, mean over images
    colorfulness_truth: float  # the same figure for the truth images
    hist_intersection: float  # pooled ab histograms, prediction vs truth, in [0, 1]
    region_coherence: float = float("nan")  # metrics.region_hue_coherence, mean over images
    region_coherence_truth: float = float("nan")  # the same figure for the truth itself
    hue_contrast: float = float("nan")  # metrics.hue_contrast, mean over images
    hue_contrast_truth: float = float("nan")  # the same figure for the truth itself


@dataclass(frozen=True)
class HintResult:
    """ab MAE and PSNR with ``points`` simulated hints per image (0: automatic)."""

    points: int
    ab_mae: float
    psnr: float


@dataclass(frozen=True)
class PaletteResult:
    """The automatic colour steered by the truth's ``colours`` dominant a,b (no positions)."""

    colours: int
    ab_mae: float
    psnr: float
    colorfulness: float
    hue_contrast: float


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    model_sha256: str
    split: str
    images: int
    skipped_gray: int
    skipped_unreadable: int
    chroma_size: int
    hue_scale: float
    guide_radius: int
    guide_eps: float
    metrics: MetricSet
    gray_baseline: MetricSet
    region_hue: float = 0.0
    region_size: int = 0
    region_scale: float = 0.0
    chroma_gain: float = 1.0
    hints: list[HintResult] = field(default_factory=list)  # --hints: one row per count
    hint_seed: int = 0
    palette: PaletteResult | None = None  # --palette N

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Accumulator:
    """Running sums for one side; pixels are pooled, per-image figures averaged."""

    abs_error: float = 0.0
    ab_values: int = 0
    psnr: float = 0.0
    colorfulness: float = 0.0
    images: int = 0
    hist: torch.Tensor | None = None
    coherence: float = 0.0
    coherence_images: int = 0  # images whose truth has coloured regions
    contrast: float = 0.0
    contrast_images: int = 0  # images with coloured pixels

    def add(
        self,
        rgb: torch.Tensor,
        lab: torch.Tensor,
        truth_rgb: torch.Tensor,
        truth_lab: torch.Tensor,
        *,
        full: bool = True,
    ) -> None:
        """rgb / truth_rgb (3, H, W) float in [0, 1]; lab / truth_lab (3, H, W) Lab.
        ``full`` False: only the error figures (ab MAE, PSNR), for the hint passes."""
        ab, ab_true = lab[1:], truth_lab[1:]
        self.abs_error += float((ab - ab_true).abs().sum(dtype=torch.float64))
        self.ab_values += ab.numel()
        self.psnr += float(psnr(rgb, truth_rgb)[0])
        self.images += 1
        self.add_contrast(ab)
        self.colorfulness += float(colorfulness(rgb)[0])
        if not full:
            return
        hist = ab_histogram(ab, chroma_min=HIST_CHROMA_MIN, bin_size=HIST_BIN_SIZE)
        self.hist = hist if self.hist is None else self.hist + hist
        self.add_coherence(ab, ab_true)

    def add_contrast(self, ab: torch.Tensor) -> None:
        value = hue_contrast(ab)
        if not math.isnan(value):
            self.contrast += value
            self.contrast_images += 1

    def add_coherence(self, ab: torch.Tensor, ab_true: torch.Tensor) -> None:
        value = region_hue_coherence(ab, ab_true)
        if not math.isnan(value):
            self.coherence += value
            self.coherence_images += 1

    def result(self, truth: _Accumulator) -> MetricSet:
        assert self.images and self.hist is not None and truth.hist is not None
        return MetricSet(
            ab_mae=self.abs_error / self.ab_values,
            psnr=self.psnr / self.images,
            colorfulness=self.colorfulness / self.images,
            colorfulness_truth=truth.colorfulness / truth.images,
            hist_intersection=histogram_intersection(self.hist, truth.hist),
            region_coherence=self.coherence / max(self.coherence_images, 1),
            region_coherence_truth=truth.coherence / max(truth.coherence_images, 1),
            hue_contrast=self.contrast / max(self.contrast_images, 1),
            hue_contrast_truth=truth.contrast / max(truth.contrast_images, 1),
        )


@dataclass
class _Totals:
    model: _Accumulator = field(default_factory=_Accumulator)
    gray: _Accumulator = field(default_factory=_Accumulator)
    truth: _Accumulator = field(default_factory=_Accumulator)  # colorfulness + histogram only
    skipped_gray: int = 0
    skipped_unreadable: int = 0
    files_seen: int = 0  # for the progress bar: skipped files count as done


def select_images(root: Path, split: str, val_fraction: float, limit: int | None = None) -> list[Path]:
    """The truth files: all of them, or the training run's validation split (same hash).

    ``limit`` keeps the first N of the selection in sorted order, so a quick check and a
    full evaluation start from the same images.
    """
    root = Path(root)
    paths = list_images(root)
    if split == "val":
        if val_fraction <= 0:
            raise EvaluationError(
                f"{root}: --split val with val_fraction {val_fraction} selects nothing; "
                "give --val-fraction or --split all"
            )
        paths = [p for p in paths if split_of(p.relative_to(root).as_posix(), val_fraction) == "val"]
    elif split != "all":
        raise EvaluationError(f"unknown split {split!r} (val or all)")
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise EvaluationError(f"{root}: no JPEG/PNG/TIFF images in split {split!r}")
    return paths


def load_for_evaluation(path: Path, device: torch.device | str = "cpu") -> LoadedGenerator:
    """A generator file or a training checkpoint, as the LoadedGenerator the engine takes.

    A checkpoint has no generator-file identity, so its name is ``<run folder>/<stage
    folder>/<file>`` and its SHA-256 that of the checkpoint file: a report still says
    exactly which bytes were evaluated.
    """
    path = Path(path)
    try:
        model, config, info = load_any_generator(path, device=device)
    except (CheckpointError, ModelError) as exc:
        raise EvaluationError(str(exc)) from exc
    card = dict(info.get("card") or {})
    if info.get("source") == "checkpoint":
        name = "/".join(path.resolve().parts[-3:])
    else:
        name = str(card.get("name") or path.stem)
    return LoadedGenerator(
        model=model, config=config, card=card, path=path, sha256=file_sha256(path), name=name
    )


def _load_truths(paths: Sequence[Path], totals: _Totals) -> Iterator[tuple[Path, np.ndarray]]:
    """Decoded colour truths; gray and unreadable files are counted, logged and left out."""
    for path in paths:
        totals.files_seen += 1
        try:
            rgb = load_rgb(path)
        except DataError as exc:
            totals.skipped_unreadable += 1
            log.warning("skipping unreadable image", path=str(path), error=str(exc))
            continue
        if is_really_gray(rgb):
            totals.skipped_gray += 1
            log.warning("skipping gray image", reason="no colour truth", path=str(path))
            continue
        yield path, rgb


def _batches(items: Iterator[tuple[Path, np.ndarray]], size: int) -> Iterator[list[tuple[Path, np.ndarray]]]:
    batch: list[tuple[Path, np.ndarray]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _truth_tensors(
    batch: list[tuple[Path, np.ndarray]], device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    truths = [rgb_u8_to_tensor(rgb, device) for _, rgb in batch]
    truth_labs = [rgb_to_lab(t[None])[0] for t in truths]
    grays = [gray_from_lightness(lab[0]) for lab in truth_labs]
    return truths, truth_labs, grays


def _measure_hints(
    colorizer: Colorizer,
    batch: list[tuple[Path, np.ndarray]],
    counts: Sequence[int],
    totals: dict[int, _Accumulator],
    seed: int,
) -> None:
    """ab MAE and PSNR of the batch colorized with each number of simulated hints."""
    device = colorizer.device_obj
    truths, truth_labs, grays = _truth_tensors(batch, device)
    images = [GrayImage(gray.cpu().numpy()) for gray in grays]
    for count in counts:
        hints = [simulated_hints(path, lab, count, seed) for (path, _), lab in zip(batch, truth_labs)]
        for truth, truth_lab, predicted in zip(truths, truth_labs, colorizer.colorize(images, hints=hints)):
            pred = rgb_u8_to_tensor(predicted, device)
            totals[count].add(pred, rgb_to_lab(pred[None])[0], truth, truth_lab, full=False)


def _measure(colorizer: Colorizer, batch: list[tuple[Path, np.ndarray]], totals: _Totals) -> None:
    """Colorize one batch of truths through the engine and add every figure to the totals."""
    device = colorizer.device_obj
    truths, truth_labs, grays = _truth_tensors(batch, device)
    predictions = colorizer.colorize([GrayImage(gray.cpu().numpy()) for gray in grays])
    for truth, truth_lab, gray, predicted in zip(truths, truth_labs, grays, predictions):
        pred = rgb_u8_to_tensor(predicted, device)
        totals.model.add(pred, rgb_to_lab(pred[None])[0], truth, truth_lab)
        # The baseline is measured, not assumed: its ab comes out of the same conversion.
        gray_rgb = gray.float().div(255.0).expand(3, -1, -1)
        totals.gray.add(gray_rgb, rgb_to_lab(gray_rgb[None])[0], truth, truth_lab)
        totals.truth.colorfulness += float(colorfulness(truth)[0])
        totals.truth.images += 1
        truth_hist = ab_histogram(truth_lab[1:], chroma_min=HIST_CHROMA_MIN, bin_size=HIST_BIN_SIZE)
        totals.truth.hist = truth_hist if totals.truth.hist is None else totals.truth.hist + truth_hist
        totals.truth.add_coherence(truth_lab[1:], truth_lab[1:])
        totals.truth.add_contrast(truth_lab[1:])


def truth_palette(truth_lab: torch.Tensor, colours: int) -> Palette | None:
    """The truth's ``colours`` dominant a,b clusters (fixed seed): a palette without positions."""
    return dominant_colours(truth_lab[1:], colours, seed=0)


def _measure_palette(
    colorizer: Colorizer, batch: list[tuple[Path, np.ndarray]], colours: int, totals: _Accumulator
) -> None:
    """The batch colorized with each truth's own dominant colours as the palette."""
    device = colorizer.device_obj
    truths, truth_labs, grays = _truth_tensors(batch, device)
    images = [GrayImage(gray.cpu().numpy()) for gray in grays]
    palettes = [truth_palette(lab, colours) for lab in truth_labs]
    for truth, truth_lab, predicted in zip(truths, truth_labs, colorizer.colorize(images, palettes=palettes)):
        pred = rgb_u8_to_tensor(predicted, device)
        totals.add(pred, rgb_to_lab(pred[None])[0], truth, truth_lab, full=False)


def evaluate(
    colorizer: Colorizer,
    paths: Sequence[Path],
    *,
    split: str = "all",
    progress: bool = True,
    hint_counts: Sequence[int] = (),
    hint_seed: int = 0,
    palette_colours: int = 0,
) -> EvaluationReport:
    """Evaluate ``colorizer`` on the truth images ``paths`` (gray ones are skipped, counted).

    ``hint_counts``: also colorize every image with that many simulated hints (from the
    truth, seeded by ``hint_seed`` and the file name) and report ab MAE and PSNR per count.
    ``palette_colours``: also colorize every image with its truth's that many dominant
    colours as the palette (no positions).
    """
    totals = _Totals()
    palette_totals = _Accumulator()
    counts = sorted({int(c) for c in hint_counts if int(c) > 0})
    hint_totals = {count: _Accumulator() for count in counts}
    with tqdm(total=len(paths), desc="evaluate", unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch in _batches(_load_truths(paths, totals), colorizer.batch_size):
            _measure(colorizer, batch, totals)
            if counts:
                _measure_hints(colorizer, batch, counts, hint_totals, hint_seed)
            if palette_colours:
                _measure_palette(colorizer, batch, palette_colours, palette_totals)
            bar.set_postfix(skipped=totals.skipped_gray + totals.skipped_unreadable, refresh=False)
            bar.update(totals.files_seen - bar.n)
        bar.update(totals.files_seen - bar.n)
    if not totals.truth.images:
        raise EvaluationError(
            f"no colour images to evaluate among {len(paths)} files "
            f"({totals.skipped_gray} gray, {totals.skipped_unreadable} unreadable)"
        )
    return EvaluationReport(
        model=colorizer.model_name,
        model_sha256=colorizer.model_sha256,
        split=split,
        images=totals.truth.images,
        skipped_gray=totals.skipped_gray,
        skipped_unreadable=totals.skipped_unreadable,
        chroma_size=colorizer.chroma_size,
        **colorizer.refinement.as_dict(),
        metrics=totals.model.result(totals.truth),
        gray_baseline=totals.gray.result(totals.truth),
        hints=_hint_rows(hint_counts, totals.model, hint_totals),
        hint_seed=hint_seed,
        palette=_palette_row(palette_colours, palette_totals),
    )


def _palette_row(colours: int, acc: _Accumulator) -> PaletteResult | None:
    if not colours or not acc.images:
        return None
    return PaletteResult(
        colours,
        acc.abs_error / max(acc.ab_values, 1),
        acc.psnr / acc.images,
        acc.colorfulness / acc.images,
        acc.contrast / max(acc.contrast_images, 1),
    )


def _hint_rows(
    requested: Sequence[int], automatic: _Accumulator, totals: dict[int, _Accumulator]
) -> list[HintResult]:
    rows = []
    for count in sorted({int(c) for c in requested}):
        acc = automatic if count == 0 else totals[count]
        rows.append(HintResult(count, acc.abs_error / max(acc.ab_values, 1), acc.psnr / max(acc.images, 1)))
    return rows


def format_table(report: EvaluationReport) -> str:
    """The report for people: one row per figure, model beside the gray baseline."""
    m, g = report.metrics, report.gray_baseline
    rows = [
        ("ab MAE (Lab units, lower is better)", m.ab_mae, g.ab_mae, "{:.2f}"),
        ("PSNR RGB (dB)", m.psnr, g.psnr, "{:.2f}"),
        (f"colorfulness (truth {m.colorfulness_truth:.1f})", m.colorfulness, g.colorfulness, "{:.1f}"),
        ("ab histogram intersection (0..1)", m.hist_intersection, g.hist_intersection, "{:.3f}"),
        (
            f"region hue coherence (truth {m.region_coherence_truth:.3f})",
            m.region_coherence,
            g.region_coherence,
            "{:.3f}",
        ),
        (f"hue contrast (truth {m.hue_contrast_truth:.3f})", m.hue_contrast, g.hue_contrast, "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    skipped = f", skipped {report.skipped_gray} gray"
    if report.skipped_unreadable:
        skipped += f", {report.skipped_unreadable} unreadable"
    lines = [
        f"model {report.model} (sha256 {report.model_sha256[:12]})",
        f"split {report.split}: {report.images} images{skipped}; chroma size {report.chroma_size}, "
        f"hue scale {report.hue_scale:g}, guide radius {report.guide_radius} (eps {report.guide_eps:g}), "
        f"region hue {report.region_hue:g} (size {report.region_size}, scale {report.region_scale:g}), "
        f"chroma gain {report.chroma_gain:g}",
        "",
        f"{'':{width}}  {'model':>10}  {'gray':>10}",
    ]
    for label, model_value, gray_value, spec in rows:
        lines.append(f"{label:{width}}  {spec.format(model_value):>10}  {spec.format(gray_value):>10}")
    if report.hints:
        lines += [
            "",
            f"simulated hints (seed {report.hint_seed}): ab MAE (x gray) and PSNR",
            f"{'hints':>6}  {'ab MAE':>8}  {'x gray':>7}  {'PSNR':>7}",
        ]
        for row in report.hints:
            lines.append(
                f"{row.points:>6}  {row.ab_mae:>8.2f}  {row.ab_mae / g.ab_mae:>6.2f}x  {row.psnr:>7.2f}"
            )
        lines.append(f"{'gray':>6}  {g.ab_mae:>8.2f}  {1.0:>6.2f}x  {g.psnr:>7.2f}")
    if report.palette is not None:
        p = report.palette
        lines += [
            "",
            f"palette: each truth's {p.colours} dominant colours, no positions",
            f"ab MAE {p.ab_mae:.2f} ({p.ab_mae / g.ab_mae:.2f}x gray), PSNR {p.psnr:.2f}, "
            f"colorfulness {p.colorfulness:.1f}, hue contrast {p.hue_contrast:.3f}",
        ]
    return "\n".join(lines)


def _hint_counts(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected counts like 0,1,5,10,20", param_hint="--hints"
        ) from None
    if any(c < 0 for c in counts):
        raise click.BadParameter(f"{text!r}: counts must be >= 0", param_hint="--hints")
    return counts


@click.command("evaluate", context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--split",
    type=click.Choice(["val", "all"]),
    default="val",
    show_default=True,
    help="val: the validation split training used (same hash of the relative path); all: every image.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=None,
    help="Validation fraction of the split. Default: trainer.val_fraction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@chroma_size_option
@click.option(
    "--hue-scale",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Hue coherence neighbourhood (fraction of the long side, 0 = off). Default: engine.hue_scale.",
)
@click.option(
    "--guide-radius",
    type=click.IntRange(min=0),
    default=None,
    help="Lightness-guided filter radius (0 = off). Default: engine.guide_radius.",
)
@click.option(
    "--region-hue",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Dominant hue per region, 0 (off) to 1. Default: engine.region_hue.",
)
@click.option(
    "--region-scale",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Region size preference (Felzenszwalb scale). Default: engine.region_scale.",
)
@click.option(
    "--chroma-gain",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Predicted chroma x this. Default: engine.chroma_gain.",
)
@click.option(
    "--hints",
    "hints_text",
    default=None,
    metavar="N[,N...]",
    help="Also colorize with N simulated hints per image (from the truth, fixed seed) and report "
    "ab MAE and PSNR per N, e.g. --hints 0,1,5,10,20.",
)
@click.option("--hint-seed", type=int, default=0, show_default=True, help="Seed of the simulated hints.")
@click.option(
    "--palette",
    "palette_colours",
    type=click.IntRange(0, PALETTE_COLOURS),
    default=0,
    metavar="N",
    help="Also colorize with each truth's N dominant colours (k-means of its a,b) as the palette, "
    "without positions, and report ab MAE, PSNR, colorfulness and hue contrast (0 = off).",
)
@click.option(
    "--style-transfer",
    is_flag=True,
    help="Also measure styles as a series uses them: each truth cut into two fields of view A and "
    "B, a style made from 8 simulated hints on A applied to B; B's ab MAE against no style, 10 "
    'hints on B and a gray-statistics style, and B\'s region hue coherence (README, "Styles").',
)
@click.option(
    "--locality",
    is_flag=True,
    help="Also measure hint locality: one hint per image; the share of the pixels of the image's "
    "least alike half of segments that move by more than 10 Lab units (median), local and --spread.",
)
@device_option
@batch_size_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate only the first N files of the split (sorted by path).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@config_option
def evaluate_command(
    model: Path,
    data: Path,
    split: str,
    val_fraction: float | None,
    as_json: bool,
    chroma_size: int | None,
    hue_scale: float | None,
    guide_radius: int | None,
    region_hue: float | None,
    region_scale: float | None,
    chroma_gain: float | None,
    hints_text: str | None,
    hint_seed: int,
    palette_colours: int,
    style_transfer: bool,
    locality: bool,
    device: str | None,
    batch_size: int | None,
    limit: int | None,
    quiet: bool,
    config_path: Path | None,
) -> None:
    """Colorize the ground-truth colour images in DATA with MODEL through the daemon's engine
    and report ab MAE, PSNR, colorfulness, ab-histogram intersection and region hue
    coherence, beside the gray baseline (and the truth's own coherence); with --hints, the
    error with simulated colour hints. MODEL is a generator file (.safetensors) or a training checkpoint (.pt).
    """
    config = load_cli_config(config_path)
    configure_cli_logging(config.logging.level, config.logging.format)
    try:
        paths = select_images(
            data, split, config.trainer.val_fraction if val_fraction is None else val_fraction, limit
        )
        # The service's engine settings (precision included: its numbers, as it would colour
        # them), with the command line's on top.
        given = {
            "device": device,
            "chroma_size": chroma_size,
            "batch_size": batch_size,
            "hue_scale": hue_scale,
            "guide_radius": guide_radius,
            "region_hue": region_hue,
            "region_scale": region_scale,
            "chroma_gain": chroma_gain,
        }
        engine = dataclasses.replace(config.engine, **{k: v for k, v in given.items() if v is not None})
        colorizer = Colorizer.from_config(engine, generator=load_for_evaluation(model, device="cpu"))
        report = evaluate(
            colorizer,
            paths,
            split=split,
            progress=not quiet,
            hint_counts=_hint_counts(hints_text),
            hint_seed=hint_seed,
            palette_colours=palette_colours,
        )
        extra = _style_measurements(colorizer, paths, style_transfer, locality, hint_seed, quiet)
    except (EvaluationError, DataError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    log.info(
        "evaluated",
        model=report.model,
        images=report.images,
        ab_mae=round(report.metrics.ab_mae, 3),
        hist_intersection=round(report.metrics.hist_intersection, 4),
    )
    if as_json:
        click.echo(json.dumps({**report.as_dict(), **{k: v.as_dict() for k, v in extra.items()}}, indent=2))
    else:
        click.echo("\n\n".join([format_table(report), *(format_style_report(v) for v in extra.values())]))


def _style_measurements(
    colorizer: Colorizer, paths: Sequence[Path], style_transfer: bool, locality: bool, seed: int, quiet: bool
) -> dict[str, Any]:
    """--style-transfer and --locality on the same images (gray ones left out)."""
    from trainer import style_transfer as measures

    if not (style_transfer or locality):
        return {}
    totals = _Totals()
    truths = list(
        tqdm(_load_truths(paths, totals), total=len(paths), desc="load", file=sys.stderr, disable=quiet)
    )
    if not truths:
        raise EvaluationError("no colour images for the style measurements")
    extra: dict[str, Any] = {}
    if style_transfer:
        extra["style_transfer"] = measures.style_transfer(
            colorizer, _progress(truths, "styles", quiet), seed=seed
        )
    if locality:
        extra["locality"] = measures.locality(colorizer, _progress(truths, "locality", quiet), seed=seed)
    return extra


def _progress(items: list, desc: str, quiet: bool) -> Iterator:
    return iter(tqdm(items, desc=desc, unit="img", file=sys.stderr, disable=quiet))


def format_style_report(report: Any) -> str:
    """--style-transfer and --locality for people."""
    from trainer.style_transfer import LocalityReport

    if isinstance(report, LocalityReport):
        return (
            f"hint locality ({report.images} images, one hint each): pixels of the unlike half of the "
            f"segments moved > 10 Lab units, median: {report.moved_local:.1%} local, "
            f"{report.moved_spread:.1%} with --spread"
        )
    auto = report.ab_mae_auto
    rows = [
        ("without a style", auto),
        ("with A's style", report.ab_mae_style),
        ("with A's gray-statistics style", report.ab_mae_gray_style),
        ("with 10 hints on B itself", report.ab_mae_hints),
    ]
    lines = [
        f"style transfer ({report.images} images: style from 8 hints on view A, applied to view B)",
        f"{'B colorized':<34}  {'ab MAE':>7}  {'x no style':>10}",
    ]
    lines += [f"{label:<34}  {value:>7.2f}  {value / auto:>9.2f}x" for label, value in rows]
    lines.append(
        f"region hue coherence: with the style {report.coherence_style:.3f}, without "
        f"{report.coherence_auto:.3f}, truth {report.coherence_truth:.3f}"
    )
    return "\n".join(lines)
