"""Opening the configured queue, and what the CLI and the daemon ask of a database first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from semwatch import filesystems, schema
from semwatch.config import QueueConfig
from semwatch.queue.engines import error_reason, new_engine
from semwatch.queue.interface import JobQueue
from semwatch.queue.records import QueueError
from semwatch.queue.sql import SqlJobQueue
from semwatch.queue.urls import parse_url, redacted_url, sqlite_path


def database_revision(database_url: str) -> str | None:
    """The schema revision of a database (None: empty), read without migrating anything."""
    url = parse_url(database_url)
    where = redacted_url(url)
    engine = new_engine(url, where)
    try:
        with engine.connect() as conn:
            return schema.current_revision(conn)
    except schema.SchemaError as exc:
        raise QueueError(f"{where}: {exc}") from None
    except DBAPIError as exc:
        raise QueueError(f"{where}: {error_reason(exc)}") from exc
    finally:
        engine.dispose()


def check_sqlite_is_local(database_url: str) -> None:
    """QueueError when the URL's SQLite file is (to be) on a network filesystem, where
    its locking does not hold; other databases pass."""
    path = sqlite_path(database_url)
    if path is None:
        return
    folder = next((p for p in path.parents if p.exists()), Path("/"))
    if filesystems.is_network_filesystem(folder):
        raise QueueError(
            f"{path}: SQLite on a network filesystem ({filesystems.filesystem_type(folder)}) corrupts "
            "under concurrent access; put it on a local disk or use PostgreSQL (queue.database_url)"
        )


def open_queue(
    cfg: QueueConfig, *, clock: Callable[[], float] | None = None, read_only: bool = False
) -> JobQueue:
    """The queue configured in [queue]; creates a SQLite file's folder, refuses network fs.

    ``clock``: None for the queue's own choice (this host's clock for SQLite, the database
    server's for PostgreSQL, which hosts share); tests inject one.

    ``read_only`` (reports): an existing database only, never created, migrated or written.
    """
    path = sqlite_path(cfg.database_url)
    if path is not None and not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"{path.parent}: cannot create the database folder: {exc.strerror}") from exc
        check_sqlite_is_local(cfg.database_url)
    return SqlJobQueue(
        cfg.database_url,
        lease_seconds=cfg.lease_seconds,
        max_attempts=cfg.max_attempts,
        retry_backoff=cfg.retry_backoff,
        clock=clock,
        read_only=read_only,
    )
