"""Training data: a folder of hand-colorized images -> (L input, ab target) crops.

- Every JPEG/PNG/TIFF under the root (recursively, hidden files and folders left out) is a
  candidate. Each is decoded once at start-up: unreadable files and images that are really
  gray (nothing to learn colour from) are skipped with a warning and counted.
- The decoded images are kept in RAM, down-scaled so that the short side is at most
  ``2 * image_size`` (702 semcolour images at 683x512 are ~0.7 GB): JPEG decoding at
  every step would cost more CPU than the network on a small machine. With DataLoader
  workers, the cache is shared copy-on-write after the fork.
- Training items are random square crops (side a random fraction ``crop_min..1`` of the
  short side) resized to ``image_size``, with random flips and 90-degree rotations (SEM
  has no canonical orientation). The randomness of item ``i`` in epoch ``e`` comes from
  ``(seed, e, i)`` only, so an epoch is the same whichever worker process loads it and
  however often the run was interrupted.
- Validation items are the centre square, resized: the same every epoch.
- The validation split is decided by a hash of each file's path relative to the root,
  so it is stable across machines, runs and additions of new images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from semwatch.color import AB_SCALE, ab_to_target, l_to_input, rgb_to_lab
from semwatch.hints import hint_planes
from semwatch.imaging import ImageError, read_rgb
from semwatch.log import get_logger
from semwatch.palette import palette_planes
from trainer.hints import HintSimulation, PaletteSimulation, sample_points
from trainer.losses import ab_counts

log = get_logger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
# A pixel counts as coloured when its channels differ by more than this (0..255); JPEG
# chroma noise on a gray image stays well below it.
GRAY_CHANNEL_TOLERANCE = 12
# An image is "really gray" when fewer than this fraction of its pixels are coloured. Small
# enough that an image with one coloured detail on a gray field still counts as colour.
GRAY_MAX_COLORED_FRACTION = 0.002


class DataError(ValueError):
    """Training data that cannot be used; str() names the file or folder and the reason."""


@dataclass(frozen=True)
class DataSummary:
    """What a training run saw. ``images`` = files found = train + val + skipped."""

    root: str
    images: int
    train: int
    val: int
    skipped_gray: int
    skipped_bad: int
    val_root: str | None = None  # set when validation came from an explicit --val folder

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageRecord:
    """One usable training image: where it came from and (when cached) its pixels."""

    path: Path
    rel: str  # path relative to its root, POSIX form: what the split hashes
    pixels: np.ndarray | None  # uint8 (H, W, 3), down-scaled; None = decode on access


@dataclass(frozen=True)
class CropConfig:
    image_size: int = 256
    # Smallest random crop side as a fraction of the image's short side; 1.0 = whole short side.
    crop_min: float = 0.5
    augment: bool = True  # random crops, flips and rotations (False: centre crop only)


def list_images(root: Path) -> list[Path]:
    """JPEG/PNG/TIFF files under ``root`` (recursive, no hidden entries), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found: list[Path] = []
    # Not semwatch.walk's WatchRules: a training set is often a folder of symlinks to images elsewhere.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_of(rel_path: str, val_fraction: float) -> str:
    """ "val" or "train" for a relative POSIX path, by its SHA-256: the same everywhere."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if position < val_fraction else "train"


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) sRGB; DataError naming the file otherwise.

    Read through semwatch's own decoder (`semwatch.imaging.read_rgb`), so the levels the
    generator learns from are the ones the daemon gives it: 16-bit and float images through
    the same percentile window (one window for all channels), palette images in their
    colours, gray as (g, g, g). EXIF orientation is ignored: orientation does not matter to
    this training.
    """
    path = Path(path)
    # The data bar is not cut off: a hand-colorized banner was left gray by its colorist,
    # which teaches the model what the daemon does with a bar anyway (leave it gray).
    try:
        return read_rgb(path)
    except ImageError as exc:
        raise DataError(str(exc)) from exc


def is_really_gray(rgb: np.ndarray) -> bool:
    """True when (nearly) no pixel has distinct channels: a gray image saved as RGB."""
    if rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 1):
        return True
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))  # ~250k pixels suffice
    sample = rgb[::step, ::step, :3]
    spread = sample.max(axis=2).astype(np.int16) - sample.min(axis=2).astype(np.int16)
    colored = np.count_nonzero(spread > GRAY_CHANNEL_TOLERANCE) / spread.size
    return colored < GRAY_MAX_COLORED_FRACTION


def ab_l_from_rgb(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) sRGB in [0, 1] -> (L input (N, 1, H, W) = L/50-1, ab target (N, 2, H, W) = ab/110)."""
    lab = rgb_to_lab(rgb.float().clamp(0.0, 1.0))
    return l_to_input(lab[:, :1]), ab_to_target(lab[:, 1:])


def downscale_for_cache(rgb: np.ndarray, max_short_side: int) -> np.ndarray:
    """Shrink (never enlarge) so that the short side is at most ``max_short_side``."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short <= max_short_side:
        return rgb
    scale = max_short_side / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


class ColorDataset(Dataset):
    """Items are (input (C, S, S), ab target (2, S, S)) float32 tensors, S = image_size.

    C is 1 (L alone) or, with ``hints``, 4: L and the hint planes of
    :func:`semwatch.hints.hint_planes`, simulated from the item's own truth.

    Call :meth:`set_epoch` before iterating a new epoch (before the DataLoader iterator is
    created, so that worker processes get it): the augmentation depends on it.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        crop: CropConfig,
        *,
        seed: int = 0,
        cache_short_side: int | None = None,
        hints: HintSimulation | None = None,
        palette: PaletteSimulation | None = None,
    ):
        self.records = list(records)
        self.hints = hints
        self.palette = palette
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.cache_short_side = cache_short_side or 2 * crop.image_size

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pixels(self, index: int) -> np.ndarray:
        record = self.records[index]
        if record.pixels is not None:
            return record.pixels
        return downscale_for_cache(load_rgb(record.path), self.cache_short_side)

    def rgb_crop(self, index: int) -> torch.Tensor:
        """The (3, S, S) float sRGB crop of item ``index`` for the current epoch."""
        rgb = torch.from_numpy(self.pixels(index)).permute(2, 0, 1)
        if not self.crop.augment:
            return _resize_square(_centre_square(rgb), self.crop.image_size)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        h, w = rgb.shape[1:]
        short = min(h, w)
        side = int(round(short * rng.uniform(self.crop.crop_min, 1.0)))
        side = min(short, max(side, 2))
        y0 = int(rng.integers(0, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        out = _resize_square(rgb[:, y0 : y0 + side, x0 : x0 + side], self.crop.image_size)
        if rng.random() < 0.5:
            out = torch.flip(out, dims=(2,))
        quarter_turns = int(rng.integers(0, 4))
        if quarter_turns:
            out = torch.rot90(out, quarter_turns, dims=(1, 2))
        return out.contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        l_input, ab_target = ab_l_from_rgb(self.rgb_crop(index).unsqueeze(0))
        parts = [l_input[0]]
        size = ab_target.shape[-2:]
        truth = ab_target[0] * AB_SCALE
        if self.hints is not None:
            # Its own stream, so switching hints on does not change the crops an epoch sees.
            rng = np.random.default_rng([self.seed, self.epoch, index, 0x41])
            count = self.hints.count(rng)
            points = sample_points(truth, count, rng, patch_max=self.hints.patch_max) if count else []
            parts.append(hint_planes(points, *size))
        if self.palette is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index, 0x9A])
            parts.append(palette_planes(self.palette.draw(truth, rng), *size))
        return (torch.cat(parts) if len(parts) > 1 else parts[0]), ab_target[0]


def truth_ab_counts(dataset: ColorDataset, step: int = 4) -> np.ndarray:
    """Histogram of the a,b of every ``step``-th pixel (each way) of the dataset's images, in
    the rebalancing bins (trainer.losses.ab_counts): the colour prior of the training split."""
    counts = None
    for index in range(len(dataset)):
        rgb = torch.from_numpy(np.ascontiguousarray(dataset.pixels(index)[::step, ::step]))
        _, ab = ab_l_from_rgb(rgb.permute(2, 0, 1).unsqueeze(0).float().div_(255.0))
        found = ab_counts(ab[0] * AB_SCALE)
        counts = found if counts is None else counts + found
    return counts if counts is not None else np.zeros((1, 1))


def _centre_square(rgb: torch.Tensor) -> torch.Tensor:
    h, w = rgb.shape[1:]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return rgb[:, y0 : y0 + side, x0 : x0 + side]


def _resize_square(rgb_u8: torch.Tensor, size: int) -> torch.Tensor:
    """(3, s, s) uint8 -> (3, size, size) float in [0, 1], antialiased when shrinking."""
    x = rgb_u8.unsqueeze(0).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp_(0.0, 1.0)


@dataclass
class _ScanCounts:
    gray: int = 0
    bad: int = 0


def scan_images(
    root: Path, paths: Sequence[Path], *, cache_short_side: int | None, threads: int = 2
) -> tuple[list[ImageRecord], _ScanCounts]:
    """Decode every file once: keep the usable ones (cached if asked), count the rest."""
    counts = _ScanCounts()
    records: list[ImageRecord] = []

    def inspect(path: Path) -> tuple[Path, np.ndarray | None, str | None]:
        try:
            rgb = load_rgb(path)
        except DataError as exc:
            return path, None, str(exc)
        if is_really_gray(rgb):
            return path, None, "gray"
        return path, (downscale_for_cache(rgb, cache_short_side) if cache_short_side else None), None

    # Pillow and tifffile release the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for path, pixels, problem in pool.map(inspect, paths):
            if problem == "gray":
                counts.gray += 1
                log.warning("skipping gray image", path=str(path))
            elif problem is not None:
                counts.bad += 1
                log.warning("skipping unreadable image", path=str(path), error=problem)
            else:
                rel = path.relative_to(root).as_posix()
                records.append(ImageRecord(path=path, rel=rel, pixels=pixels))
    return records, counts


def build_datasets(
    root: Path,
    *,
    image_size: int = 256,
    val_fraction: float = 0.1,
    val_dir: Path | None = None,
    seed: int = 0,
    crop_min: float = 0.5,
    cache: bool = True,
    threads: int = 2,
    hints: HintSimulation | None = None,
    palette: PaletteSimulation | None = None,
) -> tuple[ColorDataset, ColorDataset, DataSummary]:
    """Train and validation datasets from ``root`` (validation: split by hash, or ``val_dir``).

    With ``hints``, training items carry simulated hints and validation items empty hint
    planes: validation measures the automatic colour, the product's default. The same for
    ``palette``: training items are shown their truth's palette by its share, validation
    items none.
    """
    root = Path(root)
    if not 0.0 < crop_min <= 1.0:
        raise ValueError(f"crop_min must be in (0, 1], got {crop_min}")
    cache_side = 2 * image_size if cache else None
    paths = list_images(root)
    if not paths:
        raise DataError(f"{root}: no JPEG/PNG/TIFF images found")
    records, counts = scan_images(root, paths, cache_short_side=cache_side, threads=threads)
    total = len(paths)
    if val_dir is not None:
        val_dir = Path(val_dir)
        val_paths = list_images(val_dir)
        val_records, val_counts = scan_images(
            val_dir, val_paths, cache_short_side=cache_side, threads=threads
        )
        train_records = records
        total += len(val_paths)
        counts.gray += val_counts.gray
        counts.bad += val_counts.bad
    else:
        train_records = [r for r in records if split_of(r.rel, val_fraction) == "train"]
        val_records = [r for r in records if split_of(r.rel, val_fraction) == "val"]
    where = f"{root} (+ {val_dir})" if val_dir else str(root)
    if not train_records:
        raise DataError(
            f"{where}: no usable colour images for training "
            f"({counts.gray} gray, {counts.bad} unreadable of {total})"
        )
    if not val_records:
        raise DataError(
            f"{val_dir or root}: the validation set is empty "
            f"({len(records)} usable images, val_fraction={val_fraction}); "
            "raise val_fraction or give --val DIR"
        )
    summary = DataSummary(
        root=str(root.resolve()),
        images=total,
        train=len(train_records),
        val=len(val_records),
        skipped_gray=counts.gray,
        skipped_bad=counts.bad,
        val_root=str(val_dir.resolve()) if val_dir else None,
    )
    train_ds = ColorDataset(
        train_records,
        CropConfig(image_size, crop_min, augment=True),
        seed=seed,
        cache_short_side=cache_side,
        hints=hints,
        palette=palette,
    )
    val_ds = ColorDataset(
        val_records,
        CropConfig(image_size, crop_min, augment=False),
        seed=seed,
        cache_short_side=cache_side,
        hints=HintSimulation(none_share=1.0) if hints is not None else None,
        palette=PaletteSimulation(share=0.0) if palette is not None else None,
    )
    return train_ds, val_ds, summary


def make_loader(
    dataset: ColorDataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, DistributedSampler]:
    """A DataLoader whose order depends only on (seed, epoch): call ``sampler.set_epoch``.

    The sampler is a DistributedSampler even for one process, so that single-process and
    torchrun runs share one code path and nothing in it draws from a global RNG.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        # A ragged last batch is dropped (the order changes every epoch, so no image is
        # left out for good): BatchNorm cannot train on a lone image at small crop sizes,
        # and equal batches keep its statistics comparable. Tiny sets keep their one batch.
        drop_last=len(sampler) >= batch_size,
        # Only the base seed of workers is drawn from it; kept apart from the global RNG.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,  # workers must see the dataset's new epoch each time
    )
    return loader, sampler


def shard_indices(length: int, rank: int, world_size: int) -> list[int]:
    """Validation shard of one rank: every index exactly once over all ranks (no padding)."""
    return list(range(rank, length, world_size))


def iter_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])
