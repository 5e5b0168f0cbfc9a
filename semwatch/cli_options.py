"""What every `semwatch` subcommand shares: help settings and ``--config FILE``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from semwatch.config import Config, ConfigError, load_config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# click's own exit code for a usage error: a configuration file is part of the usage.
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable)


def config_option(func: F) -> F:
    """--config FILE, the same on every subcommand."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Configuration file. Default: $SEMWATCH_CONFIG, ./config.toml, "
        "/etc/semwatch/config.toml, else built-in defaults. Use the same file as the "
        "service (the unit passes /etc/semwatch/config.toml).",
    )(func)


def load_cli_config(config_path: Path | None, *, exit_code: int = EXIT_USAGE) -> Config:
    """The configuration, or one "error:" line naming the key and the file and exit
    ``exit_code`` (`semwatch run`: EXIT_CONFIG, so systemd does not restart into it)."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code)
