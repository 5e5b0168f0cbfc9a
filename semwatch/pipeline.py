"""Decode -> colorize -> encode + atomic write + provenance: the one path every image takes.

The daemon, `semwatch colorize`, the web UI and the benchmarks all drive these steps;
what differs between them stays with them (the daemon's leases and job bookkeeping, the
CLI's progress bar, the UI's session state). Each step has one wording for its failure:
``decode_error``, ``colorize_error``, ``write_error``.

:class:`Pipeline` runs a list of tasks with decoding of the next batch and writing of the
previous one in threads beside the engine, so the CPU or GPU is not idle during file I/O;
the threads and the write backlog are :class:`semwatch.stages.Stages`, which the daemon's
worker cycle drives too.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semwatch.errors import one_line
from semwatch.hints import Hint, HintError, check_hints_fit
from semwatch.imaging import DecodedImage, ImageError, build_provenance, read_image, write_image
from semwatch.log import get_logger
from semwatch.palette import palette_provenance
from semwatch.sidecars import copy_sidecars
from semwatch.stages import Stages, decode_outcome, log_warnings
from semwatch.styles import StyleError, palette_for

if TYPE_CHECKING:
    from semwatch.config import OutputConfig
    from semwatch.engine import Colorizer, EngineInfo
    from semwatch.palette import Palette
    from semwatch.styles import Style

log = get_logger(__name__)


@dataclass(frozen=True)
class Task:
    """One image to colorize: where it is read, where its output goes, what steers it."""

    source: Path
    target: Path
    hints: tuple[Hint, ...] = ()
    # A style whose matching regions take its colours (semwatch.styles); None: no style.
    style: Style | None = None
    # Hints pull every other object toward their colour (the behaviour before issue 20).
    spread: bool = False
    # Colours without positions for the whole frame (semwatch.palette); None: the style's
    # palette if it has one, else the model chooses.
    palette: Palette | None = None
    # As recorded in the provenance (the web UI records an upload's name); default: source.
    source_path: str | None = None

    @property
    def recorded_path(self) -> str:
        return self.source_path if self.source_path is not None else str(self.source)


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are written: format, JPEG quality, sidecar suffixes copied beside them."""

    fmt: str = "tiff"
    jpeg_quality: int = 95
    sidecars: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: OutputConfig, fmt: str | None = None) -> OutputSettings:
        return cls(fmt or cfg.format, cfg.jpeg_quality, tuple(cfg.sidecars))


@dataclass(frozen=True)
class Result:
    """What became of one task: written (error None), or the one-line reason it was not."""

    task: Task
    error: str | None = None
    sidecars: int = 0  # sidecar files copied beside the output

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def line(self) -> str:
        """The error as one line that names the file."""
        reason = self.error or "ok"
        source = str(self.task.source)
        return reason if source in reason else f"{source}: {reason}"


# --------------------------------------------------------------------------- the steps


def decode(
    source: Path, *, max_pixels: int, inside: Path | None = None, max_memory: int | None = None
) -> DecodedImage:
    """The image as gray levels with its metadata; ImageError when it cannot be read.
    ``inside``: the folder it must stay in (symlinks never leading out of it);
    ``max_memory``: what one image may take (``memory_cap(engine.max_image_mb)``, budget.py)."""
    return read_image(source, max_pixels=max_pixels, inside=inside, max_memory=max_memory)


def colorize_batch(
    colorizer: Colorizer,
    images: Sequence[DecodedImage],
    hints: Sequence[Sequence[Hint]] | None = None,
    styles: Sequence[Style | None] | None = None,
    spread: Sequence[bool] | None = None,
    palettes: Sequence[Palette | None] | None = None,
) -> list[np.ndarray | Exception]:
    """RGB per image from one batched pass; when the batch fails, image by image, so one
    image that breaks the engine costs only its own output. A failed image's entry is the
    exception (``colorize_error`` words it)."""
    per_image = hints if hints and any(hints) else None
    per_style = styles if styles and any(s is not None for s in styles) else None
    spreads = list(spread) if spread and any(spread) else None
    per_palette = palettes if palettes and any(p is not None for p in palettes) else None
    # Only what is asked for: a plain batch is the plain call it always was.
    steer: dict[str, Any] = {}
    if per_style is not None:
        steer["styles"] = per_style
    if spreads is not None:
        steer["spread"] = spreads
    if per_palette is not None:
        steer["palettes"] = per_palette
    try:
        return list(colorizer.colorize(images, hints=per_image, **steer))
    except Exception as exc:  # noqa: BLE001 - sorted out image by image below
        if len(images) == 1:
            log.error("colorization failed", error=one_line(exc), exc_info=exc)
            return [exc]
        log.warning("batch failed, retrying image by image", images=len(images), error=one_line(exc))
    results: list[np.ndarray | Exception] = []
    for index, image in enumerate(images):
        results += colorize_batch(
            colorizer,
            [image],
            [per_image[index]] if per_image else None,
            [per_style[index]] if per_style else None,
            [spreads[index]] if spreads else None,
            [per_palette[index]] if per_palette else None,
        )
    return results


def provenance(
    image: DecodedImage,
    info: EngineInfo,
    *,
    source_path: str,
    hints: Sequence[Hint] = (),
    style: Style | None = None,
    palette: Palette | None = None,
    spread: bool = False,
) -> dict[str, Any]:
    """The provenance record of an output (DESIGN.md "Input and output"). ``palette``: the
    one given for the image; recorded is the one used (semwatch.styles.palette_for).
    ``spread`` is recorded only where it changed something: with hints or a style."""
    used, origin = palette_for(palette, style, hints)
    return build_provenance(
        image,
        source_path=source_path,
        **info.as_record(),
        hints=[hint.as_record() for hint in hints] or None,
        style=style.record if style is not None else None,
        palette=(palette_provenance(used, origin) if used is not None and origin is not None else None),
        spread=spread and bool(hints or style),
    )


def write_output(
    task: Task, image: DecodedImage, rgb: np.ndarray, info: EngineInfo, output: OutputSettings
) -> int:
    """Encode and write atomically (a reader never sees a partial file), then copy the
    source's sidecars beside it; returns how many. Raises OSError for the image's output
    (``write_error`` words it); a sidecar that cannot be copied is a warning, not a failure."""
    write_colorized(task, image, rgb, info, output)
    copies = copy_sidecars(task.source, task.target, output.sidecars)
    for failure in copies.failures:
        log.warning(
            "sidecar not copied", path=str(failure.source), output=str(task.target), error=failure.reason
        )
    return copies.copied


def write_colorized(
    task: Task, image: DecodedImage, rgb: np.ndarray, info: EngineInfo, output: OutputSettings
) -> None:
    """Encode and write the output image atomically (no sidecars). Raises OSError."""
    write_image(
        task.target,
        rgb,
        fmt=output.fmt,
        metadata=image.metadata,
        provenance=provenance(
            image,
            info,
            source_path=task.recorded_path,
            hints=task.hints,
            style=task.style,
            palette=task.palette,
            spread=task.spread,
        ),
        jpeg_quality=output.jpeg_quality,
    )


# --------------------------------------------------------------------------- failure texts


def decode_error(exc: BaseException) -> str:
    """Why a source could not be decoded (without its path: ImageError's reason)."""
    if isinstance(exc, ImageError):
        return exc.reason
    return f"decode failed: {one_line(exc)}"


def colorize_error(exc: BaseException) -> str:
    return f"colorization failed: {one_line(exc)}"


def write_error(target: Path, exc: BaseException) -> str:
    """Why an output could not be written; a name too long for the file system is shortened."""
    if not (isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG):
        return f"cannot write {target}: {one_line(exc)}"
    name = target.name
    shown = name if len(name) <= 60 else f"{name[:30]}…{name[-20:]}"
    return (
        f"cannot write the output: {exc.strerror} ({len(os.fsencode(name))}-byte name "
        f"{shown} in {target.parent})"
    )


# --------------------------------------------------------------------------- a run of tasks


class Pipeline:
    """Runs tasks through the steps in batches of ``colorizer.batch_size``: the next batch
    is decoded and the previous one written while the engine computes."""

    def __init__(
        self, colorizer: Colorizer, output: OutputSettings, *, max_pixels: int, max_memory: int | None = None
    ) -> None:
        self.colorizer = colorizer
        self.output = output
        self.max_pixels = max_pixels
        self.max_memory = max_memory

    def run(self, tasks: Sequence[Task], on_result: Callable[[Result], None] | None = None) -> list[Result]:
        """Every task's result, in the order they finished; ``on_result`` sees each at once."""
        results: list[Result] = []

        def record(result: Result) -> None:
            results.append(result)
            if on_result is not None:
                on_result(result)

        with Stages(
            batch_size=lambda: self.colorizer.batch_size, on_written=lambda future: record(future.result())
        ) as stages:
            for batch, decoded in self._decoded_batches(tasks, stages):
                ready = self._usable(batch, decoded, record)
                info = self.colorizer.info
                for (task, image), rgb in zip(ready, self._colorize(ready, stages, record)):
                    if rgb is not None:
                        stages.write(self.write_one, task, image, rgb, info)
                stages.collect()
            stages.drain()
        return results

    def write_one(self, task: Task, image: DecodedImage, rgb: np.ndarray, info: EngineInfo) -> Result:
        """Write one output; never raises (a failure is the result's error)."""
        try:
            return Result(task, sidecars=write_output(task, image, rgb, info, self.output))
        except OSError as exc:
            return Result(task, write_error(task.target, exc))
        except Exception as exc:  # noqa: BLE001 - one output must not stop the others
            log.error("unexpected error writing", path=str(task.target), exc_info=exc)
            return Result(task, write_error(task.target, exc))

    def _decoded_batches(
        self, tasks: Sequence[Task], stages: Stages
    ) -> Iterator[tuple[list[Task], list[DecodedImage | BaseException]]]:
        """Batches with their decode results; the next batch decodes while this one is used."""
        size = self.colorizer.batch_size
        batches = [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]
        upcoming = [stages.decode(self._decode, task) for task in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            current = upcoming
            if index + 1 < len(batches):
                upcoming = [stages.decode(self._decode, task) for task in batches[index + 1]]
            yield batch, [decode_outcome(future, str(task.source)) for task, future in zip(batch, current)]

    def _decode(self, task: Task) -> DecodedImage:
        return decode(task.source, max_pixels=self.max_pixels, max_memory=self.max_memory)

    def _usable(
        self, batch: list[Task], decoded: list[DecodedImage | BaseException], record: Callable[[Result], None]
    ) -> list[tuple[Task, DecodedImage]]:
        """The decoded images whose hints fit them; the others are recorded as failed."""
        ready = []
        for task, item in zip(batch, decoded):
            if isinstance(item, BaseException):
                record(Result(task, decode_error(item)))
                continue
            log_warnings(item, str(task.source))
            try:
                check_hints_fit(task.hints, *item.gray.shape, source=str(task.source))
                if task.style is not None:
                    self.colorizer.check_style(task.style)
            except (HintError, StyleError) as exc:
                record(Result(task, str(exc)))
                continue
            ready.append((task, item))
        return ready

    def _colorize(
        self, ready: list[tuple[Task, DecodedImage]], stages: Stages, record: Callable[[Result], None]
    ) -> list[np.ndarray | None]:
        if not ready:
            return []
        rgbs = stages.compute(
            "compute",
            colorize_batch,
            self.colorizer,
            [image for _, image in ready],
            [task.hints for task, _ in ready],
            [task.style for task, _ in ready],
            [task.spread for task, _ in ready],
            [task.palette for task, _ in ready],
        )
        out: list[np.ndarray | None] = []
        for (task, _), rgb in zip(ready, rgbs):
            if isinstance(rgb, Exception):
                record(Result(task, colorize_error(rgb)))
                out.append(None)
            else:
                out.append(rgb)
        return out
