"""The job queue: database schema and job state machine (DESIGN.md, "Queue").

Shaped like huey's storage layer: `JobQueue` is the one small interface the daemon, the
watcher and the CLI code against; `SqlJobQueue` is the SQLAlchemy back-end behind it. The
same SQL runs on SQLite (the embedded default) and PostgreSQL. The dialects differ in only
three places, each marked "dialect:" below: how a write transaction starts (SQLite needs
`BEGIN IMMEDIATE`, emitted by an event hook because pysqlite would otherwise defer BEGIN),
which INSERT ... ON CONFLICT construct is used, and the advisory lock that serialises schema
migration on PostgreSQL. Claims use `SELECT ... FOR UPDATE SKIP LOCKED`, which SQLAlchemy
renders on PostgreSQL and drops on SQLite, where the IMMEDIATE lock already excludes other
writers.

A job is one source file version, (rel_path, sha256). States:
pending -> running -> done; running -> pending (retry after back-off, lease expiry, owner
gone, release) or failed (max_attempts reached, or a permanent error). Times are wall-clock
epoch seconds from an injectable clock.

Attempts: a claim takes an attempt provisionally; `start` makes it count (the job's work
began). A claim that never started costs nothing when its owner dies or releases it, so a
kill from outside does not fail good files, while a file that crashes the daemon during
its decode or compute still ends failed after max_attempts.

The output follows the file's current content: a path whose content comes back to an
earlier version re-queues that version's finished job. A failed job is *superseded* once
the path's current version is done: it stays as history but no longer counts as failed.
"""

from __future__ import annotations

import abc
import enum
import fcntl
import hashlib
import os
import re
import socket
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType, TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from semwatch import schema
from semwatch.config import QueueConfig
from semwatch.errors import one_line
from semwatch.log import get_logger

log = get_logger(__name__)

# The pre-Alembic marker (table schema_version), frozen at 3 by revision 0003 so that older
# semwatch refuses the database as newer; the schema's version is Alembic's revision now.
SCHEMA_VERSION = 3
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Bound parameters per IN (...) list, well under SQLite's and drivers' limits.
_CHUNK = 500
# Execution option that makes the SQLite begin hook take the write lock up front.
_WRITE_OPTION = "semwatch_write"
# Key of the PostgreSQL advisory lock held while one process migrates the schema.
_PG_MIGRATION_LOCK = 0x5E3_0A7C
RECENT_FAILURES = 10
# PostgreSQL connections per process: kept open, and at most this many more under load.
PG_POOL_SIZE = 2
PG_MAX_OVERFLOW = 6
# Daemon roles (`semwatch run --role`); those that claim and colorize jobs count as workers.
ROLES = ("all", "watcher", "worker")
WORKER_ROLES = frozenset({"all", "worker"})
# A daemon beats every HEARTBEAT_SECONDS; one not seen for ALIVE_SECONDS counts as dead, and
# its row is deleted after FORGET_SECONDS (a host that died never says goodbye).
HEARTBEAT_SECONDS = 10.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS
FORGET_SECONDS = 7 * 86400.0
# How often ServerClock asks the server for its time.
SERVER_CLOCK_SYNC_SECONDS = 60.0
# sha256 of a failed job recorded for a file whose content could not be read (unreadable,
# unusable name): `status` shows the file; its readable content becomes a job of its own.
UNKNOWN_CONTENT = ""
LATENCY_WINDOW_S = 3600.0
LATENCY_MAX_JOBS = 1000

NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "sshfs",
        "ceph",
        "ceph-fuse",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "ncpfs",
        "coda",
        "davfs",
        "beegfs",
        "s3fs",
        "rclone",
        "gcsfuse",
        "moosefs",
        "mfs",
        "orangefs",
    }
)


class QueueError(RuntimeError):
    """A configuration or database problem; the message is one line naming the database."""


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: one daemon run (a new token at every start)."""

    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        """This process; call once per daemon start and keep the result (the token is new)."""
        return cls(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex)


@dataclass(frozen=True)
class Job:
    id: int
    rel_path: str
    sha256: str
    size: int
    mtime: float
    state: JobState
    attempts: int
    arrived_at: float
    error: str | None
    output_path: str | None
    # When the current attempt's work began (None: not started; the claim costs nothing).
    attempt_started: float | None = None
    # The done job of the path's current content that made this failure history.
    superseded_by: int | None = None


@dataclass(frozen=True)
class QueueStats:
    counts: dict[str, int]
    oldest_pending_age_s: float | None
    # Jobs done per minute over the last 10 minutes and the last hour.
    throughput_per_min: dict[str, float]
    # Arrival -> done, median over the jobs done in the last hour (at most the latest 1000).
    median_latency_s: float | None
    # [{"path", "error", "at" (epoch seconds)}], newest first.
    recent_failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The `semwatch status --json` shape of DESIGN.md."""
        return {
            "counts": dict(self.counts),
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "throughput_per_min": dict(self.throughput_per_min),
            "median_latency_s": self.median_latency_s,
            "recent_failures": [dict(f) for f in self.recent_failures],
        }


# --------------------------------------------------------------------------- interface


class JobQueue(abc.ABC):
    """The storage interface of the job queue; see the module docstring for the states."""

    @abc.abstractmethod
    def enqueue(
        self,
        rel_path: str,
        sha256: str,
        size: int,
        mtime: float,
        *,
        arrived_at: float | None = None,
        again: bool = False,
    ) -> int | None:
        """Queue one file version; returns the pending job's id, or None if nothing to do.

        Always records (size, mtime, sha256) as the path's latest version. A known version
        is not queued twice (DESIGN.md): its done or failed job is re-queued, attempts
        reset, only when the path's content came back to it from another version (its
        output was overwritten since) or with `again=True` (on purpose, after a model
        upgrade).
        """

    @abc.abstractmethod
    def enqueue_many(self, records: Iterable[tuple[str, str, int, float, float]]) -> int:
        """Bulk enqueue of (rel_path, sha256, size, mtime, arrived_at) in one transaction.

        Same rules as `enqueue` without `again`; a path given twice keeps its last record
        (only the latest content exists on disk).
        Returns how many jobs became pending.
        """

    @abc.abstractmethod
    def record_failure(self, rel_path: str, size: int, mtime: float, error: str) -> bool:
        """A file that cannot become a job (unreadable, unusable name): a failed job of
        unknown content (UNKNOWN_CONTENT), one per path, so `status` shows it with the
        reason. Returns True when newly recorded or its reason changed (worth a log line).
        """

    @abc.abstractmethod
    def known_files(self) -> dict[str, tuple[int, float]]:
        """rel_path -> (size, mtime) of the latest known version of every path (one query)."""

    @abc.abstractmethod
    def note_unchanged(self, rel_path: str, size: int, mtime: float) -> None:
        """Record new size/mtime for a path whose content hash did not change (a touch)."""

    @abc.abstractmethod
    def latest_sha256(self, rel_path: str) -> str | None:
        """SHA-256 of the path's latest known version, None for an unknown path."""

    @abc.abstractmethod
    def claim(self, owner: Owner, limit: int) -> list[Job]:
        """Atomically lease up to `limit` due pending jobs, oldest first.

        The attempt is taken provisionally (attempts + 1); it only counts once `start`
        recorded that work began.
        """

    @abc.abstractmethod
    def start(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Record that work (decoding) on these held jobs began: their attempts now count,
        also when the process dies."""

    @abc.abstractmethod
    def renew(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Extend the leases `owner` holds on these jobs."""

    @abc.abstractmethod
    def complete(self, owner: Owner, job_id: int, output_path: str) -> None:
        """Mark a job done once its output is written; when it is the path's current
        version, the path's other failed jobs are superseded."""

    @abc.abstractmethod
    def fail(self, owner: Owner, job_id: int, error: str, *, permanent: bool) -> JobState:
        """Record a failed attempt; returns the new state (PENDING with back-off or FAILED)."""

    @abc.abstractmethod
    def release(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Return held jobs to pending and give their attempt back (shutdown, storage
        outage: not the files' fault), started or not."""

    @abc.abstractmethod
    def recover(self, owner: Owner | None = None) -> int:
        """Reclaim running jobs whose lease expired or whose owner is gone; returns how many.

        Owners on this host are gone when their PID is dead, or (when `owner` is given) when
        they have `owner`'s PID with another token: a previous run of this daemon. A live
        PID on this host keeps its jobs until their lease expires (another daemon whose
        lock file was deleted must not lose them). A started attempt stays counted, so a
        file that crashes the daemon ends failed instead of looping; an unstarted claim is
        given back. Only the daemon holding the DaemonLock may pass `owner`; anyone else
        (the CLI) passes None.
        """

    @abc.abstractmethod
    def retry(self, job_ids: Sequence[int] | None = None, *, failed: bool = False) -> int:
        """Failed jobs back to pending with attempts reset: these ids, or all with failed=True.

        Superseded failures are history, not retried: their version is no longer the file.
        """

    @abc.abstractmethod
    def get(self, job_id: int) -> Job | None:
        """One job by id."""

    @abc.abstractmethod
    def jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs (highest id first), optionally of one state (FAILED: the failures
        that still stand, superseded ones left out)."""

    @abc.abstractmethod
    def stats(self, now: float | None = None) -> QueueStats:
        """Counts, backlog age, throughput, latency and recent failures."""

    # ---- daemons on several hosts

    @abc.abstractmethod
    def now(self) -> float:
        """The queue's clock (epoch seconds), on which leases are written and compared."""

    @abc.abstractmethod
    def beat(self, owner: Owner, role: str) -> None:
        """Record that this daemon lives: its row (host, pid, role, last seen)."""

    @abc.abstractmethod
    def forget(self, owner: Owner) -> None:
        """Remove the row of a daemon that stops cleanly."""

    @abc.abstractmethod
    def alive_workers(self, within: float = ALIVE_SECONDS) -> int:
        """How many daemons that colorize (role worker or all) beat in the last `within` s."""

    @abc.abstractmethod
    def hold_watch(self, root: str, owner: Owner, seconds: float) -> Owner | None:
        """Take or renew the lock on watching input folder `root` for `seconds`.

        Returns None when `owner` holds it now, else the holder. A holder loses it when its
        lock expires, or (on this host) when its process is gone: the same rule as a job's
        lease, so a watcher on another host is replaced only after its lock expired.
        """

    @abc.abstractmethod
    def release_watch(self, root: str, owner: Owner) -> None:
        """Give the watch lock on `root` up, if `owner` holds it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release database connections."""

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- schema


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
    """One running daemon (one start: its owner token), beating while it lives."""

    __tablename__ = "daemons"
    __table_args__ = (sa.Index("ix_daemons_last_seen", "role", "last_seen"),)

    token: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    role: Mapped[str] = mapped_column(sa.String(16))
    started_at: Mapped[float] = mapped_column(sa.Double)
    last_seen: Mapped[float] = mapped_column(sa.Double)


class WatchLockRow(Base):
    """One watcher per input folder: the holder renews lease_until while it watches."""

    __tablename__ = "watch_locks"

    root: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    owner_host: Mapped[str | None] = mapped_column(sa.String(255))
    owner_pid: Mapped[int | None] = mapped_column(sa.Integer)
    owner_token: Mapped[str | None] = mapped_column(sa.String(32))
    lease_until: Mapped[float] = mapped_column(sa.Double)


_JOBS: sa.Table = JobRow.__table__  # type: ignore[assignment]
_FILES: sa.Table = FileRow.__table__  # type: ignore[assignment]
_DAEMONS: sa.Table = DaemonRow.__table__  # type: ignore[assignment]
_WATCH_LOCKS: sa.Table = WatchLockRow.__table__  # type: ignore[assignment]
_JOB_COLUMNS = (
    _JOBS.c.id,
    _JOBS.c.rel_path,
    _JOBS.c.sha256,
    _JOBS.c.size,
    _JOBS.c.mtime,
    _JOBS.c.state,
    _JOBS.c.attempts,
    _JOBS.c.arrived_at,
    _JOBS.c.error,
    _JOBS.c.output_path,
    _JOBS.c.attempt_started,
    _JOBS.c.superseded_by,
)
# Failed jobs that still stand: not made history by a done job of their path's content.
_STANDING_FAILURE = sa.and_(_JOBS.c.state == JobState.FAILED.value, _JOBS.c.superseded_by.is_(None))
# Merged into transitions out of RUNNING: done/failed keep the owner as history, a job
# going back to pending forgets it.
_NO_LEASE: Mapping[str, Any] = MappingProxyType({"lease_until": None})
_NO_OWNER: Mapping[str, Any] = MappingProxyType(
    {"lease_until": None, "owner_host": None, "owner_pid": None, "owner_token": None}
)
# Merged into every transition back to pending: the next attempt starts from scratch.
_FRESH_ATTEMPT: Mapping[str, Any] = MappingProxyType({"attempt_started": None, "superseded_by": None})

# --------------------------------------------------------------------------- SQL back-end

# dialect: each supported back-end's INSERT with ON CONFLICT (same API on both).
_INSERTS: Mapping[str, Callable[[sa.Table], Any]] = MappingProxyType(
    {"sqlite": sqlite_insert, "postgresql": pg_insert}
)


class ServerClock:
    """The database server's clock, for a PostgreSQL queue shared by several hosts.

    Leases, back-offs and heartbeats written on one host are compared on another: with each
    host's own clock, a host running a minute fast would take other hosts' jobs a minute
    early. The server's clock is the one all hosts share. It is read once per
    SERVER_CLOCK_SYNC_SECONDS and carried forward on this host's monotonic clock, rather
    than read in every statement: one round trip a minute instead of one per operation,
    and leases are minutes long, so its milliseconds of error do not matter.
    """

    def __init__(self, read_server: Callable[[], float], sync_seconds: float = SERVER_CLOCK_SYNC_SECONDS):
        self._read_server = read_server
        self._sync_seconds = sync_seconds
        self._base: tuple[float, float] | None = None  # (server epoch, local monotonic)

    def __call__(self) -> float:
        local = time.monotonic()
        base = self._base
        if base is None or local - base[1] >= self._sync_seconds:
            before = time.monotonic()
            server = self._read_server()
            after = time.monotonic()
            # The server read its clock somewhere in the round trip: take the middle.
            base = self._base = (server, (before + after) / 2)
            local = after
        return base[0] + (local - base[1])


@dataclass(frozen=True)
class _Arrival:
    rel_path: str
    sha256: str
    size: int
    mtime: float
    arrived_at: float


class SqlJobQueue(JobQueue):
    """The queue in a SQL database (SQLite file or PostgreSQL), safe to share across threads.

    Every operation checks out its own pooled connection, so the daemon's threads may call
    any method concurrently; writes are serialised by the database, not by Python locks.
    """

    def __init__(
        self,
        database_url: str,
        *,
        lease_seconds: float,
        max_attempts: int,
        retry_backoff: float,
        clock: Callable[[], float] | None = None,
        hostname: str | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: for reports (`semwatch status`, the web UI's queue page): the
        database is opened read-only (SQLite ``mode=ro``), never created or migrated, and
        takes no write lock, so it answers while the daemon writes.

        ``clock`` (epoch seconds; tests inject one): by default this host's clock for
        SQLite, the server's clock for PostgreSQL (see ServerClock).
        """
        if lease_seconds <= 0 or max_attempts < 1 or retry_backoff < 0:
            raise QueueError(
                f"invalid queue settings: lease_seconds={lease_seconds}, "
                f"max_attempts={max_attempts}, retry_backoff={retry_backoff}"
            )
        url = _parse_url(database_url)
        self._where = redacted_url(url)
        self._dialect = url.get_backend_name()
        self._insert = _INSERTS[self._dialect]
        self._lease = float(lease_seconds)
        self._max_attempts = int(max_attempts)
        self._backoff = float(retry_backoff)
        self._host = hostname or socket.gethostname()
        self._read_only = read_only
        self._engine = self._create_engine(url)
        if clock is None:
            clock = time.time if self._dialect == "sqlite" else ServerClock(self._server_time)
        self._clock = clock
        try:
            if read_only:
                self._check_schema(url)
            else:
                self._migrate()
        except BaseException:
            self._engine.dispose()
            raise

    # ---- plumbing

    def _create_engine(self, url: URL) -> Engine:
        if self._read_only and self._dialect == "sqlite":
            url = _sqlite_read_only_url(url)
        options: dict[str, Any] = {}
        if self._dialect != "sqlite":
            # Long-lived daemon against a server: test pooled connections before use. A
            # daemon's threads (main, writers, watcher) rarely need more than a few at once;
            # a small pool keeps max_connections within reach of dozens of daemons.
            options = {"pool_pre_ping": True, "pool_size": PG_POOL_SIZE, "max_overflow": PG_MAX_OVERFLOW}
        try:
            engine = sa.create_engine(url, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise QueueError(f"{self._where}: cannot load the database driver: {exc}") from exc
        if self._dialect == "sqlite":
            on_connect = _sqlite_on_connect_read_only if self._read_only else _sqlite_on_connect
            event.listen(engine, "connect", on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        elif self._read_only:
            event.listen(engine, "connect", _postgresql_on_connect_read_only)
        return engine

    def _server_time(self) -> float:
        with self._transaction("server time", write=False) as conn:
            # clock_timestamp(), not now(): now() is frozen at the transaction's start.
            return float(conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar())

    def _check_schema(self, url: URL) -> None:
        """What a read-only open checks instead of migrating: a semwatch queue at exactly
        this code's schema revision."""
        try:
            with self._transaction("schema check", write=False) as conn:
                if schema.current_revision(conn) is None:
                    raise QueueError(f"{self._where}: {_not_a_queue(url)}")
                schema.check_current(conn)
        except schema.SchemaError as exc:
            raise QueueError(f"{self._where}: {exc}") from None

    def _migrate(self) -> None:
        try:
            with self._transaction("schema migration", write=True) as conn:
                if self._dialect == "postgresql":  # dialect: SQLite's IMMEDIATE lock suffices
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                found = schema.upgrade(conn)
        except schema.SchemaError as exc:
            raise QueueError(f"{self._where}: {exc}") from None
        head = schema.head_revision()
        if found is None:
            log.info("queue database created", database=self._where, revision=head)
        elif found != head:
            log.info("queue schema upgraded", database=self._where, from_revision=found, to_revision=head)

    def revision(self) -> str | None:
        """The schema revision the database is at (`semwatch db current`)."""
        try:
            with self._transaction("schema revision", write=False) as conn:
                return schema.current_revision(conn)
        except schema.SchemaError as exc:
            raise QueueError(f"{self._where}: {exc}") from None

    def now(self) -> float:
        return self._now()

    @contextmanager
    def _transaction(self, what: str, *, write: bool) -> Iterator[Connection]:
        """One transaction on its own connection; database errors become one-line QueueErrors."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            reason = one_line(str(exc.orig) if exc.orig is not None else str(exc))
            raise QueueError(f"{self._where}: {what} failed: {reason}") from exc

    def _now(self) -> float:
        return float(self._clock())

    # ---- arrival

    def enqueue(
        self,
        rel_path: str,
        sha256: str,
        size: int,
        mtime: float,
        *,
        arrived_at: float | None = None,
        again: bool = False,
    ) -> int | None:
        now = self._now()
        arrival = _Arrival(
            rel_path, sha256, int(size), float(mtime), now if arrived_at is None else float(arrived_at)
        )
        with self._transaction("enqueue", write=True) as conn:
            ids = self._enqueue_rows(conn, [arrival], now=now, again=again)
        if ids:
            log.debug("job queued", job_id=ids[0], path=rel_path, again=again)
        return ids[0] if ids else None

    def enqueue_many(self, records: Iterable[tuple[str, str, int, float, float]]) -> int:
        latest: dict[str, _Arrival] = {}
        for rel_path, sha256, size, mtime, arrived_at in records:
            latest[rel_path] = _Arrival(rel_path, sha256, int(size), float(mtime), float(arrived_at))
        if not latest:
            return 0
        now = self._now()
        rows = list(latest.values())
        queued = 0
        with self._transaction("enqueue_many", write=True) as conn:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                queued += len(self._enqueue_rows(conn, chunk, now=now, again=False))
        log.debug("files recorded", files=len(rows), queued=queued)
        return queued

    def _enqueue_rows(self, conn: Connection, rows: list[_Arrival], *, now: float, again: bool) -> list[int]:
        previous = self._latest_versions(conn, [r.rel_path for r in rows])
        self._record_files(conn, rows, now)
        inserted = self._insert_jobs(conn, rows, now)
        known = [r for r in rows if (r.rel_path, r.sha256) not in inserted]
        requeued = []
        for r in known:
            # Content A -> B -> A: A's job is done, but B's output has replaced A's since.
            came_back = previous.get(r.rel_path, r.sha256) != r.sha256
            if again or came_back:
                requeued.append(self._requeue(conn, r, now, "again" if again else "content came back"))
        return list(inserted.values()) + [job_id for job_id in requeued if job_id is not None]

    def _latest_versions(self, conn: Connection, rel_paths: list[str]) -> dict[str, str]:
        query = sa.select(_FILES.c.rel_path, _FILES.c.sha256).where(_FILES.c.rel_path.in_(rel_paths))
        return {path: sha256 for path, sha256 in conn.execute(query)}

    def _record_files(self, conn: Connection, rows: list[_Arrival], now: float) -> None:
        stmt = self._insert(_FILES)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_FILES.c.rel_path],
            set_={name: stmt.excluded[name] for name in ("size", "mtime", "sha256", "seen_at")},
        )
        conn.execute(
            stmt,
            [
                {"rel_path": r.rel_path, "size": r.size, "mtime": r.mtime, "sha256": r.sha256, "seen_at": now}
                for r in rows
            ],
        )

    def _insert_jobs(self, conn: Connection, rows: list[_Arrival], now: float) -> dict[tuple[str, str], int]:
        stmt = (
            self._insert(_JOBS)
            .on_conflict_do_nothing(index_elements=[_JOBS.c.rel_path, _JOBS.c.sha256])
            .returning(_JOBS.c.id, _JOBS.c.rel_path, _JOBS.c.sha256)
        )
        params = [
            {
                "rel_path": r.rel_path,
                "sha256": r.sha256,
                "size": r.size,
                "mtime": r.mtime,
                "state": JobState.PENDING.value,
                "attempts": 0,
                "arrived_at": r.arrived_at,
                "enqueued_at": now,
                "not_before": now,
            }
            for r in rows
        ]
        # RETURNING yields only the rows actually inserted, not the known versions.
        result = conn.execute(stmt, params)
        return {(row.rel_path, row.sha256): row.id for row in result}

    def _requeue(self, conn: Connection, r: _Arrival, now: float, why: str) -> int | None:
        """A finished version queued again: on purpose, or because the file holds it again."""
        finished = [JobState.DONE.value, JobState.FAILED.value]
        stmt = (
            sa.update(_JOBS)
            .where(_JOBS.c.rel_path == r.rel_path, _JOBS.c.sha256 == r.sha256, _JOBS.c.state.in_(finished))
            .values(
                state=JobState.PENDING.value,
                attempts=0,
                error=None,
                output_path=None,
                size=r.size,
                mtime=r.mtime,
                arrived_at=r.arrived_at,
                enqueued_at=now,
                not_before=now,
                started_at=None,
                finished_at=None,
                **_FRESH_ATTEMPT,
                **_NO_OWNER,
            )
            .returning(_JOBS.c.id)
        )
        job_id = conn.execute(stmt).scalar_one_or_none()
        if job_id is not None:
            log.info("job re-queued", job_id=job_id, path=r.rel_path, reason=why)
        return job_id

    def record_failure(self, rel_path: str, size: int, mtime: float, error: str) -> bool:
        now = self._now()
        message = one_line(error)
        version = (_JOBS.c.rel_path == rel_path, _JOBS.c.sha256 == UNKNOWN_CONTENT)
        with self._transaction("record_failure", write=True) as conn:
            row = conn.execute(
                sa.select(_JOBS.c.state, _JOBS.c.error, _JOBS.c.superseded_by).where(*version)
            ).one_or_none()
            if row is None:
                conn.execute(
                    sa.insert(_JOBS).values(
                        rel_path=rel_path,
                        sha256=UNKNOWN_CONTENT,
                        size=int(size),
                        mtime=float(mtime),
                        state=JobState.FAILED.value,
                        attempts=0,
                        arrived_at=now,
                        enqueued_at=now,
                        not_before=now,
                        finished_at=now,
                        error=message,
                    )
                )
                return True
            if row.state != JobState.FAILED.value:
                return False  # queued again by an operator: its run will tell
            if row.error == message and row.superseded_by is None:
                return False
            conn.execute(
                sa.update(_JOBS)
                .where(*version)
                .values(
                    size=int(size), mtime=float(mtime), error=message, finished_at=now, superseded_by=None
                )
            )
        return True

    def known_files(self) -> dict[str, tuple[int, float]]:
        query = sa.select(_FILES.c.rel_path, _FILES.c.size, _FILES.c.mtime)
        with self._transaction("known_files", write=False) as conn:
            return {path: (size, mtime) for path, size, mtime in conn.execute(query)}

    def note_unchanged(self, rel_path: str, size: int, mtime: float) -> None:
        stmt = (
            sa.update(_FILES)
            .where(_FILES.c.rel_path == rel_path)
            .values(size=int(size), mtime=float(mtime), seen_at=self._now())
        )
        with self._transaction("note_unchanged", write=True) as conn:
            updated = conn.execute(stmt).rowcount
            # Readable again with the content that is done (after an unreadable spell):
            # the failure recorded meanwhile is history.
            superseded = self._supersede_failures(conn, rel_path) if updated else 0
        if not updated:
            log.warning("touch of a path the queue does not know; ignored", path=rel_path)
        elif superseded:
            log.info("earlier failures of the file superseded", path=rel_path, failures=superseded)

    def latest_sha256(self, rel_path: str) -> str | None:
        query = sa.select(_FILES.c.sha256).where(_FILES.c.rel_path == rel_path)
        with self._transaction("latest_sha256", write=False) as conn:
            return conn.execute(query).scalar_one_or_none()

    # ---- the lease cycle

    def claim(self, owner: Owner, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        now = self._now()
        due = (
            sa.select(_JOBS.c.id)
            .where(_JOBS.c.state == JobState.PENDING.value, _JOBS.c.not_before <= now)
            .order_by(_JOBS.c.arrived_at, _JOBS.c.id)
            .limit(limit)
            # dialect: rendered on PostgreSQL (workers on several hosts), dropped on SQLite.
            .with_for_update(skip_locked=True)
        )
        with self._transaction("claim", write=True) as conn:
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            stmt = (
                sa.update(_JOBS)
                .where(_JOBS.c.id.in_(ids), _JOBS.c.state == JobState.PENDING.value)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=_JOBS.c.attempts + 1,
                    started_at=now,
                    attempt_started=None,
                    lease_until=now + self._lease,
                    owner_host=owner.host,
                    owner_pid=owner.pid,
                    owner_token=owner.token,
                )
                .returning(*_JOB_COLUMNS)
            )
            claimed = [_job(row) for row in conn.execute(stmt)]
        order = {job_id: i for i, job_id in enumerate(ids)}
        claimed.sort(key=lambda job: order[job.id])
        log.debug("jobs claimed", job_ids=[job.id for job in claimed])
        return claimed

    def start(self, owner: Owner, job_ids: Sequence[int]) -> None:
        ids = sorted(set(job_ids))
        if not ids:
            return
        stmt = (
            sa.update(_JOBS)
            .where(*_held_by(owner), _JOBS.c.id.in_(ids), _JOBS.c.attempt_started.is_(None))
            .values(attempt_started=self._now())
        )
        with self._transaction("start", write=True) as conn:
            conn.execute(stmt)

    def renew(self, owner: Owner, job_ids: Sequence[int]) -> None:
        wanted = set(job_ids)
        if not wanted:
            return
        stmt = (
            sa.update(_JOBS)
            .where(*_held_by(owner), _JOBS.c.id.in_(sorted(wanted)))
            .values(lease_until=self._now() + self._lease)
            .returning(_JOBS.c.id)
        )
        with self._transaction("renew", write=True) as conn:
            renewed = set(conn.execute(stmt).scalars())
        if renewed != wanted:
            log.warning(
                "leases lost; another worker or recover() took these jobs", job_ids=sorted(wanted - renewed)
            )

    def complete(self, owner: Owner, job_id: int, output_path: str) -> None:
        # Also accepted when the lease was lost but nobody else holds the job: the output
        # belongs to this file version, so redoing it would only rewrite the same file.
        mine = sa.and_(*_held_by(owner))
        unheld = _JOBS.c.state.in_([JobState.PENDING.value, JobState.FAILED.value])
        stmt = (
            sa.update(_JOBS)
            .where(_JOBS.c.id == job_id, sa.or_(mine, unheld))
            .values(
                state=JobState.DONE.value,
                finished_at=self._now(),
                error=None,
                output_path=output_path,
                superseded_by=None,
                **_NO_LEASE,
            )
            .returning(_JOBS.c.rel_path)
        )
        with self._transaction("complete", write=True) as conn:
            rel_path = conn.execute(stmt).scalar_one_or_none()
            superseded = 0 if rel_path is None else self._supersede_failures(conn, rel_path)
        if rel_path is None:
            log.warning(
                "job not marked done: done already or held by another owner",
                job_id=job_id,
                output=output_path,
            )
        elif superseded:
            log.info(
                "earlier failures of the file superseded", job_id=job_id, path=rel_path, failures=superseded
            )

    def _supersede_failures(self, conn: Connection, rel_path: str) -> int:
        """Once the path's current version is done, its other failures are history."""
        current = self._current_done_job(conn, rel_path)
        if current is None:
            return 0
        stmt = (
            sa.update(_JOBS)
            .where(_JOBS.c.rel_path == rel_path, _STANDING_FAILURE, _JOBS.c.id != current)
            .values(superseded_by=current)
        )
        return conn.execute(stmt).rowcount

    def _current_done_job(self, conn: Connection, rel_path: str) -> int | None:
        """The done job of the content the path holds now (by the watcher's record)."""
        latest = sa.select(_FILES.c.sha256).where(_FILES.c.rel_path == rel_path).scalar_subquery()
        query = sa.select(_JOBS.c.id).where(
            _JOBS.c.rel_path == rel_path, _JOBS.c.sha256 == latest, _JOBS.c.state == JobState.DONE.value
        )
        return conn.execute(query).scalar_one_or_none()

    def fail(self, owner: Owner, job_id: int, error: str, *, permanent: bool) -> JobState:
        now = self._now()
        message = one_line(error)
        with self._transaction("fail", write=True) as conn:
            row = conn.execute(
                sa.select(_JOBS.c.state, _JOBS.c.attempts, _JOBS.c.owner_token)
                .where(_JOBS.c.id == job_id)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise QueueError(f"{self._where}: fail: no job with id {job_id}")
            if row.state != JobState.RUNNING.value or row.owner_token != owner.token:
                log.warning(
                    "failure not recorded: job not held by this owner",
                    job_id=job_id,
                    state=row.state,
                    error=message,
                )
                return JobState(row.state)
            values = self._failure(row.attempts, message, permanent=permanent, now=now)
            if values["state"] == JobState.FAILED.value:
                values["superseded_by"] = self._superseding_job(conn, job_id)
            conn.execute(sa.update(_JOBS).where(_JOBS.c.id == job_id).values(**values))
        state = JobState(values["state"])
        log.warning(
            "job attempt failed",
            job_id=job_id,
            attempts=row.attempts,
            state=state.value,
            permanent=permanent,
            error=message,
        )
        return state

    def _failure(self, attempts: int, message: str, *, permanent: bool, now: float) -> dict[str, Any]:
        if permanent or attempts >= self._max_attempts:
            return {"state": JobState.FAILED.value, "error": message, "finished_at": now, **_NO_LEASE}
        delay = self._backoff * 2 ** max(attempts - 1, 0)
        return {
            "state": JobState.PENDING.value,
            "error": message,
            "not_before": now + delay,
            **_FRESH_ATTEMPT,
            **_NO_OWNER,
        }

    def _superseding_job(self, conn: Connection, job_id: int) -> int | None:
        """A failure of a version the file no longer holds, while the version it holds is
        done, is history at once (e.g. a partial read that failed after the full file)."""
        rel_path, sha256 = conn.execute(
            sa.select(_JOBS.c.rel_path, _JOBS.c.sha256).where(_JOBS.c.id == job_id)
        ).one()
        current = self._current_done_job(conn, rel_path)
        return None if sha256 == UNKNOWN_CONTENT or current == job_id else current

    def release(self, owner: Owner, job_ids: Sequence[int]) -> None:
        ids = sorted(set(job_ids))
        if not ids:
            return
        stmt = (
            sa.update(_JOBS)
            .where(*_held_by(owner), _JOBS.c.id.in_(ids))
            .values(
                state=JobState.PENDING.value,
                not_before=self._now(),
                started_at=None,
                attempts=_GIVE_BACK_ATTEMPT,
                **_FRESH_ATTEMPT,
                **_NO_OWNER,
            )
        )
        with self._transaction("release", write=True) as conn:
            released = conn.execute(stmt).rowcount
        log.info("leases released", requested=len(ids), released=released)

    def recover(self, owner: Owner | None = None) -> int:
        now = self._now()
        running = (
            sa.select(
                _JOBS.c.id,
                _JOBS.c.rel_path,
                _JOBS.c.attempts,
                _JOBS.c.lease_until,
                _JOBS.c.owner_host,
                _JOBS.c.owner_pid,
                _JOBS.c.owner_token,
                _JOBS.c.attempt_started,
            )
            .where(_JOBS.c.state == JobState.RUNNING.value)
            .with_for_update(skip_locked=True)
        )
        recovered = 0
        live_holders: set[int] = set()
        with self._transaction("recover", write=True) as conn:
            for row in conn.execute(running).all():
                reason = self._orphan_reason(row, owner, now)
                if reason is None:
                    if owner is not None and _foreign_live_holder(row, owner, self._host):
                        live_holders.add(row.owner_pid)
                    continue
                values = self._recovery(row, reason, now)
                if values["state"] == JobState.FAILED.value:
                    values["superseded_by"] = self._superseding_job(conn, row.id)
                conn.execute(
                    sa.update(_JOBS)
                    .where(_JOBS.c.id == row.id, _JOBS.c.state == JobState.RUNNING.value)
                    .values(**values)
                )
                recovered += 1
                log.warning(
                    "job recovered",
                    job_id=row.id,
                    path=row.rel_path,
                    reason=reason,
                    started=row.attempt_started is not None,
                    attempts=values.get("attempts", row.attempts),
                    state=values["state"],
                )
        if live_holders:
            log.warning(
                "running jobs held by another live process on this host (a second "
                "daemon on this database?); left alone until their lease expires",
                pids=sorted(live_holders),
            )
        return recovered

    def _orphan_reason(self, row: Any, owner: Owner | None, now: float) -> str | None:
        """Why a running job has no live holder any more, or None if it still has one."""
        if row.lease_until is None or row.lease_until <= now:
            return "lease expired"
        if row.owner_host != self._host:
            return None  # another host's process: only its lease can tell
        if row.owner_pid is not None and not _pid_alive(row.owner_pid):
            return f"owner process {row.owner_pid} is gone"
        if owner is not None and row.owner_token != owner.token and row.owner_pid == owner.pid:
            # Our own PID with another token: a previous run whose PID we were given again.
            return f"held by a previous run of the daemon (pid {row.owner_pid})"
        return None

    def _recovery(self, row: Any, reason: str, now: float) -> dict[str, Any]:
        if row.attempt_started is None:
            # Claimed but never started: the kill or hang was not this file's doing.
            return {
                "state": JobState.PENDING.value,
                "not_before": now,
                "attempts": max(int(row.attempts) - 1, 0),
                **_FRESH_ATTEMPT,
                **_NO_OWNER,
            }
        if row.attempts >= self._max_attempts:
            return {
                "state": JobState.FAILED.value,
                "finished_at": now,
                "error": f"crashed/timed out {row.attempts} times (last: {reason})",
                **_NO_LEASE,
            }
        return {
            "state": JobState.PENDING.value,
            "not_before": now,
            "error": reason,
            **_FRESH_ATTEMPT,
            **_NO_OWNER,
        }

    # ---- operator actions and reports

    def retry(self, job_ids: Sequence[int] | None = None, *, failed: bool = False) -> int:
        if job_ids is None and not failed:
            raise ValueError("retry: give job ids, or failed=True for every failed job")
        where = [_STANDING_FAILURE]
        if job_ids is not None:
            ids = sorted(set(job_ids))
            if not ids:
                return 0
            where.append(_JOBS.c.id.in_(ids))
        now = self._now()
        stmt = (
            sa.update(_JOBS)
            .where(*where)
            .values(
                state=JobState.PENDING.value,
                attempts=0,
                error=None,
                not_before=now,
                enqueued_at=now,
                started_at=None,
                finished_at=None,
                **_FRESH_ATTEMPT,
                **_NO_OWNER,
            )
        )
        with self._transaction("retry", write=True) as conn:
            count = conn.execute(stmt).rowcount
        log.info("failed jobs re-queued", count=count)
        return count

    def get(self, job_id: int) -> Job | None:
        query = sa.select(*_JOB_COLUMNS).where(_JOBS.c.id == job_id)
        with self._transaction("get", write=False) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _job(row)

    def jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        query = sa.select(*_JOB_COLUMNS).order_by(_JOBS.c.id.desc()).limit(max(limit, 0))
        if state is not None:
            wanted = JobState(state)
            query = query.where(
                _STANDING_FAILURE if wanted is JobState.FAILED else _JOBS.c.state == wanted.value
            )
        with self._transaction("jobs", write=False) as conn:
            return [_job(row) for row in conn.execute(query)]

    def stats(self, now: float | None = None) -> QueueStats:
        now = self._now() if now is None else float(now)
        with self._transaction("stats", write=False) as conn:
            counts = self._counts(conn)
            oldest = conn.execute(
                sa.select(sa.func.min(_JOBS.c.arrived_at)).where(_JOBS.c.state == JobState.PENDING.value)
            ).scalar()
            throughput = {
                "10m": self._done_since(conn, now - 600.0) / 10.0,
                "1h": self._done_since(conn, now - 3600.0) / 60.0,
            }
            latency = self._median_latency(conn, now)
            failures = self._recent_failures(conn)
        return QueueStats(
            counts=counts,
            oldest_pending_age_s=None if oldest is None else max(now - oldest, 0.0),
            throughput_per_min=throughput,
            median_latency_s=latency,
            recent_failures=failures,
        )

    def _counts(self, conn: Connection) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        # Superseded failures are history: counted nowhere, so monitors see standing ones.
        query = (
            sa.select(_JOBS.c.state, sa.func.count())
            .where(_JOBS.c.superseded_by.is_(None))
            .group_by(_JOBS.c.state)
        )
        for state, count in conn.execute(query):
            counts[state] = int(count)
        return counts

    def _done_since(self, conn: Connection, since: float) -> int:
        query = sa.select(sa.func.count()).where(
            _JOBS.c.state == JobState.DONE.value, _JOBS.c.finished_at >= since
        )
        return int(conn.execute(query).scalar() or 0)

    def _median_latency(self, conn: Connection, now: float) -> float | None:
        query = (
            sa.select(_JOBS.c.finished_at - _JOBS.c.arrived_at)
            .where(_JOBS.c.state == JobState.DONE.value, _JOBS.c.finished_at >= now - LATENCY_WINDOW_S)
            .order_by(_JOBS.c.finished_at.desc())
            .limit(LATENCY_MAX_JOBS)
        )
        latencies = [float(v) for v in conn.execute(query).scalars()]
        return statistics.median(latencies) if latencies else None

    def _recent_failures(self, conn: Connection) -> list[dict[str, Any]]:
        query = (
            sa.select(_JOBS.c.rel_path, _JOBS.c.error, _JOBS.c.finished_at)
            .where(_STANDING_FAILURE)
            .order_by(_JOBS.c.finished_at.desc(), _JOBS.c.id.desc())
            .limit(RECENT_FAILURES)
        )
        return [
            {"path": row.rel_path, "error": row.error, "at": row.finished_at} for row in conn.execute(query)
        ]

    # ---- daemons on several hosts

    def beat(self, owner: Owner, role: str) -> None:
        now = self._now()
        stmt = self._insert(_DAEMONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_DAEMONS.c.token],
            set_={"last_seen": stmt.excluded.last_seen, "role": stmt.excluded.role},
        )
        row = {"token": owner.token, "host": owner.host, "pid": owner.pid, "role": role}
        with self._transaction("heartbeat", write=True) as conn:
            conn.execute(stmt, {**row, "started_at": now, "last_seen": now})
            conn.execute(sa.delete(_DAEMONS).where(_DAEMONS.c.last_seen < now - FORGET_SECONDS))

    def forget(self, owner: Owner) -> None:
        with self._transaction("forget daemon", write=True) as conn:
            conn.execute(sa.delete(_DAEMONS).where(_DAEMONS.c.token == owner.token))

    def alive_workers(self, within: float = ALIVE_SECONDS) -> int:
        query = sa.select(sa.func.count()).where(
            _DAEMONS.c.role.in_(sorted(WORKER_ROLES)), _DAEMONS.c.last_seen >= self._now() - within
        )
        with self._transaction("alive workers", write=False) as conn:
            return int(conn.execute(query).scalar() or 0)

    def hold_watch(self, root: str, owner: Owner, seconds: float) -> Owner | None:
        now = self._now()
        lock = _WATCH_LOCKS
        # Make sure the row exists, then lock it: two hosts starting at once serialise here.
        ensure = self._insert(lock).on_conflict_do_nothing(index_elements=[lock.c.root])
        with self._transaction("watch lock", write=True) as conn:
            conn.execute(ensure, {"root": root, "lease_until": 0.0})
            row = conn.execute(sa.select(lock).where(lock.c.root == root).with_for_update()).one()
            held = row.owner_token is not None and row.lease_until > now
            if held and row.owner_token != owner.token and self._orphan_reason(row, owner, now) is None:
                return Owner(host=row.owner_host, pid=int(row.owner_pid), token=row.owner_token)
            conn.execute(
                sa.update(lock)
                .where(lock.c.root == root)
                .values(
                    owner_host=owner.host,
                    owner_pid=owner.pid,
                    owner_token=owner.token,
                    lease_until=now + seconds,
                )
            )
        if row.owner_token != owner.token:
            log.info(
                "watch lock taken",
                root=root,
                previous_host=row.owner_host if held else None,
                previous_pid=row.owner_pid if held else None,
            )
        return None

    def release_watch(self, root: str, owner: Owner) -> None:
        lock = _WATCH_LOCKS
        stmt = (
            sa.update(lock)
            .where(lock.c.root == root, lock.c.owner_token == owner.token)
            .values(owner_host=None, owner_pid=None, owner_token=None, lease_until=0.0)
        )
        with self._transaction("watch unlock", write=True) as conn:
            conn.execute(stmt)

    def close(self) -> None:
        self._engine.dispose()


def _held_by(owner: Owner) -> tuple[sa.ColumnElement[bool], ...]:
    return (_JOBS.c.state == JobState.RUNNING.value, _JOBS.c.owner_token == owner.token)


# The claim's provisional attempt, given back (never below zero).
_GIVE_BACK_ATTEMPT = sa.case((_JOBS.c.attempts > 0, _JOBS.c.attempts - 1), else_=0)


def _foreign_live_holder(row: Any, owner: Owner, host: str) -> bool:
    """A running job held on this host by a live process that is not `owner`."""
    return row.owner_host == host and row.owner_token != owner.token and row.owner_pid != owner.pid


def _job(row: Any) -> Job:
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
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # os.kill(0 or -n) would address a process group, not a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


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


def _not_a_queue(url: URL) -> str:
    path = sqlite_path(url.render_as_string(hide_password=False))
    try:
        empty = path is not None and path.stat().st_size == 0
    except OSError:
        empty = False
    what = "an empty file (0 bytes)" if empty else "no schema_version table"
    return f"not a semwatch queue database ({what}); check queue.database_url"


def _sqlite_on_begin(conn: Connection) -> None:
    # dialect: writes take the write lock at BEGIN, so a read-then-write transaction never
    # fails on lock upgrade; reads get a deferred BEGIN and a consistent WAL snapshot.
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _parse_url(database_url: str) -> URL:
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
    if backend not in _INSERTS:
        raise QueueError(
            f"{where}: unsupported database {backend!r} (semwatch supports sqlite and postgresql)"
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise QueueError(
            f"{where}: an in-memory SQLite queue cannot be shared between the "
            "daemon's connections; give a file path"
        )
    return url


def database_revision(database_url: str) -> str | None:
    """The schema revision of a database (None: empty), read without migrating anything."""
    url = _parse_url(database_url)
    where = redacted_url(url)
    try:
        engine = sa.create_engine(url)
    except (NoSuchModuleError, ImportError) as exc:
        raise QueueError(f"{where}: cannot load the database driver: {exc}") from exc
    try:
        with engine.connect() as conn:
            return schema.current_revision(conn)
    except schema.SchemaError as exc:
        raise QueueError(f"{where}: {exc}") from None
    except DBAPIError as exc:
        raise QueueError(f"{where}: {one_line(str(exc.orig) if exc.orig is not None else str(exc))}") from exc
    finally:
        engine.dispose()


def redacted_url(database_url: str | URL) -> str:
    """A database URL as logs and messages show it: the password as ***."""
    url = database_url if isinstance(database_url, URL) else make_url(database_url)
    return url.render_as_string(hide_password=True)


def check_sqlite_is_local(database_url: str) -> None:
    """QueueError when the URL's SQLite file is (to be) on a network filesystem, where
    its locking does not hold; other databases pass."""
    path = sqlite_path(database_url)
    if path is None:
        return
    folder = next((p for p in path.parents if p.exists()), Path("/"))
    if is_network_filesystem(folder):
        raise QueueError(
            f"{path}: SQLite on a network filesystem ({filesystem_type(folder)}) corrupts "
            "under concurrent access; put it on a local disk or use PostgreSQL (queue.database_url)"
        )


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL, None for other databases."""
    url = _parse_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database is None:
        return None
    return Path(url.database)


def open_queue(
    cfg: QueueConfig, *, clock: Callable[[], float] = time.time, read_only: bool = False
) -> JobQueue:
    """The queue configured in [queue]; creates a SQLite file's folder, refuses network fs.

    ``read_only`` (reports): an existing database only, never created, migrated or written.
    """
    path = sqlite_path(cfg.database_url)
    if path is not None and not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"{path.parent}: cannot create the database folder: {exc.strerror}") from exc
        check_sqlite_is_local(cfg.database_url)
    return SqlJobQueue(
        cfg.database_url,
        lease_seconds=cfg.lease_seconds,
        max_attempts=cfg.max_attempts,
        retry_backoff=cfg.retry_backoff,
        clock=clock,
        read_only=read_only,
    )


# --------------------------------------------------------------------------- one daemon


class DaemonLock:
    """One daemon per database: an flock on a file next to the SQLite database (or, for a
    server database, in the state folder). The kernel drops the lock when the holder dies."""

    def __init__(self, cfg: QueueConfig, state_dir: Path) -> None:
        self.path = lock_path(cfg.database_url, state_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise QueueError(f"{self.path}: cannot open the daemon lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise QueueError(f"another semwatch daemon (pid {holder}) holds {self.path}") from None
        except OSError as exc:
            os.close(fd)
            raise QueueError(f"{self.path}: cannot lock: {exc.strerror}") from exc
        # The pid is only for the message above; the flock is what excludes.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_path(database_url: str, state_dir: Path) -> Path:
    path = sqlite_path(database_url)
    if path is not None:
        return path.with_name(path.name + ".lock")
    digest = hashlib.sha256(redacted_url(database_url).encode()).hexdigest()[:16]
    return Path(state_dir) / f"daemon-{digest}.lock"


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError as exc:
        log.warning("cannot read the daemon lock file", error=exc.strerror)
        return "unknown"
    return text if text.isdigit() else "unknown"


# --------------------------------------------------------------------------- filesystems


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Mount points and filesystem types from /proc/<pid>/mountinfo (proc(5)), in order."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        # Optional fields between field 6 and the "-" separator vary in number.
        try:
            separator = fields.index("-", 6)
            mount_point, fs_type = fields[4], fields[separator + 1]
        except (ValueError, IndexError):
            log.debug("unparsable mountinfo line skipped", line=line)
            continue
        mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), mount_point)
        entries.append(MountEntry(mount_point=mount_point, fs_type=fs_type))
    return entries


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """Type of the filesystem holding `path` (which need not exist yet); None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            log.warning(
                "cannot read /proc/self/mountinfo; filesystem type unknown",
                path=str(path),
                error=exc.strerror,
            )
            return None
    target = PurePosixPath(os.path.realpath(path))
    best: tuple[int, str] | None = None
    for entry in parse_mountinfo(mountinfo):
        mount = PurePosixPath(entry.mount_point)
        if mount == target or mount in target.parents:
            depth = len(mount.parts)
            # ">=": a later entry on the same mount point is mounted over the earlier one.
            if best is None or depth >= best[0]:
                best = (depth, entry.fs_type)
    return None if best is None else best[1]


def is_network_fs_type(fs_type: str) -> bool:
    name = fs_type.lower()
    if name.startswith("fuse."):
        name = name[len("fuse.") :]
    return name in NETWORK_FS_TYPES


def is_network_filesystem(path: Path) -> bool:
    """Whether `path` lives on a network filesystem (NFS, SMB, sshfs, ...), by mountinfo."""
    fs_type = filesystem_type(path)
    return fs_type is not None and is_network_fs_type(fs_type)
