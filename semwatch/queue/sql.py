"""The SQL back-end of the job queue (see semwatch.queue.interface for its rules).

The same SQL runs on SQLite (the embedded default) and PostgreSQL. The dialects differ in
only three places, each marked "dialect:" (here and in semwatch.queue.engines): how a write
transaction starts (SQLite needs BEGIN IMMEDIATE so that a read-then-write transaction
never fails on lock upgrade), which INSERT ... ON CONFLICT construct is used, and the
advisory lock that serialises schema migration on PostgreSQL. Claims use `SELECT ... FOR
UPDATE SKIP LOCKED`, which SQLAlchemy renders on PostgreSQL and drops on SQLite, where the
IMMEDIATE lock already excludes other writers.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from semwatch import schema
from semwatch.errors import one_line
from semwatch.log import get_logger
from semwatch.queue.clock import ServerClock
from semwatch.queue.engines import INSERTS, WRITE_OPTION, error_reason, queue_engine
from semwatch.queue.interface import ALIVE_SECONDS, FORGET_SECONDS, WORKER_ROLES, JobQueue
from semwatch.queue.records import (
    LATENCY_MAX_JOBS,
    LATENCY_WINDOW_S,
    RECENT_FAILURES,
    UNKNOWN_CONTENT,
    DaemonBeat,
    Job,
    JobState,
    Owner,
    QueueError,
    QueueStats,
)
from semwatch.queue.tables import DAEMONS, FILES, JOB_COLUMNS, JOBS, STANDING_FAILURE, WATCH_LOCKS, to_job
from semwatch.queue.urls import parse_url, redacted_url, sqlite_path

log = get_logger(__name__)

# Bound parameters per IN (...) list, well under SQLite's and drivers' limits.
_CHUNK = 500
# Key of the PostgreSQL advisory lock held while one process migrates the schema.
_PG_MIGRATION_LOCK = 0x5E3_0A7C
# Merged into transitions out of RUNNING: done/failed keep the owner as history, a job
# going back to pending forgets it.
_NO_LEASE: Mapping[str, Any] = MappingProxyType({"lease_until": None})
_NO_OWNER: Mapping[str, Any] = MappingProxyType(
    {"lease_until": None, "owner_host": None, "owner_pid": None, "owner_token": None}
)
# Merged into every transition back to pending: the next attempt starts from scratch.
_FRESH_ATTEMPT: Mapping[str, Any] = MappingProxyType({"attempt_started": None, "superseded_by": None})
# Merged into the transitions that end an attempt in order (done, failed, released): the job
# is no crash suspect. recover() alone leaves the mark, so the job then runs alone.
_ORDERLY_END: Mapping[str, Any] = MappingProxyType({"crash_suspect": False})


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
        url = parse_url(database_url)
        self._where = redacted_url(url)
        self._dialect = url.get_backend_name()
        self._insert = INSERTS[self._dialect]
        self._lease = float(lease_seconds)
        self._max_attempts = int(max_attempts)
        self._backoff = float(retry_backoff)
        self._host = hostname or socket.gethostname()
        self._read_only = read_only
        self._engine = queue_engine(url, self._where, read_only=read_only)
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
                    conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            raise QueueError(f"{self._where}: {what} failed: {error_reason(exc)}") from exc

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
        query = sa.select(FILES.c.rel_path, FILES.c.sha256).where(FILES.c.rel_path.in_(rel_paths))
        return {path: sha256 for path, sha256 in conn.execute(query)}

    def _record_files(self, conn: Connection, rows: list[_Arrival], now: float) -> None:
        stmt = self._insert(FILES)
        stmt = stmt.on_conflict_do_update(
            index_elements=[FILES.c.rel_path],
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
            self._insert(JOBS)
            .on_conflict_do_nothing(index_elements=[JOBS.c.rel_path, JOBS.c.sha256])
            .returning(JOBS.c.id, JOBS.c.rel_path, JOBS.c.sha256)
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
            sa.update(JOBS)
            .where(JOBS.c.rel_path == r.rel_path, JOBS.c.sha256 == r.sha256, JOBS.c.state.in_(finished))
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
            .returning(JOBS.c.id)
        )
        job_id = conn.execute(stmt).scalar_one_or_none()
        if job_id is not None:
            log.info("job re-queued", job_id=job_id, path=r.rel_path, reason=why)
        return job_id

    def record_failure(self, rel_path: str, size: int, mtime: float, error: str) -> bool:
        now = self._now()
        message = one_line(error)
        version = (JOBS.c.rel_path == rel_path, JOBS.c.sha256 == UNKNOWN_CONTENT)
        with self._transaction("record_failure", write=True) as conn:
            row = conn.execute(
                sa.select(JOBS.c.state, JOBS.c.error, JOBS.c.superseded_by).where(*version)
            ).one_or_none()
            if row is None:
                conn.execute(
                    sa.insert(JOBS).values(
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
                sa.update(JOBS)
                .where(*version)
                .values(
                    size=int(size), mtime=float(mtime), error=message, finished_at=now, superseded_by=None
                )
            )
        return True

    def known_files(self) -> dict[str, tuple[int, float]]:
        query = sa.select(FILES.c.rel_path, FILES.c.size, FILES.c.mtime)
        with self._transaction("known_files", write=False) as conn:
            return {path: (size, mtime) for path, size, mtime in conn.execute(query)}

    def note_unchanged(self, rel_path: str, size: int, mtime: float) -> None:
        stmt = (
            sa.update(FILES)
            .where(FILES.c.rel_path == rel_path)
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
        query = sa.select(FILES.c.sha256).where(FILES.c.rel_path == rel_path)
        with self._transaction("latest_sha256", write=False) as conn:
            return conn.execute(query).scalar_one_or_none()

    # ---- the lease cycle

    def claim(self, owner: Owner, limit: int, *, suspects: bool = True) -> list[Job]:
        if limit <= 0:
            return []
        now = self._now()
        with self._transaction("claim", write=True) as conn:
            # A crash suspect runs alone: were it batched, a second crash would charge its
            # batch mates again.
            ids = self._due(conn, now, 1, suspect=True) if suspects else []
            if not ids:
                ids = self._due(conn, now, limit, suspect=False)
            if not ids:
                return []
            stmt = (
                sa.update(JOBS)
                .where(JOBS.c.id.in_(ids), JOBS.c.state == JobState.PENDING.value)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=JOBS.c.attempts + 1,
                    started_at=now,
                    attempt_started=None,
                    lease_until=now + self._lease,
                    owner_host=owner.host,
                    owner_pid=owner.pid,
                    owner_token=owner.token,
                )
                .returning(*JOB_COLUMNS)
            )
            claimed = [to_job(row) for row in conn.execute(stmt)]
        order = {job_id: i for i, job_id in enumerate(ids)}
        claimed.sort(key=lambda job: order[job.id])
        log.debug("jobs claimed", job_ids=[job.id for job in claimed])
        return claimed

    def _due(self, conn: Connection, now: float, limit: int, *, suspect: bool) -> list[int]:
        due = (
            sa.select(JOBS.c.id)
            .where(
                JOBS.c.state == JobState.PENDING.value,
                JOBS.c.not_before <= now,
                JOBS.c.crash_suspect.is_(sa.true() if suspect else sa.false()),
            )
            .order_by(JOBS.c.arrived_at, JOBS.c.id)
            .limit(limit)
            # dialect: rendered on PostgreSQL (workers on several hosts), dropped on SQLite.
            .with_for_update(skip_locked=True)
        )
        return list(conn.execute(due).scalars())

    def start(self, owner: Owner, job_ids: Sequence[int]) -> None:
        ids = sorted(set(job_ids))
        if not ids:
            return
        stmt = (
            sa.update(JOBS)
            .where(*_held_by(owner), JOBS.c.id.in_(ids), JOBS.c.attempt_started.is_(None))
            .values(attempt_started=self._now(), crash_suspect=True)
        )
        with self._transaction("start", write=True) as conn:
            conn.execute(stmt)

    def decode_ahead(self, owner: Owner, job_ids: Sequence[int]) -> None:
        ids = sorted(set(job_ids))
        if not ids:
            return
        stmt = sa.update(JOBS).where(*_held_by(owner), JOBS.c.id.in_(ids)).values(crash_suspect=True)
        with self._transaction("decode ahead", write=True) as conn:
            conn.execute(stmt)

    def renew(self, owner: Owner, job_ids: Sequence[int]) -> None:
        wanted = set(job_ids)
        if not wanted:
            return
        stmt = (
            sa.update(JOBS)
            .where(*_held_by(owner), JOBS.c.id.in_(sorted(wanted)))
            .values(lease_until=self._now() + self._lease)
            .returning(JOBS.c.id)
        )
        with self._transaction("renew", write=True) as conn:
            renewed = set(conn.execute(stmt).scalars())
        if renewed != wanted:
            log.warning(
                "leases lost; another worker or recover() took these jobs", job_ids=sorted(wanted - renewed)
            )

    def complete(
        self, owner: Owner, job_id: int, output_path: str, *, sidecar_error: str | None = None
    ) -> None:
        # Also accepted when the lease was lost but nobody else holds the job: the output
        # belongs to this file version, so redoing it would only rewrite the same file.
        mine = sa.and_(*_held_by(owner))
        unheld = JOBS.c.state.in_([JobState.PENDING.value, JobState.FAILED.value])
        stmt = (
            sa.update(JOBS)
            .where(JOBS.c.id == job_id, sa.or_(mine, unheld))
            .values(
                state=JobState.DONE.value,
                finished_at=self._now(),
                error=None,
                output_path=output_path,
                superseded_by=None,
                sidecar_error=sidecar_error,
                **_NO_LEASE,
                **_ORDERLY_END,
            )
            .returning(JOBS.c.rel_path)
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

    def note_sidecar(self, output_path: str, error: str | None) -> int:
        stmt = (
            sa.update(JOBS)
            .where(JOBS.c.output_path == output_path, JOBS.c.state == JobState.DONE.value)
            .values(sidecar_error=error)
        )
        with self._transaction("note sidecar", write=True) as conn:
            return conn.execute(stmt).rowcount

    def output_holders(self, output_path: str, *, other_than: str) -> list[str]:
        query = (
            sa.select(JOBS.c.rel_path)
            .where(
                JOBS.c.output_path == output_path,
                JOBS.c.state == JobState.DONE.value,
                JOBS.c.rel_path != other_than,
            )
            .distinct()
            .order_by(JOBS.c.rel_path)
        )
        with self._transaction("output holders", write=False) as conn:
            return list(conn.execute(query).scalars())

    def move_output(self, rel_path: str, old_path: str, new_path: str) -> int:
        stmt = (
            sa.update(JOBS)
            .where(
                JOBS.c.rel_path == rel_path,
                JOBS.c.output_path == old_path,
                JOBS.c.state == JobState.DONE.value,
            )
            .values(output_path=new_path)
        )
        with self._transaction("move output", write=True) as conn:
            return conn.execute(stmt).rowcount

    def _supersede_failures(self, conn: Connection, rel_path: str) -> int:
        """Once the path's current version is done, its other failures are history."""
        current = self._current_done_job(conn, rel_path)
        if current is None:
            return 0
        stmt = (
            sa.update(JOBS)
            .where(JOBS.c.rel_path == rel_path, STANDING_FAILURE, JOBS.c.id != current)
            .values(superseded_by=current)
        )
        return conn.execute(stmt).rowcount

    def _current_done_job(self, conn: Connection, rel_path: str) -> int | None:
        """The done job of the content the path holds now (by the watcher's record)."""
        latest = sa.select(FILES.c.sha256).where(FILES.c.rel_path == rel_path).scalar_subquery()
        query = sa.select(JOBS.c.id).where(
            JOBS.c.rel_path == rel_path, JOBS.c.sha256 == latest, JOBS.c.state == JobState.DONE.value
        )
        return conn.execute(query).scalar_one_or_none()

    def fail(self, owner: Owner, job_id: int, error: str, *, permanent: bool) -> JobState:
        now = self._now()
        message = one_line(error)
        with self._transaction("fail", write=True) as conn:
            row = conn.execute(
                sa.select(JOBS.c.state, JOBS.c.attempts, JOBS.c.owner_token)
                .where(JOBS.c.id == job_id)
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
            conn.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(**values))
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
            return {
                "state": JobState.FAILED.value,
                "error": message,
                "finished_at": now,
                **_NO_LEASE,
                **_ORDERLY_END,
            }
        delay = self._backoff * 2 ** max(attempts - 1, 0)
        return {
            "state": JobState.PENDING.value,
            "error": message,
            "not_before": now + delay,
            **_FRESH_ATTEMPT,
            **_NO_OWNER,
            **_ORDERLY_END,
        }

    def _superseding_job(self, conn: Connection, job_id: int) -> int | None:
        """A failure of a version the file no longer holds, while the version it holds is
        done, is history at once (e.g. a partial read that failed after the full file)."""
        rel_path, sha256 = conn.execute(
            sa.select(JOBS.c.rel_path, JOBS.c.sha256).where(JOBS.c.id == job_id)
        ).one()
        current = self._current_done_job(conn, rel_path)
        return None if sha256 == UNKNOWN_CONTENT or current == job_id else current

    def release(self, owner: Owner, job_ids: Sequence[int], *, delay: float = 0.0) -> None:
        ids = sorted(set(job_ids))
        if not ids:
            return
        stmt = (
            sa.update(JOBS)
            .where(*_held_by(owner), JOBS.c.id.in_(ids))
            .values(
                state=JobState.PENDING.value,
                not_before=self._now() + max(delay, 0.0),
                started_at=None,
                attempts=_GIVE_BACK_ATTEMPT,
                **_FRESH_ATTEMPT,
                **_NO_OWNER,
                **_ORDERLY_END,
            )
        )
        with self._transaction("release", write=True) as conn:
            released = conn.execute(stmt).rowcount
        log.info("leases released", requested=len(ids), released=released)

    def recover(self, owner: Owner | None = None) -> int:
        now = self._now()
        running = (
            sa.select(
                JOBS.c.id,
                JOBS.c.rel_path,
                JOBS.c.attempts,
                JOBS.c.lease_until,
                JOBS.c.owner_host,
                JOBS.c.owner_pid,
                JOBS.c.owner_token,
                JOBS.c.attempt_started,
                JOBS.c.crash_suspect,
            )
            .where(JOBS.c.state == JobState.RUNNING.value)
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
                    sa.update(JOBS)
                    .where(JOBS.c.id == row.id, JOBS.c.state == JobState.RUNNING.value)
                    .values(**values)
                )
                recovered += 1
                log.warning(
                    "job recovered",
                    job_id=row.id,
                    path=row.rel_path,
                    reason=reason,
                    started=row.attempt_started is not None,
                    runs_alone=bool(row.crash_suspect),
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
        where = [STANDING_FAILURE]
        if job_ids is not None:
            ids = sorted(set(job_ids))
            if not ids:
                return 0
            where.append(JOBS.c.id.in_(ids))
        now = self._now()
        stmt = (
            sa.update(JOBS)
            .where(*where)
            .values(
                state=JobState.PENDING.value,
                attempts=0,
                error=None,
                arrived_at=now,
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
        query = sa.select(*JOB_COLUMNS).where(JOBS.c.id == job_id)
        with self._transaction("get", write=False) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else to_job(row)

    def jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        query = sa.select(*JOB_COLUMNS).order_by(JOBS.c.id.desc()).limit(max(limit, 0))
        if state is not None:
            wanted = JobState(state)
            query = query.where(
                STANDING_FAILURE if wanted is JobState.FAILED else JOBS.c.state == wanted.value
            )
        with self._transaction("jobs", write=False) as conn:
            return [to_job(row) for row in conn.execute(query)]

    def stats(self, now: float | None = None, *, details: bool = True) -> QueueStats:
        now = self._now() if now is None else float(now)
        throughput: dict[str, float] = {}
        latency: float | None = None
        failures: list = []
        sidecars: list = []
        with self._transaction("stats", write=False) as conn:
            counts = self._counts(conn)
            oldest = conn.execute(
                sa.select(sa.func.min(JOBS.c.arrived_at)).where(JOBS.c.state == JobState.PENDING.value)
            ).scalar()
            if details:
                throughput = {
                    "10m": self._done_since(conn, now - 600.0) / 10.0,
                    "1h": self._done_since(conn, now - 3600.0) / 60.0,
                }
                latency = self._median_latency(conn, now)
                failures = self._recent_failures(conn)
                sidecars = self._sidecar_problems(conn)
        return QueueStats(
            counts=counts,
            oldest_pending_age_s=None if oldest is None else max(now - oldest, 0.0),
            throughput_per_min=throughput,
            median_latency_s=latency,
            recent_failures=failures,
            sidecar_problems=sidecars,
        )

    def _counts(self, conn: Connection) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        # Superseded failures are history: counted nowhere, so monitors see standing ones.
        query = (
            sa.select(JOBS.c.state, sa.func.count())
            .where(JOBS.c.superseded_by.is_(None))
            .group_by(JOBS.c.state)
        )
        for state, count in conn.execute(query):
            counts[state] = int(count)
        return counts

    def _done_since(self, conn: Connection, since: float) -> int:
        query = sa.select(sa.func.count()).where(
            JOBS.c.state == JobState.DONE.value, JOBS.c.finished_at >= since
        )
        return int(conn.execute(query).scalar() or 0)

    def _median_latency(self, conn: Connection, now: float) -> float | None:
        query = (
            sa.select(JOBS.c.finished_at - JOBS.c.arrived_at)
            .where(JOBS.c.state == JobState.DONE.value, JOBS.c.finished_at >= now - LATENCY_WINDOW_S)
            .order_by(JOBS.c.finished_at.desc())
            .limit(LATENCY_MAX_JOBS)
        )
        latencies = [float(v) for v in conn.execute(query).scalars()]
        return statistics.median(latencies) if latencies else None

    def _recent_failures(self, conn: Connection) -> list[dict[str, Any]]:
        query = (
            sa.select(JOBS.c.rel_path, JOBS.c.error, JOBS.c.finished_at)
            .where(STANDING_FAILURE)
            .order_by(JOBS.c.finished_at.desc(), JOBS.c.id.desc())
            .limit(RECENT_FAILURES)
        )
        return [
            {"path": row.rel_path, "error": row.error, "at": row.finished_at} for row in conn.execute(query)
        ]

    def _sidecar_problems(self, conn: Connection) -> list[dict[str, Any]]:
        query = (
            sa.select(
                JOBS.c.id, JOBS.c.rel_path, JOBS.c.output_path, JOBS.c.sidecar_error, JOBS.c.finished_at
            )
            .where(JOBS.c.state == JobState.DONE.value, JOBS.c.sidecar_error.is_not(None))
            .order_by(JOBS.c.finished_at.desc(), JOBS.c.id.desc())
            .limit(RECENT_FAILURES)
        )
        return [
            {
                "id": row.id,
                "path": row.rel_path,
                "output": row.output_path,
                "error": row.sidecar_error,
                "at": row.finished_at,
            }
            for row in conn.execute(query)
        ]

    # ---- daemons on several hosts

    def beat(self, owner: Owner, role: str) -> None:
        now = self._now()
        stmt = self._insert(DAEMONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[DAEMONS.c.token],
            set_={"last_seen": stmt.excluded.last_seen, "role": stmt.excluded.role, "stopped_at": None},
        )
        row = {"token": owner.token, "host": owner.host, "pid": owner.pid, "role": role}
        with self._transaction("heartbeat", write=True) as conn:
            conn.execute(stmt, {**row, "started_at": now, "last_seen": now})
            conn.execute(sa.delete(DAEMONS).where(DAEMONS.c.last_seen < now - FORGET_SECONDS))

    def sign_off(self, owner: Owner) -> None:
        now = self._now()
        stmt = sa.update(DAEMONS).where(DAEMONS.c.token == owner.token).values(last_seen=now, stopped_at=now)
        with self._transaction("daemon sign-off", write=True) as conn:
            conn.execute(stmt)

    def daemons(self) -> list[DaemonBeat]:
        query = sa.select(DAEMONS).order_by(DAEMONS.c.last_seen.desc(), DAEMONS.c.started_at.desc())
        with self._transaction("daemons", write=False) as conn:
            return [
                DaemonBeat(
                    host=row.host,
                    pid=int(row.pid),
                    role=row.role,
                    started_at=float(row.started_at),
                    last_seen=float(row.last_seen),
                    stopped_at=None if row.stopped_at is None else float(row.stopped_at),
                )
                for row in conn.execute(query)
            ]

    def alive_workers(self, within: float = ALIVE_SECONDS) -> int:
        query = sa.select(sa.func.count()).where(
            DAEMONS.c.role.in_(sorted(WORKER_ROLES)),
            DAEMONS.c.last_seen >= self._now() - within,
            DAEMONS.c.stopped_at.is_(None),
        )
        with self._transaction("alive workers", write=False) as conn:
            return int(conn.execute(query).scalar() or 0)

    def hold_watch(self, root: str, owner: Owner, seconds: float) -> Owner | None:
        now = self._now()
        lock = WATCH_LOCKS
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
        lock = WATCH_LOCKS
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
    return (JOBS.c.state == JobState.RUNNING.value, JOBS.c.owner_token == owner.token)


# The claim's provisional attempt, given back (never below zero).
_GIVE_BACK_ATTEMPT = sa.case((JOBS.c.attempts > 0, JOBS.c.attempts - 1), else_=0)


def _foreign_live_holder(row: Any, owner: Owner, host: str) -> bool:
    """A running job held on this host by a live process that is not `owner`."""
    return row.owner_host == host and row.owner_token != owner.token and row.owner_pid != owner.pid


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


def _not_a_queue(url: URL) -> str:
    path = sqlite_path(url.render_as_string(hide_password=False))
    try:
        empty = path is not None and path.stat().st_size == 0
    except OSError:
        empty = False
    what = "an empty file (0 bytes)" if empty else "no schema_version table"
    return f"not a semwatch queue database ({what}); check queue.database_url"
