"""Engines of the queue's databases: the supported dialects, pooling, and the connection
hooks that give SQLite the locking the queue relies on."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from semwatch.errors import one_line
from semwatch.log import get_logger
from semwatch.queue.records import QueueError

log = get_logger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option that makes the SQLite begin hook take the write lock up front.
WRITE_OPTION = "semwatch_write"
# PostgreSQL connections per process: kept open, and at most this many more under load.
PG_POOL_SIZE = 2
PG_MAX_OVERFLOW = 6

# dialect: each supported back-end's INSERT with ON CONFLICT (same API on both).
INSERTS: Mapping[str, Callable[[sa.Table], Any]] = MappingProxyType(
    {"sqlite": sqlite_insert, "postgresql": pg_insert}
)


def queue_engine(url: URL, where: str, *, read_only: bool) -> Engine:
    """The engine of a SqlJobQueue on `url` (shown as `where` in messages)."""
    dialect = url.get_backend_name()
    if read_only and dialect == "sqlite":
        url = _sqlite_read_only_url(url)
    options: dict[str, Any] = {}
    if dialect != "sqlite":
        # Long-lived daemon against a server: test pooled connections before use. A
        # daemon's threads (main, writers, watcher) rarely need more than a few at once;
        # a small pool keeps max_connections within reach of dozens of daemons.
        options = {"pool_pre_ping": True, "pool_size": PG_POOL_SIZE, "max_overflow": PG_MAX_OVERFLOW}
    engine = new_engine(url, where, **options)
    if dialect == "sqlite":
        on_connect = _sqlite_on_connect_read_only if read_only else _sqlite_on_connect
        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    elif read_only:
        event.listen(engine, "connect", _postgresql_on_connect_read_only)
    return engine


def new_engine(url: URL, where: str, **options: Any) -> Engine:
    """sa.create_engine, with a driver that is not installed as a one-line QueueError."""
    try:
        return sa.create_engine(url, **options)
    except (NoSuchModuleError, ImportError) as exc:
        raise QueueError(f"{where}: cannot load the database driver: {exc}") from exc


def error_reason(exc: DBAPIError) -> str:
    """A database error in one line: the driver's own message when there is one."""
    return one_line(str(exc.orig) if exc.orig is not None else str(exc))


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's begin hook (SQLAlchemy's documented recipe):
    # pysqlite's own implicit BEGIN is deferred and skipped before SELECTs.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # With WAL, NORMAL loses at most the last commits on power loss, never consistency.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()
    if str(mode).lower() != "wal":
        log.warning("SQLite refused WAL journal mode; readers will block writers", journal_mode=mode)


def _sqlite_on_connect_read_only(dbapi_conn: Any, _record: Any) -> None:
    # No journal_mode or synchronous: both would write. query_only backs up mode=ro.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _postgresql_on_connect_read_only(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    finally:
        cursor.close()
    dbapi_conn.commit()


def _sqlite_read_only_url(url: URL) -> URL:
    """The same SQLite file as a read-only URI (``file:...?mode=ro``): never created,
    never written, no write access needed."""
    path = os.path.abspath(url.database or "")
    return url.set(
        database=f"file:{urllib.parse.quote(path)}", query={**url.query, "mode": "ro", "uri": "true"}
    )


def _sqlite_on_begin(conn: Connection) -> None:
    # dialect: writes take the write lock at BEGIN, so a read-then-write transaction never
    # fails on lock upgrade; reads get a deferred BEGIN and a consistent WAL snapshot.
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
