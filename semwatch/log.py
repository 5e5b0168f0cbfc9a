"""structlog set-up, done once per process by the entry point (CLI or daemon)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Console lines for people, JSON lines for journald; 'auto' picks by whether stderr is a tty."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (watchdog, sqlalchemy) go to stderr at WARNING.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def configure_cli_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """A command's logging (the CLIs, the web UI): "auto" means console lines here, since a
    command is read by a person even when its stderr is piped (the daemon's "auto" means
    JSON off a terminal, for journald)."""
    configure_logging(level, "console" if fmt == "auto" else fmt)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """The logger of module ``name`` (pass ``__name__``): every event it logs has ``logger=name``.

    The name is the initial context of structlog's lazy proxy rather than a ``bind()``:
    binding would assemble the logger at import time, before configure_logging() (or
    capture_logs()) set the level, processors and output it must use. It goes in through
    ``context_class`` because wrap_logger's first parameter is itself called ``logger``.
    """
    return structlog.wrap_logger(
        None, logger_factory_args=(name,), context_class=functools.partial(_module_context, name)
    )


def _module_context(name: str, initial: Mapping[str, Any]) -> dict[str, Any]:
    return {"logger": name, **initial}
