"""Scale-out: a heartbeat row per daemon, one watcher per input folder.

The schema_version marker goes to 3 and stays there from now on: semwatch before Alembic
reads it and refuses a database "newer than it understands" instead of writing rows it
does not know. Alembic's own alembic_version is what this and later semwatch read.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemons",
        sa.Column("token", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
    )
    op.create_index("ix_daemons_last_seen", "daemons", ["role", "last_seen"])
    op.create_table(
        "watch_locks",
        sa.Column("root", sa.Text, primary_key=True),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_token", sa.String(32)),
        sa.Column("lease_until", sa.Double, nullable=False),
    )
    op.execute("UPDATE schema_version SET version = 3")


def downgrade() -> None:
    op.execute("UPDATE schema_version SET version = 2")
    op.drop_table("watch_locks")
    op.drop_index("ix_daemons_last_seen", "daemons")
    op.drop_table("daemons")
