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
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import numpy as np
import torch
from tqdm import tqdm

from semwatch.color import gray_levels_to_l, rgb_to_lab
from semwatch.config import Config, ConfigError, load_config
from semwatch.engine import Colorizer, EngineError, GrayImage, Refinement
from semwatch.log import configure_logging, get_logger
from semwatch.model import LoadedGenerator, ModelError, file_sha256
from trainer.checkpoint import CheckpointError, load_any_generator
from trainer.data import DataError, is_really_gray, list_images, load_rgb, split_of
from trainer.metrics import ab_histogram, colorfulness, histogram_intersection, psnr

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

    def add(self, rgb: torch.Tensor, lab: torch.Tensor, truth_rgb: torch.Tensor, truth_lab: torch.Tensor) -> None:
        """rgb / truth_rgb (3, H, W) float in [0, 1]; lab / truth_lab (3, H, W) Lab."""
        ab, ab_true = lab[1:], truth_lab[1:]
        self.abs_error += float((ab - ab_true).abs().sum(dtype=torch.float64))
        self.ab_values += ab.numel()
        self.psnr += float(psnr(rgb, truth_rgb)[0])
        self.colorfulness += float(colorfulness(rgb)[0])
        self.images += 1
        hist = ab_histogram(ab, chroma_min=HIST_CHROMA_MIN, bin_size=HIST_BIN_SIZE)
        self.hist = hist if self.hist is None else self.hist + hist

    def result(self, truth: "_Accumulator") -> MetricSet:
        assert self.images and self.hist is not None and truth.hist is not None
        return MetricSet(
            ab_mae=self.abs_error / self.ab_values,
            psnr=self.psnr / self.images,
            colorfulness=self.colorfulness / self.images,
            colorfulness_truth=truth.colorfulness / truth.images,
            hist_intersection=histogram_intersection(self.hist, truth.hist),
        )


@dataclass
class _Totals:
    model: _Accumulator = field(default_factory=_Accumulator)
    gray: _Accumulator = field(default_factory=_Accumulator)
    truth: _Accumulator = field(default_factory=_Accumulator)  # colorfulness + histogram only
    skipped_gray: int = 0
    skipped_unreadable: int = 0
    files_seen: int = 0  # for the progress bar: skipped files count as done


def gray_from_lightness(lightness: torch.Tensor) -> torch.Tensor:
    """CIE L (any shape) -> uint8 gray level g whose sRGB gray (g, g, g) has the nearest L."""
    table = gray_levels_to_l().to(device=lightness.device, dtype=torch.float32)
    lightness = lightness.float().contiguous()
    upper = torch.searchsorted(table, lightness).clamp_(1, table.numel() - 1)
    lower = upper - 1
    take_upper = (table[upper] - lightness) < (lightness - table[lower])
    return torch.where(take_upper, upper, lower).to(torch.uint8)


def rgb_u8_to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float().div_(255.0)


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
    return LoadedGenerator(model=model, config=config, card=card, path=path,
                           sha256=file_sha256(path), name=name)


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
            log.warning("skipping gray image (no colour truth)", path=str(path))
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


def _measure(colorizer: Colorizer, batch: list[tuple[Path, np.ndarray]], totals: _Totals) -> None:
    """Colorize one batch of truths through the engine and add every figure to the totals."""
    device = colorizer.device_obj
    truths = [rgb_u8_to_tensor(rgb, device) for _, rgb in batch]
    truth_labs = [rgb_to_lab(t[None])[0] for t in truths]
    grays = [gray_from_lightness(lab[0]) for lab in truth_labs]
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


def evaluate(
    colorizer: Colorizer,
    paths: Sequence[Path],
    *,
    split: str = "all",
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate ``colorizer`` on the truth images ``paths`` (gray ones are skipped, counted)."""
    totals = _Totals()
    with tqdm(total=len(paths), desc="evaluate", unit="img", file=sys.stderr,
              disable=not progress) as bar:
        for batch in _batches(_load_truths(paths, totals), colorizer.batch_size):
            _measure(colorizer, batch, totals)
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
    )


def format_table(report: EvaluationReport) -> str:
    """The report for people: one row per figure, model beside the gray baseline."""
    m, g = report.metrics, report.gray_baseline
    rows = [
        ("ab MAE (Lab units, lower is better)", m.ab_mae, g.ab_mae, "{:.2f}"),
        ("PSNR RGB (dB)", m.psnr, g.psnr, "{:.2f}"),
        ("colorfulness (truth {:.1f})".format(m.colorfulness_truth), m.colorfulness, g.colorfulness, "{:.1f}"),
        ("ab histogram intersection (0..1)", m.hist_intersection, g.hist_intersection, "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    skipped = f", skipped {report.skipped_gray} gray"
    if report.skipped_unreadable:
        skipped += f", {report.skipped_unreadable} unreadable"
    lines = [
        f"model {report.model} (sha256 {report.model_sha256[:12]})",
        f"split {report.split}: {report.images} images{skipped}; chroma size {report.chroma_size}, "
        f"hue scale {report.hue_scale:g}, guide radius {report.guide_radius} (eps {report.guide_eps:g})",
        "",
        f"{'':{width}}  {'model':>10}  {'gray':>10}",
    ]
    for label, model_value, gray_value, spec in rows:
        lines.append(f"{label:{width}}  {spec.format(model_value):>10}  {spec.format(gray_value):>10}")
    return "\n".join(lines)


def _refinement(config: Config, hue_scale: float | None, guide_radius: int | None) -> Refinement:
    """The engine's refinements from the config, with the command line's on top."""
    refinement = Refinement.from_config(config.engine)
    if hue_scale is not None:
        refinement = dataclasses.replace(refinement, hue_scale=hue_scale)
    if guide_radius is not None:
        refinement = dataclasses.replace(refinement, guide_radius=guide_radius)
    return refinement


def _load_cli_config(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["val", "all"]), default="val", show_default=True,
              help="val: the validation split training used (same hash of the relative path); all: every image.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Validation fraction of the split. Default: trainer.val_fraction.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--chroma-size", type=click.IntRange(min=32), default=None,
              help="Long side of the copy the network colors (multiple of 32). Default: engine.chroma_size.")
@click.option("--hue-scale", type=click.FloatRange(min=0.0), default=None,
              help="Hue coherence neighbourhood (fraction of the long side, 0 = off). Default: engine.hue_scale.")
@click.option("--guide-radius", type=click.IntRange(min=0), default=None,
              help="Lightness-guided filter radius (0 = off). Default: engine.guide_radius.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where the network runs. Default: engine.device.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass. Default: engine.batch_size.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N files of the split (sorted by path).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Configuration file (default: $SEMWATCH_CONFIG, ./config.toml, /etc/semwatch/config.toml).")
def evaluate_command(
    model: Path,
    data: Path,
    split: str,
    val_fraction: float | None,
    as_json: bool,
    chroma_size: int | None,
    hue_scale: float | None,
    guide_radius: int | None,
    device: str | None,
    batch_size: int | None,
    limit: int | None,
    quiet: bool,
    config_path: Path | None,
) -> None:
    """Colorize the ground-truth colour images in DATA with MODEL through the daemon's engine
    and report ab MAE, PSNR, colorfulness and ab-histogram intersection, beside the gray
    baseline. MODEL is a generator file (.safetensors) or a training checkpoint (.pt).
    """
    config = _load_cli_config(config_path)
    configure_logging(config.logging.level,
                      "console" if config.logging.format == "auto" else config.logging.format)
    try:
        paths = select_images(data, split, config.trainer.val_fraction if val_fraction is None else val_fraction,
                              limit)
        colorizer = Colorizer(
            load_for_evaluation(model, device="cpu"),
            device=device or config.engine.device,
            backend=config.engine.backend,
            chroma_size=chroma_size or config.engine.chroma_size,
            batch_size=batch_size or config.engine.batch_size,
            refinement=_refinement(config, hue_scale, guide_radius),
        )
        report = evaluate(colorizer, paths, split=split, progress=not quiet)
    except (EvaluationError, DataError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    log.info("evaluated", model=report.model, images=report.images,
             ab_mae=round(report.metrics.ab_mae, 3),
             hist_intersection=round(report.metrics.hist_intersection, 4))
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_table(report))
