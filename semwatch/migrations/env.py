"""Alembic environment of the queue database (semwatch.schema runs it; no alembic.ini).

The caller hands over an open connection inside its own transaction (config.attributes
["connection"]), so a migration and the start-up that asked for it are one transaction and
a PostgreSQL advisory lock held by the caller keeps two hosts from migrating at once.
"""

from __future__ import annotations

from alembic import context

from semwatch.queue import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table when needed.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
