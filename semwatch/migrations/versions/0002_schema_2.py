"""Schema 2: attempts count from the start of work; failures can be superseded.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("attempt_started", sa.Double))
    op.add_column("jobs", sa.Column("superseded_by", sa.BigInteger))
    # Schema 1 counted an attempt at the claim: its running jobs keep counting it.
    op.execute("UPDATE jobs SET attempt_started = started_at WHERE state = 'running'")
    op.execute("UPDATE schema_version SET version = 2")


def downgrade() -> None:
    op.execute("UPDATE schema_version SET version = 1")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("superseded_by")
        batch.drop_column("attempt_started")
