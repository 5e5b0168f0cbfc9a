"""Versions of the queue database's schema: Alembic is the one mechanism.

The migration scripts ship inside the package (semwatch/migrations), so an installed
semwatch migrates its database at start-up or by `semwatch db upgrade`. Databases made
before Alembic carry only their own marker, table schema_version (1 or 2): they are stamped
with the matching revision first, then upgraded like any other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# schema_version (the marker of semwatch before Alembic) -> the revision that made it.
LEGACY_REVISIONS: Mapping[int, str] = MappingProxyType({1: "0001", 2: "0002"})


class SchemaError(RuntimeError):
    """The database's schema cannot be used or migrated by this semwatch; one line."""


@functools.lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The revision this semwatch's code expects."""
    head = _script().get_current_head()
    assert head is not None, "no migration scripts in the package"
    return head


def current_revision(conn: Connection) -> str | None:
    """The database's revision: Alembic's, else the one matching a pre-Alembic marker;
    None for an empty database. Raises SchemaError for a database that is not semwatch's."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None:
        return revision
    inspector = sa.inspect(conn)
    if inspector.has_table("schema_version"):
        version = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
        if version is None:
            raise SchemaError("schema_version table is empty: the database is damaged")
        if int(version) not in LEGACY_REVISIONS:
            raise SchemaError(
                f"database schema version {version} is newer than this semwatch understands "
                f"({head_revision()}); upgrade semwatch or use another database"
            )
        return LEGACY_REVISIONS[int(version)]
    if inspector.has_table("jobs"):
        raise SchemaError("has a jobs table but no schema version: not a semwatch database")
    return None


def is_known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def check_current(conn: Connection) -> None:
    """What a read-only open checks: a semwatch queue at exactly this code's revision."""
    found = current_revision(conn)
    head = head_revision()
    if found is None:
        raise SchemaError("not a semwatch queue database (no schema); check queue.database_url")
    if not is_known(found):
        raise SchemaError(
            f"database schema revision {found} is newer than this semwatch understands ({head}); "
            "upgrade semwatch"
        )
    if found != head:
        raise SchemaError(
            f"database schema revision {found} is older than this semwatch's ({head}); the service "
            "upgrades it at its next start, or run `semwatch db upgrade`"
        )


def upgrade(conn: Connection) -> str | None:
    """Create or upgrade the schema on `conn` (inside the caller's write transaction) to the
    head revision. Returns the revision found (None: the database was empty).

    A revision this code does not know is refused: old code must not write rows it does not
    understand.
    """
    found = current_revision(conn)
    if found is not None and not is_known(found):
        raise SchemaError(
            f"database schema revision {found} is newer than this semwatch understands "
            f"({head_revision()}); upgrade semwatch or use another database"
        )
    if found == head_revision():
        return found
    cfg = _alembic_config(conn)
    if found is not None and MigrationContext.configure(conn).get_current_revision() is None:
        command.stamp(cfg, found)  # a pre-Alembic database: record what it already is
    command.upgrade(cfg, "head")
    return found
