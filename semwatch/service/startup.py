"""Start-up of the service: configuration checks a restart cannot fix, the folders a first
run needs, the model load, the metrics server, and the configuration a reload reads.

Each problem is one :class:`StartupError` line whose exit code tells systemd whether a
restart can help (``EXIT_CONFIG``, 78: no; ``EXIT_FAILURE``: yes).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from semwatch.config import EXIT_CONFIG, Config, ConfigError, load_config
from semwatch.log import get_logger
from semwatch.metrics import DaemonMetrics, MetricsError
from semwatch.model_file import model_file
from semwatch.paths import same_folder
from semwatch.queue import QueueError, check_sqlite_is_local, sqlite_path

if TYPE_CHECKING:
    from semwatch.engine import Colorizer

log = get_logger(__name__)

EXIT_FAILURE = 1


class StartupError(RuntimeError):
    """The daemon cannot start; ``exit_code`` tells systemd whether a restart can help."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_config(cfg: Config) -> None:
    """Configuration problems a restart cannot fix -> StartupError(exit 78)."""
    where = f" (in {cfg.source})" if cfg.source else ""
    problem = same_folder(cfg.watch.input_dir, cfg.output.dir)
    if problem is not None:
        raise StartupError(f"{problem}{where}", EXIT_CONFIG)
    db = sqlite_path(cfg.queue.database_url)
    if cfg.daemon.role != "all" and db is not None:
        raise StartupError(
            f"daemon.role = {cfg.daemon.role!r}{where} needs a PostgreSQL queue: a SQLite queue "
            'takes one daemon (role "all"); set queue.database_url = "postgresql://..."',
            EXIT_CONFIG,
        )
    if cfg.daemon.role != "watcher":  # a watcher only finds and queues files: no model on its host
        from semwatch.model import ModelError

        try:
            model_file(cfg.engine.model, where=where)
        except ModelError as exc:
            raise StartupError(str(exc), EXIT_CONFIG) from None
    try:
        check_sqlite_is_local(cfg.queue.database_url)
    except QueueError as exc:
        raise StartupError(f"{exc}{where}", EXIT_CONFIG) from None


def prepare_folders(cfg: Config, *, create_watch_folder: bool = True) -> None:
    """Create the watch, output and state folders when missing (first run from the repo).

    With ``create_watch_folder=False`` (a reload) a missing watch or output folder is a
    configuration error (exit 78) instead.
    """
    watch = cfg.watch.input_dir
    if not create_watch_folder:
        # A reload creates neither: a missing folder is a typo or an unmounted share, and a
        # fresh local folder would hide either.
        for key, what, folder in (
            ("watch.input_dir", "watch", watch),
            ("output.dir", "output", cfg.output.dir),
        ):
            if not folder.is_dir():
                where = f" ({key} in {cfg.source})" if cfg.source else f" ({key})"
                reason = "is not a folder" if folder.exists() else "does not exist"
                raise StartupError(
                    f"{folder}: {what} folder {reason}{where}; a reload does not create it", EXIT_CONFIG
                )
    for what, folder in (
        ("watch folder", watch),
        ("output folder", cfg.output.dir),
        ("state folder", cfg.daemon.state_dir),
    ):
        if folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"{folder}: cannot create the {what}: {exc.strerror or exc}") from None
        log.info("folder created", folder=what, path=str(folder))


def load_colorizer(cfg: Config) -> Colorizer:
    """The engine for cfg.engine; errors become one-line StartupErrors."""
    from semwatch.engine import Colorizer, EngineError
    from semwatch.model import ModelError

    started = time.monotonic()
    try:
        colorizer = Colorizer.from_config(cfg.engine)
    except ModelError as exc:
        raise StartupError(str(exc), EXIT_CONFIG) from None
    except EngineError as exc:
        # A GPU driver not loaded yet at boot may be there at the next start; a missing
        # package or a wrong setting will not.
        raise StartupError(str(exc), EXIT_FAILURE if exc.retryable else EXIT_CONFIG) from None
    log.info("model loaded", **colorizer.info.log_fields(), seconds=round(time.monotonic() - started, 2))
    return colorizer


def serve_metrics(metrics: DaemonMetrics, cfg: Config) -> None:
    """Start the /metrics server when [metrics] listen is set; a bind error is a StartupError."""
    address = cfg.metrics.address
    if address is None:
        return
    try:
        metrics.serve(address)
    except MetricsError as exc:
        where = f" in {cfg.source}" if cfg.source else ""
        raise StartupError(
            f"{exc} (metrics.listen{where})", EXIT_CONFIG if exc.config_error else EXIT_FAILURE
        ) from None


def reloaded_config(current: Config) -> Config | None:
    """The configuration a reload (SIGHUP) reads from ``current``'s file, checked like a
    start's; None when it is refused (logged: the running one is kept). Sections only a
    restart can change keep their running values (logged)."""
    try:
        new = load_config(current.source)
        check_config(new)
        # Never created on reload: a missing watch folder is a typo or an unmounted
        # share, and a fresh local folder would hide either.
        prepare_folders(new, create_watch_folder=False)
    except (ConfigError, StartupError) as exc:
        log.error("reload refused", reason=str(exc), kept="the running configuration and model")
        return None
    restart_only = [
        name for name in ("queue", "daemon", "metrics") if getattr(new, name) != getattr(current, name)
    ]
    if restart_only:
        log.warning("sections need a restart", sections=restart_only)
        new = dataclasses.replace(new, **{name: getattr(current, name) for name in restart_only})
    return new
