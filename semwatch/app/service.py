"""The one place the web UI decodes, colorizes and writes images: through the pipeline
(:mod:`semwatch.pipeline`) that the daemon and `semwatch colorize` drive, so a UI result
carries the same provenance and tags as the service's outputs. No Streamlit here: the
pages hold the state, this holds the work.
"""

from __future__ import annotations

import dataclasses
import os
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
from semwatch.imaging import FORMAT_EXTENSIONS, DecodedImage, memory_cap
from semwatch.log import get_logger
from semwatch.palette import Palette
from semwatch.paths import rel_inside
from semwatch.pipeline import OutputSettings, Task, colorize_batch, decode, write_output
from semwatch.styles import (
    STYLE_FILENAME,
    Style,
    StyleError,
    load_style,
    make_style,
    parse_style_bytes,
    save_style,
)

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
    style: Style | None = None  # recorded in the provenance (name and SHA-256)
    spread: bool = False
    palette: Palette | None = None  # given on the page; recorded in the provenance


def load_colorizer(engine: EngineConfig) -> Colorizer:
    """The service's engine, with the service's settings (refinements included)."""
    started = time.perf_counter()
    colorizer = Colorizer.from_config(engine)
    log.info("model loaded", **colorizer.info.log_fields(), seconds=round(time.perf_counter() - started, 2))
    return colorizer


def decode_upload(data: bytes, name: str, *, engine: EngineConfig) -> DecodedImage:
    """Decode uploaded bytes like a file of the service, within the service's limits
    (``engine.max_pixels``, ``engine.max_image_mb``): ImageTooLarge for an image the
    server must not take on, ImageError when it is not an image.

    read_image reads, hashes and decodes a path, so the upload is written to a private
    temporary folder first and removed at once.
    """
    safe_name = PurePath(name).name or "upload"
    with tempfile.TemporaryDirectory(prefix="semwatch-upload-") as folder:
        path = Path(folder) / safe_name
        path.write_bytes(data)
        image = decode(path, max_pixels=engine.max_pixels, max_memory=memory_cap(engine.max_image_mb))
    return dataclasses.replace(image, path=Path(safe_name))


def decode_file(path: Path, *, engine: EngineConfig, inside: Path) -> DecodedImage:
    """Decode a file of the watch folder (a finished job's source) by the daemon's rule: a
    regular file inside ``inside``, reached without following a symlink out of it, within
    the service's limits."""
    return decode(
        path, max_pixels=engine.max_pixels, max_memory=memory_cap(engine.max_image_mb), inside=inside
    )


def colorize(
    colorizer: Colorizer,
    image: DecodedImage,
    hints: Sequence[Hint],
    *,
    source_path: str,
    style: Style | None = None,
    spread: bool = False,
    palette: Palette | None = None,
) -> Colorized:
    """Colorize one decoded image; ``hints`` in the image's pixels (HintError if outside),
    ``style`` applied (StyleError when it was made with another model), ``palette`` given
    (it wins over the style's)."""
    hints = tuple(hints)
    check_hints_fit(hints, *image.gray.shape, source=source_path)
    if style is not None:
        colorizer.check_style(style)
    with _ENGINE_LOCK:
        started = time.perf_counter()
        rgb = colorize_batch(colorizer, [image], [hints], [style], [spread], [palette])[0]
        seconds = time.perf_counter() - started
    if isinstance(rgb, Exception):
        raise rgb
    log.info(
        "colorized in the web UI",
        source=source_path,
        hints=len(hints),
        style=style.name if style is not None else None,
        spread=spread,
        palette=palette.as_text() if palette is not None else None,
        shape=list(image.gray.shape),
        seconds=round(seconds, 3),
    )
    return Colorized(image, rgb, hints, source_path, seconds, style, spread, palette)


def colorize_quick(
    colorizer: Colorizer,
    image: DecodedImage,
    hints: Sequence[Hint],
    *,
    long_side: int,
    style: Style | None = None,
    spread: bool = False,
    palette: Palette | None = None,
) -> np.ndarray:
    """A quick look at the result: the same engine on a copy whose long side is
    ``long_side``, hints scaled with it. The generator sees the same down-scaled input
    either way; what costs on a large frame is the work at full resolution, skipped here."""
    height, width = image.gray.shape
    scale = long_side / max(height, width)
    if scale >= 1:
        return colorize(
            colorizer, image, hints, source_path=str(image.path), style=style, spread=spread, palette=palette
        ).rgb
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
        rgb = colorize_batch(colorizer, [small_image], [small_hints], [style], [spread], [palette])[0]
    if isinstance(rgb, Exception):
        raise rgb
    return rgb


def write(target: Path, result: Colorized, colorizer: Colorizer, *, fmt: str, jpeg_quality: int = 95) -> None:
    """Write a result atomically with the source's metadata and the provenance."""
    # No sidecars: an upload has none, and a finished job's were copied by the service.
    task = Task(
        result.image.path,
        target,
        result.hints,
        style=result.style,
        spread=result.spread,
        palette=result.palette,
        source_path=result.source_path,
    )
    write_output(task, result.image, result.rgb, colorizer.info, OutputSettings(fmt, jpeg_quality))


def encode(result: Colorized, colorizer: Colorizer, *, fmt: str, jpeg_quality: int = 95) -> bytes:
    """A download's bytes: the same writer as the service's outputs (so the same tags and
    provenance), into a private temporary folder, read back."""
    with tempfile.TemporaryDirectory(prefix="semwatch-download-") as folder:
        target = Path(folder) / f"result{FORMAT_EXTENSIONS[fmt]}"
        write(target, result, colorizer, fmt=fmt, jpeg_quality=jpeg_quality)
        return target.read_bytes()


# --------------------------------------------------------------------------- styles

# How many style files the watch tree offers at most (a tree is walked on every page run
# that shows the picker; a facility's tree has a handful).
MAX_LISTED_STYLES = 200


def style_from_hints(colorizer: Colorizer, result: Colorized, name: str) -> Style:
    """A style made from a result's hints on its image, keeping the palette given on the
    page, if any (StyleError without usable hints)."""
    with _ENGINE_LOCK:
        return make_style(
            colorizer,
            result.image,
            result.hints,
            name=name,
            source_name=PurePath(result.source_path).name,
            source_sha256=result.image.sha256,
            palette=result.palette,
        )


def read_style_upload(data: bytes, name: str) -> Style:
    """A style from uploaded bytes, as strict as a file (StyleError naming the upload)."""
    return parse_style_bytes(data, PurePath(name).name or "upload")


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    return rel_inside(os.path.realpath(root), os.path.realpath(path)) is not None


def watch_styles(input_dir: Path) -> list[Path]:
    """The style files of the watch tree (relative to it), sorted; symlinked folders are not
    followed and a style file leading out of the tree is left out."""
    root = Path(input_dir)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if STYLE_FILENAME in files:
            path = Path(folder) / STYLE_FILENAME
            if _inside(root, path):
                found.append(path.relative_to(root))
            if len(found) >= MAX_LISTED_STYLES:
                break
    return sorted(found, key=lambda p: p.parent.parts)  # a folder's style before its subfolders'


def read_watch_style(input_dir: Path, relative: Path) -> Style:
    """A style file of the watch tree by its path relative to it (StyleError when the path
    leads out of the tree or the file cannot be used)."""
    path = Path(input_dir) / relative
    if relative.is_absolute() or ".." in relative.parts or not _inside(input_dir, path):
        raise StyleError(f"{relative}: not a style file inside the watch folder")
    return load_style(path)


def folder_style_target(input_dir: Path, source: Path) -> Path:
    """Where the folder style of a job's source goes: ``semwatch-style.json`` in the
    source's folder; StyleError when that folder or the file leads out of the watch tree."""
    target = Path(source).parent / STYLE_FILENAME
    if not _inside(input_dir, target.parent) or not _inside(input_dir, target):
        raise StyleError(f"{target}: leads outside the watch folder {input_dir}")
    return target


def write_folder_style(style: Style, input_dir: Path, source: Path) -> Style:
    """Write ``style`` as the folder style of ``source``'s folder (atomically: the service
    reads either the old file or the new one); returns it as the service will read it."""
    target = folder_style_target(input_dir, source)
    saved = save_style(style, target)
    log.info("folder style written in the web UI", path=str(target), name=style.name)
    return saved
