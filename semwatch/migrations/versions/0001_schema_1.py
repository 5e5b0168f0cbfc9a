"""Schema 1 (semwatch 0.1): jobs, files and the schema_version marker.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("rel_path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.Double, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("arrived_at", sa.Double, nullable=False),
        sa.Column("enqueued_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("not_before", sa.Double, nullable=False),
        sa.Column("lease_until", sa.Double),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_token", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("output_path", sa.Text),
        sa.UniqueConstraint("rel_path", "sha256", name="uq_jobs_version"),
        sa.CheckConstraint("state IN ('pending', 'running', 'done', 'failed')", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_claim", "jobs", ["state", "arrived_at"])
    op.create_index("ix_jobs_finished", "jobs", ["state", "finished_at"])
    op.create_table(
        "files",
        sa.Column("rel_path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.Double, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.Double, nullable=False),
    )
    version = op.create_table(
        "schema_version", sa.Column("version", sa.Integer, primary_key=True, autoincrement=False)
    )
    op.bulk_insert(version, [{"version": 1}])


def downgrade() -> None:
    op.drop_table("schema_version")
    op.drop_table("files")
    op.drop_index("ix_jobs_finished", "jobs")
    op.drop_index("ix_jobs_claim", "jobs")
    op.drop_table("jobs")
