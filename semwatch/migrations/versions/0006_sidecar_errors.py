"""Jobs: a sidecar that could not be copied beside a done job's output is recorded on the job
(sidecar_error), so `semwatch status` shows it for that job, not only the log.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode, as in 0002: SQLite drops a column only by copying the table.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sidecar_error", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sidecar_error")
