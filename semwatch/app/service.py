"""The one place the web UI decodes, colorizes and writes images: through the pipeline
(:mod:`semwatch.pipeline`) that the daemon and `semwatch colorize` drive, so a UI result
carries the same provenance and tags as the service's outputs. No Streamlit here: the
pages hold the state, this holds the work.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from semwatch.config import EngineConfig
from semwatch.engine import Colorizer
from semwatch.hints import Hint, check_hints_fit
from semwatch.imaging import FORMAT_EXTENSIONS, DecodedImage
from semwatch.log import get_logger
from semwatch.pipeline import OutputSettings, Task, colorize_batch, decode, write_output

log = get_logger(__name__)

# One colorization at a time per process: sessions share one model (loaded once), and two
# at once on a small CPU would only split its cores and both answer late.
_ENGINE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Colorized:
    """One colorized image: the decoded source, its RGB result and what steered it."""

    image: DecodedImage
    rgb: np.ndarray
    hints: tuple[Hint, ...]
    source_path: str  # as recorded in the provenance: the upload's name or the source file
    seconds: float  # time in the engine (lock wait excluded)


def load_colorizer(engine: EngineConfig) -> Colorizer:
    """The service's engine, with the service's settings (refinements included)."""
    started = time.perf_counter()
    colorizer = Colorizer.from_config(engine)
    log.info(
        "model loaded",
        model=colorizer.model_name,
        sha256=colorizer.model_sha256[:12],
        device=colorizer.device,
        seconds=round(time.perf_counter() - started, 2),
    )
    return colorizer


def decode_upload(data: bytes, name: str, *, max_pixels: int) -> DecodedImage:
    """Decode uploaded bytes like a file of the service (ImageError when it is not an image).

    read_image reads, hashes and decodes a path, so the upload is written to a private
    temporary folder first and removed at once.
    """
    safe_name = PurePath(name).name or "upload"
    with tempfile.TemporaryDirectory(prefix="semwatch-upload-") as folder:
        path = Path(folder) / safe_name
        path.write_bytes(data)
        image = decode(path, max_pixels=max_pixels)
    return dataclasses.replace(image, path=Path(safe_name))


def decode_file(path: Path, *, max_pixels: int, inside: Path) -> DecodedImage:
    """Decode a file of the watch folder (a finished job's source) by the daemon's rule: a
    regular file inside ``inside``, reached without following a symlink out of it."""
    return decode(path, max_pixels=max_pixels, inside=inside)


def colorize(
    colorizer: Colorizer, image: DecodedImage, hints: Sequence[Hint], *, source_path: str
) -> Colorized:
    """Colorize one decoded image; ``hints`` in the image's pixels (HintError if outside)."""
    hints = tuple(hints)
    check_hints_fit(hints, *image.gray.shape, source=source_path)
    with _ENGINE_LOCK:
        started = time.perf_counter()
        rgb = colorize_batch(colorizer, [image], [hints])[0]
        seconds = time.perf_counter() - started
    if isinstance(rgb, Exception):
        raise rgb
    log.info(
        "colorized in the web UI",
        source=source_path,
        hints=len(hints),
        shape=list(image.gray.shape),
        seconds=round(seconds, 3),
    )
    return Colorized(image, rgb, hints, source_path, seconds)


def colorize_quick(
    colorizer: Colorizer, image: DecodedImage, hints: Sequence[Hint], *, long_side: int
) -> np.ndarray:
    """A quick look at the result: the same engine on a copy whose long side is
    ``long_side``, hints scaled with it. The generator sees the same down-scaled input
    either way; what costs on a large frame is the work at full resolution, skipped here."""
    height, width = image.gray.shape
    scale = long_side / max(height, width)
    if scale >= 1:
        return colorize(colorizer, image, hints, source_path=str(image.path)).rgb
    small = np.asarray(
        Image.fromarray(image.gray).resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
        )
    )
    bar = image.databar_row
    small_image = dataclasses.replace(
        image, gray=small, databar_row=None if bar is None else int(bar * scale)
    )
    small_hints = [
        dataclasses.replace(h, x=min(h.x * scale, small.shape[1] - 1), y=min(h.y * scale, small.shape[0] - 1))
        for h in hints
    ]
    with _ENGINE_LOCK:
        rgb = colorize_batch(colorizer, [small_image], [small_hints])[0]
    if isinstance(rgb, Exception):
        raise rgb
    return rgb


def write(target: Path, result: Colorized, colorizer: Colorizer, *, fmt: str, jpeg_quality: int = 95) -> None:
    """Write a result atomically with the source's metadata and the provenance."""
    # No sidecars: an upload has none, and a finished job's were copied by the service.
    task = Task(result.image.path, target, result.hints, source_path=result.source_path)
    write_output(task, result.image, result.rgb, colorizer.info, OutputSettings(fmt, jpeg_quality))


def encode(result: Colorized, colorizer: Colorizer, *, fmt: str, jpeg_quality: int = 95) -> bytes:
    """A download's bytes: the same writer as the service's outputs (so the same tags and
    provenance), into a private temporary folder, read back."""
    with tempfile.TemporaryDirectory(prefix="semwatch-download-") as folder:
        target = Path(folder) / f"result{FORMAT_EXTENSIONS[fmt]}"
        write(target, result, colorizer, fmt=fmt, jpeg_quality=jpeg_quality)
        return target.read_bytes()
