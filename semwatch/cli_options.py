"""What every `semwatch` subcommand shares: help settings and ``--config FILE``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from semwatch.config import Config, ConfigError, load_config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# click's own exit code for a usage error: a configuration file is part of the usage.
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable)


CONFIG_HELP = (
    "Configuration file. Default: $SEMWATCH_CONFIG, ./config.toml, /etc/semwatch/config.toml, "
    "else built-in defaults. Use the same file as the service (the unit passes "
    "/etc/semwatch/config.toml)."
)


def config_option(func: F | None = None, *, help: str = CONFIG_HELP) -> Any:
    """--config FILE, the same on every subcommand (``@config_option``, or
    ``@config_option(help=...)`` where a command reads only part of the file)."""

    def decorate(f: F) -> F:
        return click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=help,
        )(f)

    return decorate(func) if func is not None else decorate


# Per-run overrides of [engine] keys, shared by `semwatch colorize` and `trainer evaluate`.
def chroma_size_option(func: F) -> F:
    return click.option(
        "--chroma-size",
        type=click.IntRange(min=32),
        default=None,
        help="Long side, in pixels, of the copy the network colors (multiple of 32). "
        "Default: engine.chroma_size.",
    )(func)


def device_option(func: F) -> F:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default=None,
        help="Where the network runs. Default: engine.device.",
    )(func)


def batch_size_option(func: F) -> F:
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Images per forward pass. Default: engine.batch_size.",
    )(func)


def load_cli_config(config_path: Path | None, *, exit_code: int = EXIT_USAGE) -> Config:
    """The configuration, or one "error:" line naming the key and the file and exit
    ``exit_code`` (`semwatch run`: EXIT_CONFIG, so systemd does not restart into it)."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code)
