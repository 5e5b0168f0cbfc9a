"""The `semwatch` command line: one group, a subcommand per job."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from semwatch import __version__
from semwatch.cli_options import (
    CONTEXT,
    batch_size_option,
    chroma_size_option,
    config_option,
    device_option,
    load_cli_config,
)
from semwatch.log import configure_cli_logging, get_logger

if TYPE_CHECKING:
    # Not at run time: `semwatch status` must not pay for the imaging libraries.
    from semwatch.pipeline import Pipeline, Result, Task

log = get_logger(__name__)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="semwatch")
def main() -> None:
    """semwatch: automatic colorization of scanning electron microscope images.

    \b
    semwatch colorize  colorize files or folders once
    semwatch run       the watch-folder service (what systemd starts)
    semwatch status    what the service's queue holds
    semwatch app       the web UI (colorize with hints, watch the queue)
    semwatch compile   build the TensorRT engines ahead (backend = "tensorrt")
    semwatch style     make and show colour styles (a series' chosen colours)
    """


def _folder_files(folder: Path, output_dir: Path) -> list[Path]:
    """The images under ``folder`` by the watch folder's rules (recursive; no hidden or
    temporary names, no symlink leading out, nothing in the output folder), sorted."""
    from semwatch.walk import WatchRules, walk

    rules = WatchRules.for_images(folder, output_dir=output_dir)
    # Paths under the folder as given (not resolved): outputs mirror what the user named.
    return [folder / rel for rel in sorted(rel for rel, _size, _mtime in walk(rules))]


def plan_tasks(inputs: Sequence[Path], output_dir: Path, fmt: str) -> list[Task]:
    """Map inputs to outputs; a file named directly goes to DIR/<stem>.<ext>, a folder's files
    keep their relative paths. Raises click.UsageError on missing inputs and collisions."""
    from semwatch.imaging import output_name
    from semwatch.layout import OutputLayout
    from semwatch.pipeline import Task

    tasks: list[Task] = []
    for given in inputs:
        if given.is_dir():
            files = _folder_files(given, output_dir)
            if not files:
                log.warning("no supported images in folder", folder=str(given))
            siblings: dict[Path, list[str]] = {}
            for path in files:
                siblings.setdefault(path.parent, []).append(path.name)
            # The daemon's layout: the path under the folder mirrored under the output folder.
            layout = OutputLayout(given, output_dir, fmt)
            for path in files:
                target = layout.target(path.relative_to(given).as_posix(), siblings[path.parent])
                tasks.append(Task(path, target))
        elif given.is_file():
            tasks.append(Task(given, output_dir / output_name(given.name, fmt)))
        else:
            raise click.UsageError(f"{given}: no such file or folder")
    seen: dict[Path, Path] = {}
    for task in tasks:
        key = task.target.resolve()
        if key in seen:
            raise click.UsageError(
                f"{seen[key]} and {task.source} would both be written to {task.target}; "
                "colorize them in separate runs or to separate --output-dir folders"
            )
        seen[key] = task.source
    return tasks


@main.command("colorize", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the colorized images (created if missing).",
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Generator file (.safetensors). Default: engine.model, else the bundled model.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tiff", "png", "jpeg"]),
    default=None,
    help="Output format. Default: output.format (tiff).",
)
@chroma_size_option
@device_option
@batch_size_option
@click.option(
    "--hints",
    "hints_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Colour hints for one input image: a JSON file {"hints": [{"x": 120, "y": 340, '
    '"color": "#e0b030"}, ...]}, x and y in the image\'s pixels (origin top-left); the '
    "colour's hue and saturation are used, the image keeps its own gray as lightness.",
)
@click.option(
    "--style",
    "style_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A style file (semwatch style make): in every input, the objects that match its "
    "prototypes take its colours; the others take the style's palette if it has one, else "
    "keep the automatic colour.",
)
@click.option(
    "--palette",
    "palette_text",
    default=None,
    metavar="COLOURS",
    help='Up to 4 colours for the whole frame, without positions: "#e0b030,#3060d0" (equal '
    'shares) or "#e0b030:0.7,#3060d0:0.3"; the objects are grouped by what they look like '
    "and each group takes the colour whose share fits it. Hints still win where they are. Wins "
    "over a style's palette and over the hints' own colours (hints of two colours or more are "
    "the palette when none is given).",
)
@click.option(
    "--spread",
    is_flag=True,
    help="Hints also pull every other object toward their colour (the behaviour before "
    "styles). Default: a hint colours its object and the objects like it.",
)
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@config_option
def colorize_command(
    inputs: tuple[Path, ...],
    output_dir: Path,
    model: Path | None,
    fmt: str | None,
    chroma_size: int | None,
    device: str | None,
    batch_size: int | None,
    hints_file: Path | None,
    style_file: Path | None,
    palette_text: str | None,
    spread: bool,
    overwrite: bool,
    quiet: bool,
    config_path: Path | None,
) -> None:
    """Colorize INPUT files and folders (recursively) into --output-dir, once.

    Outputs keep the input's size, its gray levels as their lightness, its acquisition
    metadata, and a provenance record (source and model SHA-256); sidecar metadata files
    (output.sidecars: x.txt beside x.tif) are copied beside them. A file named directly is
    written as DIR/<stem>.<ext>; a folder's files keep their paths relative to that folder.
    Nothing is overwritten without --overwrite. A file that cannot be read is reported in one
    line and the rest go on; the exit code is 1 if any input failed.

    With --hints FILE (one input image), the colours of the points in FILE steer the
    colour: the object each point falls in takes that colour, and so do the objects like it
    (with --spread, every other object moves halfway to the nearest hint's colour). The
    hints are recorded in the output's provenance. With --style FILE, every input takes the
    style's colours where its objects match the style's; its name and SHA-256 are recorded.
    With --palette COLOURS (or a style that has a palette), every input is given those
    colours without positions; without one, hints of two colours or more are the palette,
    so the objects no hint reaches take the person's colours too. The palette used, and
    where it came from, is recorded.
    """
    config = load_cli_config(config_path)
    configure_cli_logging(config.logging.level, config.logging.format)
    fmt = fmt or config.output.format
    tasks = plan_tasks(inputs, output_dir, fmt)
    hints = _load_hints_for(hints_file, tasks)
    style = _load_style(style_file)
    palette = _parse_palette(palette_text)
    existing = [t.target for t in tasks if t.target.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise click.UsageError(f"{existing[0]} already exists{more}; pass --overwrite to replace")
    if not tasks:
        click.echo("nothing to colorize", err=True)
        return

    try:
        from semwatch.engine import Colorizer, EngineError
        from semwatch.imaging import memory_cap
        from semwatch.model import ModelError
        from semwatch.pipeline import OutputSettings, Pipeline
    except ModuleNotFoundError as exc:
        from semwatch.dependencies import MissingPackage

        raise click.ClickException(MissingPackage.from_error(exc).message()) from None

    engine_cfg = config.engine
    started = time.perf_counter()
    try:
        # The service's own engine settings (refinements included), with the options on top.
        colorizer = Colorizer.from_config(
            dataclasses.replace(
                engine_cfg,
                model=model if model is not None else engine_cfg.model,
                device=device or engine_cfg.device,
                chroma_size=chroma_size or engine_cfg.chroma_size,
                batch_size=batch_size or engine_cfg.batch_size,
            )
        )
    except (ModelError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    if style is not None:
        try:
            colorizer.check_style(style)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    log.info("model loaded", **colorizer.info.log_fields(), seconds=round(time.perf_counter() - started, 2))
    if hints:
        tasks = [dataclasses.replace(tasks[0], hints=tuple(hints))]
    if style is not None or spread or palette is not None:
        tasks = [dataclasses.replace(task, style=style, spread=spread, palette=palette) for task in tasks]
    pipeline = Pipeline(
        colorizer,
        OutputSettings.of(config.output, fmt),
        max_pixels=engine_cfg.max_pixels,
        max_memory=memory_cap(engine_cfg.max_image_mb),
    )
    failures = run_tasks(tasks, pipeline, progress=not quiet)
    done = len(tasks) - failures
    seconds = time.perf_counter() - started
    click.echo(
        f"colorized {done} of {len(tasks)} images, {failures} failed, in {seconds:.1f} s -> {output_dir}",
        err=True,
    )
    if failures:
        sys.exit(1)


def _load_hints_for(hints_file: Path | None, tasks: Sequence[Task]) -> list | None:
    """The hints of --hints FILE (one input image only), or None; UsageError on bad files."""
    if hints_file is None:
        return None
    from semwatch.hints import HintError, load_hints

    if len(tasks) != 1:
        raise click.UsageError(f"--hints {hints_file}: hints are for one input image, got {len(tasks)}")
    try:
        return load_hints(hints_file)
    except HintError as exc:
        raise click.UsageError(str(exc)) from None


def _load_style(style_file: Path | None):  # noqa: ANN202 - semwatch.styles.Style, imported lazily
    """The style of --style FILE, or None; UsageError naming the file when it is bad."""
    if style_file is None:
        return None
    from semwatch.styles import StyleError, load_style

    try:
        return load_style(style_file)
    except StyleError as exc:
        raise click.UsageError(str(exc)) from None


def _parse_palette(text: str | None):  # noqa: ANN202 - semwatch.palette.Palette, imported lazily
    """The palette of --palette COLOURS, or None; UsageError naming the option and the reason."""
    if text is None:
        return None
    from semwatch.palette import PaletteError, parse_palette

    try:
        return parse_palette(text)
    except PaletteError as exc:
        raise click.UsageError(f"--palette {text!r}: {exc}") from None


def run_tasks(tasks: Sequence[Task], pipeline: Pipeline, *, progress: bool = True) -> int:
    """Colorize every task through the shared pipeline; each failure is one "error:" line
    naming the file. Returns how many failed."""
    from tqdm import tqdm

    failures = 0
    with tqdm(total=len(tasks), unit="img", disable=not progress, file=sys.stderr) as bar:

        def report(result: Result) -> None:
            nonlocal failures
            if not result.ok:
                failures += 1
                tqdm.write(f"error: {result.line}", file=sys.stderr)
            bar.update(1)

        pipeline.run(tasks, on_result=report)
    return failures


def _parse_shape(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[int, int]]:
    shapes = []
    for value in values:
        height, sep, width = value.lower().partition("x")
        if not (sep and height.isdigit() and width.isdigit()) or int(height) % 32 or int(width) % 32:
            raise click.BadParameter(f"{value!r}: expected HEIGHTxWIDTH, multiples of 32 (e.g. 384x512)")
        shapes.append((int(height), int(width)))
    return shapes


@main.command("compile", context_settings=CONTEXT)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    callback=_parse_shape,
    metavar="HxW",
    help="Only this canvas shape (repeatable). Default: every canvas shape of engine.chroma_size.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per engine call. Default: engine.batch_size (what the service uses).",
)
@config_option
def compile_command(shapes: list[tuple[int, int]], batch_size: int | None, config_path: Path | None) -> None:
    """Compile the TensorRT engines the service will use, ahead of its first batches.

    One static-shape engine per canvas shape at engine.batch_size and engine.precision,
    for engine.model on this machine's GPU, saved in engine.cache_dir (default: "engines"
    in daemon.state_dir). Engines already there for the same model, shape, batch,
    precision, TensorRT version and GPU are only checked. Without this, the service
    compiles each shape on its first use (minutes each). Needs a CUDA GPU and the tensorrt
    extra: pip install 'semwatch[tensorrt]'.
    """
    config = load_cli_config(config_path)
    configure_cli_logging(config.logging.level, config.logging.format)
    from semwatch.compile_ahead import compile_engines
    from semwatch.engine import EngineError
    from semwatch.model import ModelError

    if config.engine.backend != "tensorrt":
        click.echo(
            f"note: engine.backend is {config.engine.backend!r}; the service uses these "
            'engines only with backend = "tensorrt"',
            err=True,
        )
    try:
        results = compile_engines(config.engine, shapes or None, batch_size)
    except (ModelError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    for r in results:
        click.echo(
            f"{r.status:<8} {r.shape[0]}x{r.shape[1]} batch {r.batch} {r.precision} "
            f"{r.seconds:7.1f} s  {r.path}"
        )
    if any(r.status == "failed" for r in results):
        sys.exit(1)


def _register_service_commands() -> None:
    """The service's subcommands live in their own modules (run, status, enqueue, retry;
    the web UI's app)."""
    from semwatch.app.launch import app_command
    from semwatch.service_cli import db_command, enqueue_command, retry_command, run_command, status_command
    from semwatch.style_cli import style_group

    commands = (
        run_command,
        status_command,
        enqueue_command,
        retry_command,
        app_command,
        db_command,
        style_group,
    )
    for command in commands:
        main.add_command(command)


_register_service_commands()
