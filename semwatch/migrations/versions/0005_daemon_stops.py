"""Daemons: a clean stop is recorded (stopped_at) instead of deleting the heartbeat row, so
`semwatch status` and the web UI can say when the service was last seen.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode, as in 0002: SQLite drops a column only by copying the table.
    with op.batch_alter_table("daemons") as batch:
        batch.add_column(sa.Column("stopped_at", sa.Double, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemons") as batch:
        batch.drop_column("stopped_at")
