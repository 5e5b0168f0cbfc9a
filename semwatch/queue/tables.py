"""The queue database's tables (SQLAlchemy ORM declarations; Alembic migrates them) and the
column sets and conditions the SQL back-end builds its statements from."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from semwatch.queue.records import Job, JobState

# The pre-Alembic marker (table schema_version), frozen at 3 by revision 0003 so that older
# semwatch refuses the database as newer; the schema's version is Alembic's revision now.
SCHEMA_VERSION = 3


class Base(DeclarativeBase):
    pass


# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
_ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_STATES_SQL = ", ".join(f"'{s.value}'" for s in JobState)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("rel_path", "sha256", name="uq_jobs_version"),
        sa.CheckConstraint(f"state IN ({_STATES_SQL})", name="ck_jobs_state"),
        sa.Index("ix_jobs_claim", "state", "arrived_at"),
        sa.Index("ix_jobs_finished", "state", "finished_at"),
    )

    id: Mapped[int] = mapped_column(_ID_TYPE, primary_key=True, autoincrement=True)
    rel_path: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    mtime: Mapped[float] = mapped_column(sa.Double)
    state: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    arrived_at: Mapped[float] = mapped_column(sa.Double)
    enqueued_at: Mapped[float] = mapped_column(sa.Double)
    started_at: Mapped[float | None] = mapped_column(sa.Double)
    finished_at: Mapped[float | None] = mapped_column(sa.Double)
    not_before: Mapped[float] = mapped_column(sa.Double)
    lease_until: Mapped[float | None] = mapped_column(sa.Double)
    owner_host: Mapped[str | None] = mapped_column(sa.String(255))
    owner_pid: Mapped[int | None] = mapped_column(sa.Integer)
    owner_token: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.Text)
    output_path: Mapped[str | None] = mapped_column(sa.Text)
    # Schema 2. started_at is when the job was claimed; attempt_started when its work began.
    attempt_started: Mapped[float | None] = mapped_column(sa.Double)
    superseded_by: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Revision 0004. Set while a process works on the job (its decode begun, for its own batch
    # or ahead for the next), cleared when the attempt ends in order (done, failed, released).
    # A pending job that still has it was in hand when its process died: it runs alone.
    crash_suspect: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # Revision 0006. Why a sidecar of a done job's source is not beside its output (None: all
    # copied); cleared when a later copy succeeds.
    sidecar_error: Mapped[str | None] = mapped_column(sa.Text)


class FileRow(Base):
    """The latest known version of each path: the watcher's cheap (size, mtime) pre-check."""

    __tablename__ = "files"

    rel_path: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    mtime: Mapped[float] = mapped_column(sa.Double)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    seen_at: Mapped[float] = mapped_column(sa.Double)


class SchemaVersionRow(Base):
    """The marker of semwatch before Alembic (see SCHEMA_VERSION); never read by this code."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)


class DaemonRow(Base):
    """One daemon run (one start: its owner token): beating while it lives, marked stopped_at
    when it stops cleanly; the row stays FORGET_SECONDS (the service's "last seen")."""

    __tablename__ = "daemons"
    __table_args__ = (sa.Index("ix_daemons_last_seen", "role", "last_seen"),)

    token: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    role: Mapped[str] = mapped_column(sa.String(16))
    started_at: Mapped[float] = mapped_column(sa.Double)
    last_seen: Mapped[float] = mapped_column(sa.Double)
    # Revision 0004: when the daemon stopped cleanly; None while it runs or if it died.
    stopped_at: Mapped[float | None] = mapped_column(sa.Double)


class WatchLockRow(Base):
    """One watcher per input folder: the holder renews lease_until while it watches."""

    __tablename__ = "watch_locks"

    root: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    owner_host: Mapped[str | None] = mapped_column(sa.String(255))
    owner_pid: Mapped[int | None] = mapped_column(sa.Integer)
    owner_token: Mapped[str | None] = mapped_column(sa.String(32))
    lease_until: Mapped[float] = mapped_column(sa.Double)


JOBS: sa.Table = JobRow.__table__  # type: ignore[assignment]
FILES: sa.Table = FileRow.__table__  # type: ignore[assignment]
DAEMONS: sa.Table = DaemonRow.__table__  # type: ignore[assignment]
WATCH_LOCKS: sa.Table = WatchLockRow.__table__  # type: ignore[assignment]
JOB_COLUMNS = (
    JOBS.c.id,
    JOBS.c.rel_path,
    JOBS.c.sha256,
    JOBS.c.size,
    JOBS.c.mtime,
    JOBS.c.state,
    JOBS.c.attempts,
    JOBS.c.arrived_at,
    JOBS.c.error,
    JOBS.c.output_path,
    JOBS.c.attempt_started,
    JOBS.c.superseded_by,
    JOBS.c.crash_suspect,
    JOBS.c.sidecar_error,
)
# Failed jobs that still stand: not made history by a done job of their path's content.
STANDING_FAILURE = sa.and_(JOBS.c.state == JobState.FAILED.value, JOBS.c.superseded_by.is_(None))


def to_job(row: Any) -> Job:
    """A row of JOB_COLUMNS as a Job."""
    return Job(
        id=int(row.id),
        rel_path=row.rel_path,
        sha256=row.sha256,
        size=int(row.size),
        mtime=float(row.mtime),
        state=JobState(row.state),
        attempts=int(row.attempts),
        arrived_at=float(row.arrived_at),
        error=row.error,
        output_path=row.output_path,
        attempt_started=row.attempt_started,
        superseded_by=row.superseded_by,
        crash_suspect=bool(row.crash_suspect),
        sidecar_error=row.sidecar_error,
    )
