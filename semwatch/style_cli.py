"""``semwatch style make`` and ``semwatch style show``: style files from the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from semwatch.cli_options import CONTEXT, config_option, device_option, load_cli_config
from semwatch.log import configure_cli_logging


@click.group("style", context_settings=CONTEXT)
def style_group() -> None:
    """Colour styles: a person's chosen colours, carried to every image of a series.

    \b
    semwatch style make IMAGE --hints FILE -o STYLE.json   make one from a hinted image
    semwatch style show STYLE.json                         what a style holds

    Apply one with `semwatch colorize --style STYLE.json`, or put it in a watch folder as
    semwatch-style.json: the service applies it to every image in that folder and below.
    """


@style_group.command("make", context_settings=CONTEXT)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--hints",
    "hints_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='The hints on IMAGE: a JSON file {"hints": [{"x": 120, "y": 340, "color": "#e0b030"}, ...]}.',
)
@click.option(
    "--from",
    "from_style",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Re-derive this style (made with another model) from its own source IMAGE and hints.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The style file to write (JSON).",
)
@click.option(
    "--palette",
    "palette_text",
    default=None,
    metavar="COLOURS",
    help="The style's palette, colours for the whole frame without positions that every "
    "image the style applies to takes on the objects no prototype matched (a palette given "
    'for an image wins): up to 4 colours ("#e0b030,#3060d0" or "#e0b030:0.7,#3060d0:0.3"), '
    '"hints" (the hints\' colours, weighted by the area of the objects they are on; only '
    'when they are two colours or more) or "none". Default: hints (with --from: the old '
    "style's).",
)
@click.option("--name", default=None, help="The style's name. Default: IMAGE's stem (or the --from style's).")
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Generator file. Default: engine.model, else the bundled model (the service's).",
)
@device_option
@config_option
def make_command(
    image: Path,
    hints_file: Path | None,
    from_style: Path | None,
    output: Path,
    palette_text: str | None,
    name: str | None,
    model: Path | None,
    device: str | None,
    config_path: Path | None,
) -> None:
    """Make a style from IMAGE and colour hints on it: each hint's colour, and the object it
    falls on described by the model's features, so that the same kind of object in other
    frames takes that colour. A style works with the model that made it.

    A palette-taking model's style also carries the hints' colours as a palette, so a new
    frame's objects that match no hint lean to the series' colours too. Never IMAGE's
    "own" colours: IMAGE is gray, so they would be the model's guess fed back to it as an
    instruction."""
    if (hints_file is None) == (from_style is None):
        raise click.UsageError("give --hints FILE, or --from STYLE to re-derive a style (one of the two)")
    from semwatch.palette import PaletteError, parse_palette

    keyword = (palette_text or "").strip().lower()
    try:
        palette = parse_palette(palette_text) if palette_text and keyword not in ("hints", "none") else None
    except PaletteError as exc:
        raise click.UsageError(f"--palette {palette_text!r}: {exc}") from None
    config = load_cli_config(config_path)
    configure_cli_logging(config.logging.level, config.logging.format)
    from semwatch.engine import Colorizer, EngineError
    from semwatch.hints import HintError, check_hints_fit, load_hints
    from semwatch.imaging import ImageError, read_image
    from semwatch.model import ModelError
    from semwatch.styles import StyleError, load_style, make_style, save_style

    try:
        old = load_style(from_style) if from_style is not None else None
        hints = list(old.hints) if old is not None else load_hints(hints_file)  # type: ignore[arg-type]
        decoded = read_image(image, max_pixels=config.engine.max_pixels)
        if old is not None and decoded.sha256 != old.source_sha256:
            raise StyleError(
                f"{image}: not the source of {from_style} (its SHA-256 {decoded.sha256[:12]} is not "
                f"the style's {old.source_sha256[:12]}, {old.source_name})"
            )
        check_hints_fit(hints, *decoded.gray.shape, source=str(hints_file or from_style))
        engine_cfg = config.engine
        colorizer = Colorizer.from_config(
            dataclasses.replace(
                engine_cfg,
                model=model if model is not None else engine_cfg.model,
                device=device or engine_cfg.device,
                batch_size=1,
            )
        )
        style = make_style(
            colorizer,
            decoded,
            hints,
            name=name or (old.name if old is not None else image.stem),
            source_name=image.name,
            source_sha256=decoded.sha256,
            palette=palette if palette is not None or old is None or keyword else old.palette,
            hint_palette=keyword != "none" and (old is None or keyword == "hints"),
        )
        saved = save_style(style, output)
    except (StyleError, HintError, ImageError, ModelError, EngineError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write the style ({exc.strerror or exc})") from None
    with_palette = f", palette {saved.palette.as_text()}" if saved.palette is not None else ""
    click.echo(
        f"style {saved.name!r}: {len(saved.colors())} colours from {len(saved.prototypes)} hints on "
        f"{image.name}{with_palette}, model {saved.model_name} -> {output}",
        err=True,
    )


@style_group.command("show", context_settings=CONTEXT)
@click.argument("style_file", type=click.Path(dir_okay=False, path_type=Path))
def show_command(style_file: Path) -> None:
    """Print what STYLE_FILE holds: name, model, source, and each colour with its hints."""
    from semwatch.styles import StyleError, load_style

    try:
        style = load_style(style_file)
    except StyleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_style(style))


def format_style(style) -> str:  # noqa: ANN001 - semwatch.styles.Style, imported lazily
    """A style for people: one line per field, one per colour."""
    height, width = style.source_shape
    lines = [
        f"style    {style.name}",
        f"file     {style.path} (sha256 {style.sha256[:12]})",
        f"created  {style.created}",
        f"model    {style.model_name} (sha256 {style.model_sha256[:12]})",
        f"source   {style.source_name} ({width}x{height}, sha256 {style.source_sha256[:12]})",
        f"features {style.features}, {len(style.prototypes[0].vector)} numbers per prototype",
        f"colours  {len(style.colors())} from {len(style.prototypes)} hints:",
    ]
    for color in style.colors():
        where = [style.hints[p.hint] for p in style.prototypes if style.hints[p.hint].color == color]
        points = ", ".join(f"({h.as_record()['x']}, {h.as_record()['y']})" for h in where)
        lines.append(f"  {color}  {len(where)} object{'s' if len(where) != 1 else ''} at {points}")
    if style.palette is None:
        lines.append("palette  none")
    else:
        lines.append(f"palette  {len(style.palette.colours)} colours for the whole frame:")
        lines += [f"  {c.color}  weight {c.weight:.2f}" for c in style.palette.colours]
    return "\n".join(lines)
