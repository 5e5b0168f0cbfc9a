"""Database URLs as semwatch takes them (queue.database_url): checked, shown, located."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from semwatch.queue.engines import INSERTS
from semwatch.queue.records import QueueError


def parse_url(database_url: str) -> URL:
    """The URL of a database semwatch supports; QueueError naming it otherwise."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise QueueError(f"{database_url!r}: not a database URL ({exc})") from None
    backend = url.get_backend_name()
    if url.drivername == "postgresql":
        # A plain postgresql:// means psycopg 3 (the `postgres` extra), not SQLAlchemy's
        # default psycopg2, which semwatch does not install.
        url = url.set(drivername="postgresql+psycopg")
    where = redacted_url(url)
    if backend not in INSERTS:
        raise QueueError(
            f"{where}: unsupported database {backend!r} (semwatch supports sqlite and postgresql)"
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise QueueError(
            f"{where}: an in-memory SQLite queue cannot be shared between the "
            "daemon's connections; give a file path"
        )
    return url


def redacted_url(database_url: str | URL) -> str:
    """A database URL as logs and messages show it: the password as ***."""
    url = database_url if isinstance(database_url, URL) else make_url(database_url)
    return url.render_as_string(hide_password=True)


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL, None for other databases."""
    url = parse_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database is None:
        return None
    return Path(url.database)
