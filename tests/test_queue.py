"""The job queue on real databases: dedup, the lease cycle, recovery, stats, schema, locks.

Every test of the queue's semantics runs twice, on a SQLite file and on a fresh PostgreSQL
database (the `database_url` fixture of conftest.py); tests of SQLite's own behaviour (WAL,
the lock file, databases of semwatch before Alembic) use `sqlite_url`.

Time is moved with an injected clock, never by sleeping. Concurrency is exercised with real
processes and threads on one database file. Nothing is mocked except, in one test, the
filesystem type of the database folder: no network filesystem can be mounted here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from daemon_harness import Site, gray_image, png_bytes, write_atomically

from semwatch import filesystems, schema
from semwatch import queue as queue_module
from semwatch.config import QueueConfig
from semwatch.daemon_lock import DaemonLock, lock_path
from semwatch.filesystems import (
    MountEntry,
    filesystem_type,
    is_network_filesystem,
    is_network_fs_type,
    parse_mountinfo,
)
from semwatch.queue import SCHEMA_VERSION, Job, JobState, Owner, QueueError, SqlJobQueue, open_queue

T0 = 1_700_000_000.0
LEASE = 60.0
BACKOFF = 10.0
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_url(database_url: str) -> str:
    return database_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def queue(db_url: str, clock: FakeClock) -> SqlJobQueue:
    q = SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=BACKOFF, clock=clock)
    yield q
    q.close()


@pytest.fixture
def owner() -> Owner:
    return Owner(host=socket.gethostname(), pid=os.getpid(), token="1" * 32)


def _one_job(queue: SqlJobQueue, owner: Owner, path: str = "a.tif") -> Job:
    """One job claimed and started, as the daemon does before decoding it."""
    assert queue.enqueue(path, SHA_A, 10, 1.0) is not None
    (job,) = queue.claim(owner, 1)
    queue.start(owner, [job.id])
    return job


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: os.kill(pid, 0) now raises ProcessLookupError
    return proc.pid


# ------------------------------------------------------------------ schema and set-up


def test_new_sqlite_database_is_wal_and_versioned(sqlite_url: str, tmp_path: Path) -> None:
    SqlJobQueue(sqlite_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1).close()
    with sqlite3.connect(tmp_path / "queue.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"jobs", "files", "daemons", "watch_locks", "alembic_version"} <= tables
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (schema.head_revision(),)
        ]
        # The pre-Alembic marker, at the value that makes semwatch before Alembic refuse.
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_reopening_keeps_the_data(db_url: str, clock: FakeClock) -> None:
    first = SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1, clock=clock)
    job_id = first.enqueue("a.tif", SHA_A, 10, 1.0)
    first.close()
    second = SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1, clock=clock)
    try:
        assert second.get(job_id).state is JobState.PENDING
        assert second.revision() == schema.head_revision()
    finally:
        second.close()


def _set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def test_newer_schema_is_refused(db_url: str) -> None:
    SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1).close()
    _set_revision(db_url, "9999")
    with pytest.raises(QueueError, match=r"schema revision 9999 is newer than this semwatch") as info:
        SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1)
    assert "\n" not in str(info.value)
    with pytest.raises(QueueError, match=r"schema revision 9999 is newer"):
        _read_only(db_url)


def test_migrations_build_exactly_the_declared_schema(db_url: str) -> None:
    """The migration scripts and the tables the code declares agree (Alembic's autogenerate
    comparison finds nothing to do), on both back-ends."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1).close()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), queue_module.Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


# The schema semwatch 0.1 created (schema version 1), as SQLite stored it.
SCHEMA_1_SQLITE = (
    """
CREATE TABLE jobs (id INTEGER NOT NULL, rel_path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL,
    size BIGINT NOT NULL, mtime DOUBLE NOT NULL, state VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL, arrived_at DOUBLE NOT NULL, enqueued_at DOUBLE NOT NULL,
    started_at DOUBLE, finished_at DOUBLE, not_before DOUBLE NOT NULL, lease_until DOUBLE,
    owner_host VARCHAR(255), owner_pid INTEGER, owner_token VARCHAR(32), error TEXT,
    output_path TEXT, PRIMARY KEY (id), CONSTRAINT uq_jobs_version UNIQUE (rel_path, sha256),
    CONSTRAINT ck_jobs_state CHECK (state IN ('pending', 'running', 'done', 'failed')));
CREATE INDEX ix_jobs_claim ON jobs (state, arrived_at);
CREATE INDEX ix_jobs_finished ON jobs (state, finished_at);
CREATE TABLE files (rel_path TEXT NOT NULL, size BIGINT NOT NULL, mtime DOUBLE NOT NULL,
    sha256 VARCHAR(64) NOT NULL, seen_at DOUBLE NOT NULL, PRIMARY KEY (rel_path));
CREATE TABLE schema_version (version INTEGER NOT NULL, PRIMARY KEY (version));
INSERT INTO schema_version VALUES (1);
INSERT INTO files VALUES ('a.tif', 10, 1.0, '"""
    + SHA_A
    + """', 0.0);
INSERT INTO jobs (id, rel_path, sha256, size, mtime, state, attempts, arrived_at, enqueued_at,
    started_at, not_before, lease_until, owner_host, owner_pid, owner_token)
    VALUES (1, 'a.tif', '"""
    + SHA_A
    + """', 10, 1.0, 'running', 1, 0.0, 0.0, 5.0, 0.0, 1e12,
            'gone-host', 1, 'old');
"""
)


def _schema_1_database(path: Path) -> str:
    raw = sqlite3.connect(path)
    raw.executescript(SCHEMA_1_SQLITE)
    raw.close()
    return f"sqlite:///{path}"


# What schema version 2 (the last before Alembic) added to schema 1, as SQLite stored it.
SCHEMA_2_SQLITE = """
ALTER TABLE jobs ADD COLUMN attempt_started DOUBLE;
ALTER TABLE jobs ADD COLUMN superseded_by BIGINT;
UPDATE jobs SET attempt_started = 5.0, superseded_by = NULL;
INSERT INTO jobs (id, rel_path, sha256, size, mtime, state, attempts, arrived_at, enqueued_at,
    not_before, finished_at, error, superseded_by)
    VALUES (2, 'a.tif', '' , 10, 1.0, 'failed', 0, 0.0, 0.0, 0.0, 0.0, 'unreadable', 1);
UPDATE schema_version SET version = 2;
"""


def _schema_2_database(path: Path) -> str:
    url = _schema_1_database(path)
    raw = sqlite3.connect(path)
    raw.executescript(SCHEMA_2_SQLITE)
    raw.close()
    return url


def _assert_at_head(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (schema.head_revision(),)
        ]
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path, clock: FakeClock) -> None:
    url = _schema_1_database(tmp_path / "old.db")
    queue = SqlJobQueue(url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1, clock=clock)
    try:
        job = queue.get(1)
        # Schema 1 counted the attempt at the claim: the running job's attempt stays counted.
        assert (job.state, job.attempts, job.attempt_started) == (JobState.RUNNING, 1, 5.0)
        assert job.superseded_by is None
        assert queue.alive_workers() == 0  # the scale-out tables exist
    finally:
        queue.close()
    _assert_at_head(tmp_path / "old.db")


def test_a_schema_2_database_is_stamped_then_upgraded(tmp_path: Path, clock: FakeClock) -> None:
    url = _schema_2_database(tmp_path / "old.db")
    queue = SqlJobQueue(url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1, clock=clock)
    try:
        # Stamped as 0002: schema 1 -> 2 did not run again (it would reset attempt_started
        # from started_at) and the columns it added were not added twice.
        assert queue.get(1).attempt_started == 5.0
        failed = queue.get(2)
        assert (failed.state, failed.superseded_by, failed.error) == (JobState.FAILED, 1, "unreadable")
        owner = Owner.current()
        assert queue.hold_watch("/inbox", owner, 30.0) is None
    finally:
        queue.close()
    _assert_at_head(tmp_path / "old.db")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueError, match=r"bogus\.db: .*not a database") as info:
        SqlJobQueue(f"sqlite:///{bogus}", lease_seconds=LEASE, max_attempts=3, retry_backoff=1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("sqlite://", "in-memory"),
        ("mysql://u:secret@db/semwatch", "unsupported database"),
        ("::nonsense::", "not a database URL"),
    ],
)
def test_unusable_urls(url: str, reason: str) -> None:
    with pytest.raises(QueueError, match=reason) as info:
        SqlJobQueue(url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1)
    assert "secret" not in str(info.value)


def test_open_queue_creates_the_database_folder(tmp_path: Path) -> None:
    db = tmp_path / "var" / "deep" / "semwatch.db"
    q = open_queue(QueueConfig(database_url=f"sqlite:///{db}"))
    try:
        assert db.is_file()
        assert q.stats().counts == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    finally:
        q.close()


def test_open_queue_refuses_sqlite_on_a_network_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mocked: no NFS/SMB share can be mounted in the test environment.
    monkeypatch.setattr(filesystems, "filesystem_type", lambda path: "nfs4")
    db = tmp_path / "share" / "semwatch.db"
    with pytest.raises(QueueError, match=r"semwatch\.db: SQLite on a network filesystem \(nfs4\)"):
        open_queue(QueueConfig(database_url=f"sqlite:///{db}"))
    assert not db.exists()


# ------------------------------------------------------------------ arrival and dedup


def test_same_version_is_one_job(queue: SqlJobQueue) -> None:
    job_id = queue.enqueue("run1/a.tif", SHA_A, 100, 1.0)
    assert job_id is not None
    assert queue.enqueue("run1/a.tif", SHA_A, 100, 1.0) is None
    assert [j.id for j in queue.jobs()] == [job_id]
    job = queue.get(job_id)
    assert (job.rel_path, job.sha256, job.size, job.state, job.attempts) == (
        "run1/a.tif",
        SHA_A,
        100,
        JobState.PENDING,
        0,
    )


def test_touch_is_not_a_job(queue: SqlJobQueue) -> None:
    queue.enqueue("a.tif", SHA_A, 100, 1.0)
    queue.note_unchanged("a.tif", 100, 2.0)
    assert queue.known_files() == {"a.tif": (100, 2.0)}
    assert queue.latest_sha256("a.tif") == SHA_A
    assert len(queue.jobs()) == 1
    queue.note_unchanged("never-seen.tif", 1, 1.0)  # logged and ignored
    assert "never-seen.tif" not in queue.known_files()


def test_changed_content_is_a_new_job(queue: SqlJobQueue) -> None:
    first = queue.enqueue("a.tif", SHA_A, 100, 1.0)
    second = queue.enqueue("a.tif", SHA_B, 120, 2.0)
    assert second is not None and second != first
    assert queue.known_files() == {"a.tif": (120, 2.0)}
    assert queue.latest_sha256("a.tif") == SHA_B
    assert queue.latest_sha256("other.tif") is None


def test_again_requeues_a_finished_version(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    queue.complete(owner, job.id, "out/a.tif")
    assert queue.enqueue("a.tif", SHA_A, 10, 1.0) is None
    assert queue.enqueue("a.tif", SHA_A, 10, 1.0, again=True) == job.id
    again = queue.get(job.id)
    assert (again.state, again.attempts, again.output_path) == (JobState.PENDING, 0, None)
    # Already pending: nothing to re-queue.
    assert queue.enqueue("a.tif", SHA_A, 10, 1.0, again=True) is None


def test_content_changed_back_is_queued_again(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    queue.complete(owner, job.id, "out/a.tif")
    version_b = queue.enqueue("a.tif", SHA_B, 11, 2.0)
    (claimed,) = queue.claim(owner, 1)
    queue.complete(owner, claimed.id, "out/a.tif")  # B's output replaced A's
    # DESIGN.md: the output reflects the current content, so A's job runs again.
    assert queue.enqueue("a.tif", SHA_A, 10, 3.0) == job.id
    again = queue.get(job.id)
    assert (again.state, again.attempts, again.output_path) == (JobState.PENDING, 0, None)
    assert queue.latest_sha256("a.tif") == SHA_A and queue.known_files()["a.tif"] == (10, 3.0)
    # Same content once more (a copy over itself): nothing to do.
    assert queue.enqueue("a.tif", SHA_A, 10, 4.0) is None
    # Back to B in a bulk enqueue, as the watcher does: B's done job is queued again.
    assert queue.enqueue_many([("a.tif", SHA_B, 11, 5.0, T0)]) == 1
    assert queue.get(version_b).state is JobState.PENDING
    # again=True re-does a failed version too.
    (b_again,) = [j for j in queue.claim(owner, 2) if j.id == version_b]
    queue.fail(owner, b_again.id, "bad", permanent=True)
    assert queue.enqueue("a.tif", SHA_B, 11, 5.0, again=True) == version_b
    assert queue.get(version_b).state is JobState.PENDING


def test_content_changed_back_while_still_queued_is_one_job(queue: SqlJobQueue) -> None:
    first = queue.enqueue("a.tif", SHA_A, 10, 1.0)
    queue.enqueue("a.tif", SHA_B, 11, 2.0)
    assert queue.enqueue("a.tif", SHA_A, 10, 3.0) is None  # A's job has not run yet
    assert queue.get(first).state is JobState.PENDING and len(queue.jobs()) == 2


def test_enqueue_many_records_and_dedups_in_one_call(queue: SqlJobQueue, clock: FakeClock) -> None:
    records = [(f"d/{i:05d}.tif", f"{i:064x}", i, float(i), T0 - i) for i in range(1200)]
    records.append(("d/00000.tif", SHA_C, 7, 7.0, T0))  # same path twice: the last wins
    assert queue.enqueue_many(records) == 1200
    assert queue.enqueue_many(records) == 0
    assert queue.enqueue_many([]) == 0
    known = queue.known_files()
    assert len(known) == 1200 and known["d/00000.tif"] == (7, 7.0)
    assert queue.latest_sha256("d/00001.tif") == f"{1:064x}"
    assert queue.stats().counts["pending"] == 1200


# ------------------------------------------------------------------ the lease cycle


def test_claim_leases_oldest_first(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    ids = {
        name: queue.enqueue(name, SHA_A, 1, 1.0, arrived_at=T0 - age)
        for name, age in (("new.tif", 1), ("old.tif", 30), ("mid.tif", 10))
    }
    claimed = queue.claim(owner, 2)
    assert [j.rel_path for j in claimed] == ["old.tif", "mid.tif"]
    assert all(j.state is JobState.RUNNING and j.attempts == 1 for j in claimed)
    assert [j.id for j in queue.claim(owner, 5)] == [ids["new.tif"]]
    assert queue.claim(owner, 5) == []
    assert queue.claim(owner, 0) == []


def _claim_worker(url: str, start: Any, results: Any) -> None:
    q = SqlJobQueue(url, lease_seconds=600, max_attempts=3, retry_backoff=1)
    owner = Owner.current()
    start.wait()
    got: list[int] = []
    while batch := q.claim(owner, 3):
        got.extend(job.id for job in batch)
    q.close()
    results.put(got)


@pytest.mark.slow  # spawned processes import torch; the fast loop has the threads variant
def test_claim_is_atomic_across_processes(queue: SqlJobQueue, db_url: str) -> None:
    queue.enqueue_many((f"{i}.tif", SHA_A, 1, 1.0, T0) for i in range(200))
    all_ids = {job.id for job in queue.jobs(limit=1000)}
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_claim_worker, args=(db_url, start, results)) for _ in range(2)]
    for w in workers:
        w.start()
    start.set()
    claimed = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    flat = [job_id for ids in claimed for job_id in ids]
    assert len(flat) == len(set(flat)) == 200
    assert set(flat) == all_ids


def test_claim_is_atomic_across_threads(queue: SqlJobQueue) -> None:
    queue.enqueue_many((f"{i}.tif", SHA_A, 1, 1.0, T0) for i in range(100))
    claimed: list[list[int]] = [[] for _ in range(4)]

    def work(slot: int) -> None:
        owner = Owner(host="h", pid=os.getpid(), token=f"{slot:032d}")
        while batch := queue.claim(owner, 2):
            claimed[slot].extend(job.id for job in batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    flat = [job_id for ids in claimed for job_id in ids]
    assert len(flat) == len(set(flat)) == 100


def test_complete_marks_done(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    queue.complete(owner, job.id, "out/a.tif")
    done = queue.get(job.id)
    assert (done.state, done.output_path, done.attempts) == (JobState.DONE, "out/a.tif", 1)


def test_complete_leaves_another_holders_job_alone(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    stranger = Owner(host=owner.host, pid=owner.pid, token="2" * 32)
    queue.complete(stranger, job.id, "out/a.tif")
    assert queue.get(job.id).state is JobState.RUNNING


def test_complete_after_the_lease_was_lost(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    job = _one_job(queue, owner)
    clock.advance(LEASE + 1)
    assert queue.recover() == 1
    # The output of this version is written: no reason to colorize it again.
    queue.complete(owner, job.id, "out/a.tif")
    assert queue.get(job.id).state is JobState.DONE


def test_renew_extends_the_lease(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    job = _one_job(queue, owner)
    clock.advance(LEASE - 10)
    queue.renew(owner, [job.id])
    clock.advance(LEASE - 10)
    assert queue.recover(owner) == 0
    clock.advance(11)
    assert queue.recover(owner) == 1
    queue.renew(owner, [job.id])  # lost: logged, no change
    assert queue.get(job.id).state is JobState.PENDING


def test_transient_failure_backs_off_then_fails(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    job = _one_job(queue, owner)
    assert queue.fail(owner, job.id, "disk hiccup", permanent=False) is JobState.PENDING
    assert queue.get(job.id).error == "disk hiccup"
    for delay in (BACKOFF, 2 * BACKOFF):
        assert queue.claim(owner, 1) == []
        clock.advance(delay - 0.5)
        assert queue.claim(owner, 1) == []
        clock.advance(0.5)
        (again,) = queue.claim(owner, 1)
        if again.attempts < 3:
            assert queue.fail(owner, again.id, "disk hiccup", permanent=False) is JobState.PENDING
    assert again.attempts == 3
    assert queue.fail(owner, again.id, "disk hiccup", permanent=False) is JobState.FAILED
    failed = queue.get(job.id)
    assert (failed.state, failed.attempts, failed.error) == (JobState.FAILED, 3, "disk hiccup")


def test_permanent_failure_is_final_and_one_line(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    error = "cannot decode a.tif:\n  Traceback...\n" + "x" * 2000
    assert queue.fail(owner, job.id, error, permanent=True) is JobState.FAILED
    stored = queue.get(job.id).error
    assert stored.startswith("cannot decode a.tif: Traceback...")
    assert "\n" not in stored and len(stored) <= 500
    assert queue.claim(owner, 1) == []


def test_fail_by_a_non_holder_changes_nothing(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    stranger = Owner(host=owner.host, pid=owner.pid, token="2" * 32)
    assert queue.fail(stranger, job.id, "nope", permanent=True) is JobState.RUNNING
    with pytest.raises(QueueError, match="no job with id 999"):
        queue.fail(owner, 999, "nope", permanent=True)


def test_release_gives_the_attempt_back(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)
    assert job.attempts == 1
    queue.release(owner, [job.id])
    released = queue.get(job.id)
    assert (released.state, released.attempts) == (JobState.PENDING, 0)
    (again,) = queue.claim(owner, 1)
    assert again.attempts == 1


# ------------------------------------------------------------------ recovery


def test_expired_lease_returns_to_pending_with_the_attempt_counted(
    queue: SqlJobQueue, owner: Owner, clock: FakeClock
) -> None:
    job = _one_job(queue, owner)
    clock.advance(LEASE - 1)
    assert queue.recover(owner) == 0
    clock.advance(2)
    assert queue.recover(owner) == 1
    back = queue.get(job.id)
    assert (back.state, back.attempts, back.error) == (JobState.PENDING, 1, "lease expired")
    (again,) = queue.claim(owner, 1)
    assert again.attempts == 2


def test_dead_owner_is_reclaimed_at_once(queue: SqlJobQueue) -> None:
    gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token="3" * 32)
    job = _one_job(queue, gone)
    assert queue.recover() == 1  # well inside the lease
    back = queue.get(job.id)
    assert back.state is JobState.PENDING and back.attempts == 1
    assert f"owner process {gone.pid} is gone" in back.error


def test_previous_run_on_this_host_is_reclaimed(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)  # our own, live PID
    assert queue.recover(owner) == 0
    restarted = Owner(host=owner.host, pid=owner.pid, token="4" * 32)
    assert queue.recover(restarted) == 1
    assert queue.get(job.id).state is JobState.PENDING


def test_other_hosts_keep_their_lease(queue: SqlJobQueue, clock: FakeClock) -> None:
    remote = Owner(host="other-host", pid=_dead_pid(), token="5" * 32)
    _one_job(queue, remote)
    assert queue.recover(Owner.current()) == 0  # a PID means nothing on another host
    clock.advance(LEASE + 1)
    assert queue.recover(Owner.current()) == 1


def test_a_file_that_keeps_crashing_ends_failed(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    job = _one_job(queue, owner)
    for _ in range(2):
        clock.advance(LEASE + 1)
        assert queue.recover() == 1
        queue.claim(owner, 1)
        queue.start(owner, [job.id])
    clock.advance(LEASE + 1)
    assert queue.recover() == 1
    failed = queue.get(job.id)
    assert failed.state is JobState.FAILED and failed.attempts == 3
    assert failed.error.startswith("crashed/timed out 3 times")
    assert queue.claim(owner, 1) == []


def test_a_claim_that_never_started_costs_no_attempt(queue: SqlJobQueue, clock: FakeClock) -> None:
    """kill -9 between claim and decode (or a hang before it): nobody's fault."""
    job_id = queue.enqueue("a.tif", SHA_A, 10, 1.0)
    for _ in range(5):  # more kills than max_attempts
        gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token=os.urandom(16).hex())
        (claimed,) = queue.claim(gone, 1)
        assert queue.recover() == 1
        back = queue.get(job_id)
        assert (back.state, back.attempts) == (JobState.PENDING, 0), back
        assert claimed.attempts == 1 and claimed.attempt_started is None  # provisional
    # An expired lease of an unstarted claim is given back the same way.
    stalled = Owner(host="other-host", pid=1, token="6" * 32)
    queue.claim(stalled, 1)
    clock.advance(LEASE + 1)
    assert queue.recover() == 1 and queue.get(job_id).attempts == 0


def test_a_started_job_whose_owner_dies_each_time_ends_failed(queue: SqlJobQueue) -> None:
    """A file that crashes the daemon while it is decoded or computed."""
    job_id = queue.enqueue("crash.tif", SHA_A, 10, 1.0)
    for attempt in (1, 2, 3):
        gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token=os.urandom(16).hex())
        (claimed,) = queue.claim(gone, 1)
        queue.start(gone, [claimed.id])
        assert queue.get(job_id).attempt_started is not None
        assert queue.recover() == 1
        assert queue.get(job_id).attempts == attempt
    failed = queue.get(job_id)
    assert failed.state is JobState.FAILED and failed.error.startswith("crashed/timed out 3 times")


def test_jobs_in_hand_when_their_owner_died_are_claimed_alone(queue: SqlJobQueue, clock: FakeClock) -> None:
    """Crash isolation: the batch computing is charged, the batch decoded ahead is not; both
    come back as crash suspects that are claimed one at a time, before the others."""
    shas = [f"{i:x}" * 64 for i in range(1, 10)]
    ids = [queue.enqueue(f"j{i}.tif", sha, 10, 1.0) for i, sha in enumerate(shas)]
    gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token="7" * 32)
    computing = queue.claim(gone, 4)
    queue.start(gone, [job.id for job in computing])
    ahead = queue.claim(gone, 4, suspects=False)
    queue.decode_ahead(gone, [job.id for job in ahead])
    assert queue.recover() == 8
    back = {job_id: queue.get(job_id) for job_id in ids[:8]}
    assert all(job.state is JobState.PENDING and job.crash_suspect for job in back.values())
    assert [back[job.id].attempts for job in computing] == [1] * 4
    assert [back[job.id].attempts for job in ahead] == [0] * 4
    assert not queue.get(ids[8]).crash_suspect  # not in hand
    owner = Owner.current()
    # A batch decoded ahead never takes a suspect; the next batch is a suspect alone.
    (other,) = queue.claim(owner, 4, suspects=False)
    assert other.id == ids[8]
    (alone,) = queue.claim(owner, 4)
    assert alone.id == ids[0] and alone.crash_suspect
    queue.start(owner, [alone.id])
    queue.complete(owner, alone.id, "out/j0.tif")
    assert not queue.get(alone.id).crash_suspect
    (alone,) = queue.claim(owner, 4)
    queue.start(owner, [alone.id])
    queue.fail(owner, alone.id, "bad", permanent=False)
    assert not queue.get(alone.id).crash_suspect  # its attempt ended in order


def test_a_suspect_that_crashes_alone_ends_failed_with_the_crash(queue: SqlJobQueue) -> None:
    job_id = queue.enqueue("poison.tif", SHA_A, 10, 1.0)
    for attempt in (1, 2, 3):
        gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token=os.urandom(16).hex())
        (claimed,) = queue.claim(gone, 4)
        assert claimed.crash_suspect == (attempt > 1)
        queue.start(gone, [claimed.id])
        assert queue.recover() == 1
    failed = queue.get(job_id)
    assert failed.state is JobState.FAILED and failed.error.startswith("crashed/timed out 3 times")


def test_an_output_taken_over_by_a_sibling_is_recorded_where_it_moved(
    queue: SqlJobQueue, owner: Owner
) -> None:
    job = _one_job(queue, owner, "z.TIF")
    queue.complete(owner, job.id, "/out/z.tif")
    assert queue.output_holders("/out/z.tif", other_than="z.tif") == ["z.TIF"]
    assert queue.output_holders("/out/z.tif", other_than="z.TIF") == []
    assert queue.move_output("z.TIF", "/out/z.tif", "/out/z.TIF.tif") == 1
    assert queue.get(job.id).output_path == "/out/z.TIF.tif"
    assert queue.output_holders("/out/z.tif", other_than="z.tif") == []


def test_release_gives_a_started_attempt_back_too(queue: SqlJobQueue, owner: Owner) -> None:
    job = _one_job(queue, owner)  # started: e.g. decoded when the output share went away
    queue.release(owner, [job.id])
    back = queue.get(job.id)
    assert (back.state, back.attempts, back.attempt_started) == (JobState.PENDING, 0, None)


def test_a_live_owner_on_this_host_keeps_its_leases(queue: SqlJobQueue, clock: FakeClock) -> None:
    """A second daemon whose lock file was deleted must not take the first one's jobs."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        first = Owner(host=socket.gethostname(), pid=other.pid, token="7" * 32)
        job = _one_job(queue, first)
        second = Owner(host=socket.gethostname(), pid=os.getpid(), token="8" * 32)
        assert queue.recover(second) == 0
        assert queue.get(job.id).state is JobState.RUNNING
        clock.advance(LEASE + 1)  # only the lease can take them
        assert queue.recover(second) == 1
    finally:
        other.kill()
        other.wait()


def test_retry_failed_jobs(queue: SqlJobQueue, owner: Owner) -> None:
    ids = []
    for name in ("a.tif", "b.tif", "c.tif"):
        job = _one_job(queue, owner, name)
        queue.fail(owner, job.id, "bad", permanent=True)
        ids.append(job.id)
    assert queue.retry([ids[0]]) == 1
    assert queue.retry([ids[0]]) == 0  # pending now, not failed
    assert queue.retry([]) == 0
    assert queue.retry(failed=True) == 2
    assert all(
        queue.get(i).state is JobState.PENDING and queue.get(i).attempts == 0 and queue.get(i).error is None
        for i in ids
    )
    with pytest.raises(ValueError, match="failed=True"):
        queue.retry()


def test_stats_without_details_are_the_counts_and_backlog_age_of_the_full_stats(
    queue: SqlJobQueue, owner: Owner
) -> None:
    """What the systemd status line and every metrics scrape read: the same numbers as
    `semwatch status`, without the latency and failure queries."""
    done = _one_job(queue, owner, "done.tif")
    queue.complete(owner, done.id, "out/done.tif")
    failed = _one_job(queue, owner, "bad.tif")
    queue.fail(owner, failed.id, "cannot decode", permanent=True)
    queue.enqueue("waiting.tif", SHA_B, 10, 1.0, arrived_at=queue.now() - 30)
    full, brief = queue.stats(now=queue.now()), queue.stats(now=queue.now(), details=False)
    assert brief.counts == full.counts == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    assert brief.oldest_pending_age_s == pytest.approx(full.oldest_pending_age_s, abs=1.0)
    assert brief.oldest_pending_age_s >= 29
    assert full.recent_failures and full.throughput_per_min["10m"] > 0
    assert brief.recent_failures == [] and brief.throughput_per_min == {} and brief.median_latency_s is None


# ------------------------------------------------------------------ superseded failures


def test_a_completed_newer_version_supersedes_earlier_failures(queue: SqlJobQueue, owner: Owner) -> None:
    """A slow writer's partial file fails; the complete file's success makes that history."""
    partial = _one_job(queue, owner, "slow.tif")
    queue.fail(owner, partial.id, "truncated TIFF", permanent=True)
    assert queue.stats().counts["failed"] == 1
    assert queue.enqueue("slow.tif", SHA_B, 20, 2.0) is not None
    (full,) = queue.claim(owner, 1)
    queue.complete(owner, full.id, "out/slow.tif")

    stats = queue.stats()
    assert stats.counts == {"pending": 0, "running": 0, "done": 1, "failed": 0}
    assert stats.recent_failures == [] and queue.jobs(JobState.FAILED) == []
    assert queue.get(partial.id).superseded_by == full.id
    assert queue.get(partial.id).state is JobState.FAILED  # kept as history
    assert queue.retry(failed=True) == 0 and queue.retry([partial.id]) == 0


def test_a_late_failure_of_an_old_version_is_history_at_once(queue: SqlJobQueue, owner: Owner) -> None:
    old = _one_job(queue, owner, "a.tif")  # version A, still running
    queue.enqueue("a.tif", SHA_B, 20, 2.0)
    (new,) = queue.claim(owner, 1)
    queue.complete(owner, new.id, "out/a.tif")
    assert queue.fail(owner, old.id, "cannot read", permanent=True) is JobState.FAILED
    assert queue.get(old.id).superseded_by == new.id
    assert queue.stats().counts["failed"] == 0


def test_a_failure_of_the_current_content_stands(queue: SqlJobQueue, owner: Owner) -> None:
    done = _one_job(queue, owner, "a.tif")
    queue.complete(owner, done.id, "out/a.tif")
    queue.enqueue("a.tif", SHA_B, 20, 2.0)
    (bad,) = queue.claim(owner, 1)
    queue.fail(owner, bad.id, "undecodable", permanent=True)
    # The older version's success says nothing about the content the file holds now.
    assert queue.get(bad.id).superseded_by is None
    assert [f["path"] for f in queue.stats().recent_failures] == ["a.tif"]


def test_record_failure_shows_a_file_that_cannot_be_queued(queue: SqlJobQueue, owner: Owner) -> None:
    assert queue.record_failure("locked.tif", 10, 1.0, "cannot read: Permission denied")
    assert not queue.record_failure("locked.tif", 10, 1.0, "cannot read: Permission denied")
    assert queue.record_failure("locked.tif", 12, 2.0, "cannot read: I/O error")
    (job,) = queue.jobs(JobState.FAILED)
    assert (job.rel_path, job.sha256, job.error) == ("locked.tif", "", "cannot read: I/O error")
    assert queue.stats().recent_failures[0]["path"] == "locked.tif"
    assert queue.known_files() == {}  # not a version: the next scan looks at the file again
    # Readable again: its real content is queued and done, and the record becomes history.
    queue.enqueue("locked.tif", SHA_A, 12, 2.0)
    (real,) = queue.claim(owner, 1)
    queue.complete(owner, real.id, "out/locked.tif")
    assert queue.stats().counts == {"pending": 0, "running": 0, "done": 1, "failed": 0}
    # Unreadable again later: a new incident shows again...
    assert queue.record_failure("locked.tif", 12, 3.0, "cannot read: I/O error")
    assert queue.stats().counts["failed"] == 1
    # ...until the file is readable with the content that is done (a touch, no new job).
    queue.note_unchanged("locked.tif", 12, 4.0)
    assert queue.stats().counts["failed"] == 0


# ------------------------------------------------------------------ read-only (status)


def _read_only(url: str) -> SqlJobQueue:
    return SqlJobQueue(url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1, read_only=True)


def test_read_only_queue_answers_while_a_writer_holds_the_lock(sqlite_url: str, tmp_path: Path) -> None:
    db_url = sqlite_url
    with SqlJobQueue(db_url, lease_seconds=LEASE, max_attempts=3, retry_backoff=1) as queue:
        queue.enqueue("a.tif", SHA_A, 10, 1.0)
    writer = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
        writer.execute("UPDATE files SET seen_at = 1")
        reader = _read_only(db_url)
        try:
            assert reader.stats().counts["pending"] == 1
            with pytest.raises(QueueError, match="readonly|read-only|read only"):
                reader.enqueue("b.tif", SHA_B, 1, 1.0)
        finally:
            reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_read_only_queue_reads_and_refuses_writes(queue: SqlJobQueue, db_url: str) -> None:
    queue.enqueue("a.tif", SHA_A, 10, 1.0)
    reader = _read_only(db_url)
    try:
        assert reader.stats().counts["pending"] == 1
        with pytest.raises(QueueError, match="readonly|read-only|read only") as info:
            reader.enqueue("b.tif", SHA_B, 1, 1.0)
        assert "\n" not in str(info.value)
    finally:
        reader.close()


def test_read_only_open_never_creates_or_migrates(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(QueueError, match=r"not a semwatch queue database \(an empty file") as info:
        _read_only(f"sqlite:///{empty}")
    assert "\n" not in str(info.value)
    assert empty.stat().st_size == 0
    with pytest.raises(QueueError, match="unable to open"):
        _read_only(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    old = _schema_1_database(tmp_path / "old.db")
    with pytest.raises(QueueError, match="schema revision 0001 is older"):
        _read_only(old)
    with sqlite3.connect(tmp_path / "old.db") as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    raw.close()


# ------------------------------------------------------------------ stats


def test_stats_of_an_empty_queue(queue: SqlJobQueue) -> None:
    assert queue.stats().as_dict() == {
        "counts": {"pending": 0, "running": 0, "done": 0, "failed": 0},
        "oldest_pending_age_s": None,
        "throughput_per_min": {"10m": 0.0, "1h": 0.0},
        "median_latency_s": None,
        "recent_failures": [],
        "sidecar_problems": [],
    }


def test_stats_numbers(queue: SqlJobQueue, owner: Owner, clock: FakeClock) -> None:
    for name, age in (("j1", 300), ("j2", 200), ("j3", 100), ("j4", 50), ("j5", 10)):
        queue.enqueue(name, SHA_A, 1, 1.0, arrived_at=T0 - age)
    j1, j2, j3 = queue.claim(owner, 3)
    queue.complete(owner, j1.id, "o1")  # latency 300
    clock.advance(30)
    queue.complete(owner, j2.id, "o2")  # latency 230
    queue.fail(owner, j3.id, "bad tiff", permanent=True)

    stats = queue.stats().as_dict()
    assert stats["counts"] == {"pending": 2, "running": 0, "done": 2, "failed": 1}
    assert stats["oldest_pending_age_s"] == pytest.approx(80.0)
    assert stats["throughput_per_min"] == pytest.approx({"10m": 0.2, "1h": 2 / 60})
    assert stats["median_latency_s"] == pytest.approx(265.0)
    assert stats["recent_failures"] == [{"path": "j3", "error": "bad tiff", "at": T0 + 30}]
    json.dumps(stats)

    later = queue.stats(now=T0 + 30 + 700).as_dict()
    assert later["throughput_per_min"] == pytest.approx({"10m": 0.0, "1h": 2 / 60})
    assert queue.stats(now=T0 + 30 + 4000).median_latency_s is None


# ------------------------------------------------------------------ daemons on several hosts


def test_heartbeats_count_the_workers_alive(queue: SqlJobQueue, clock: FakeClock) -> None:
    worker = Owner(host="gpu1", pid=10, token="w" * 32)
    both = Owner(host="gpu2", pid=11, token="a" * 32)
    watcher = Owner(host="scope1", pid=12, token="s" * 32)
    assert queue.alive_workers() == 0
    queue.beat(worker, "worker")
    queue.beat(both, "all")
    queue.beat(watcher, "watcher")
    assert queue.alive_workers() == 2  # a watcher colorizes nothing
    clock.advance(queue_module.ALIVE_SECONDS - 1)
    queue.beat(worker, "worker")  # an upsert: still one row for this daemon
    clock.advance(2)
    assert queue.alive_workers() == 1  # gpu2 stopped beating
    queue.sign_off(worker)
    assert queue.alive_workers() == 0  # at once, not after ALIVE_SECONDS


def test_the_service_state_from_the_heartbeat_rows(queue: SqlJobQueue, clock: FakeClock) -> None:
    """Running (where, since when, last beat), several workers, then stopped: cleanly (its
    row stays as "last seen") or by dying (it just stops beating)."""
    from semwatch.queue import DaemonState, read_service_state
    from semwatch.report import service_details, service_headline, waiting_note

    never = read_service_state(queue)
    assert never.as_dict()["state"] == "stopped" and never.as_dict()["last_beat"] is None
    assert "no daemon has run on this database" in service_headline(never)

    gpu1 = Owner(host="gpu1", pid=10, token="1" * 32)
    gpu2 = Owner(host="gpu2", pid=11, token="2" * 32)
    queue.beat(gpu1, "all")
    clock.advance(5)
    one = read_service_state(queue)
    assert one.as_dict()["state"] == "running" and one.as_dict()["hosts"] == ["gpu1"]
    assert one.as_dict()["last_beat_age_s"] == pytest.approx(5)
    assert service_headline(one).startswith("running on gpu1 (pid 10, watches and colorizes) since ")
    assert "last beat 5.0 s ago" in service_headline(one) and waiting_note(one) is None

    queue.beat(gpu2, "worker")
    several = read_service_state(queue)
    assert several.as_dict()["workers"] == 2 and several.as_dict()["hosts"] == ["gpu1", "gpu2"]
    assert service_headline(several) == "running: 2 daemons on gpu1, gpu2, 2 of them colorizing"
    assert len(service_details(several)) == 2

    queue.sign_off(gpu2)
    clock.advance(queue_module.ALIVE_SECONDS + 60)  # gpu1 was killed: no goodbye, no beats
    stopped = read_service_state(queue)
    assert [stopped.state_of(d) for d in stopped.daemons] == [DaemonState.STOPPED, DaemonState.LOST]
    assert stopped.as_dict()["state"] == "stopped" and stopped.as_dict()["hosts"] == []
    assert stopped.as_dict()["last_beat_age_s"] == pytest.approx(queue_module.ALIVE_SECONDS + 60)
    headline = service_headline(stopped)
    assert (
        headline.startswith("stopped: last seen 1 min 30 s ago (") and "on gpu2, stopped cleanly" in headline
    )
    assert "pending jobs wait until the service starts" in waiting_note(stopped)

    watcher = Owner(host="scope", pid=12, token="3" * 32)
    queue.beat(watcher, "watcher")
    only_watching = read_service_state(queue)
    assert "no worker colorizes, so pending jobs wait" in service_headline(only_watching)
    assert waiting_note(only_watching) is not None


def test_a_retried_job_waits_from_the_retry_not_from_its_first_arrival(
    queue: SqlJobQueue, clock: FakeClock, owner: Owner
) -> None:
    job = _one_job(queue, owner, "bad.tif")
    queue.fail(owner, job.id, "cannot decode", permanent=True)
    clock.advance(3600)
    assert queue.retry([job.id]) == 1
    assert queue.stats().oldest_pending_age_s == 0
    clock.advance(7)
    assert queue.stats().oldest_pending_age_s == pytest.approx(7)


def test_one_watcher_per_input_folder(queue: SqlJobQueue, clock: FakeClock) -> None:
    first = Owner(host="scope-a", pid=_dead_pid(), token="1" * 32)
    second = Owner(host="scope-b", pid=os.getpid(), token="2" * 32)
    assert queue.hold_watch("/data/inbox", first, 30.0) is None
    # Another host's watcher: a dead-looking PID means nothing there, only the lock's expiry.
    assert queue.hold_watch("/data/inbox", second, 30.0) == first
    assert queue.hold_watch("/data/other", second, 30.0) is None  # another root is free
    clock.advance(20)
    assert queue.hold_watch("/data/inbox", first, 30.0) is None  # renewed
    clock.advance(20)
    assert queue.hold_watch("/data/inbox", second, 30.0) == first
    clock.advance(11)
    assert queue.hold_watch("/data/inbox", second, 30.0) is None  # expired: taken over
    assert queue.hold_watch("/data/inbox", first, 30.0) == second
    queue.release_watch("/data/inbox", second)
    assert queue.hold_watch("/data/inbox", first, 30.0) is None


def test_a_dead_watcher_on_this_host_is_replaced_at_once(queue: SqlJobQueue) -> None:
    gone = Owner(host=socket.gethostname(), pid=_dead_pid(), token="1" * 32)
    assert queue.hold_watch("/inbox", gone, 3600.0) is None
    me = Owner(host=socket.gethostname(), pid=os.getpid(), token="2" * 32)
    assert queue.hold_watch("/inbox", me, 3600.0) is None


def test_watch_lock_is_exclusive_across_threads(queue: SqlJobQueue) -> None:
    owners = [Owner(host=f"h{i}", pid=1, token=f"{i:032d}") for i in range(4)]
    winners: list[Owner] = []
    barrier = threading.Barrier(len(owners))

    def contend(owner: Owner) -> None:
        barrier.wait()
        if queue.hold_watch("/inbox", owner, 60.0) is None:
            winners.append(owner)

    threads = [threading.Thread(target=contend, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 1


def test_the_server_clock_is_read_once_per_sync_interval() -> None:
    reads: list[float] = []

    def server() -> float:
        reads.append(1.0)
        return 5_000.0 + len(reads)

    clock = queue_module.ServerClock(server, sync_seconds=3600.0)
    first, second = clock(), clock()
    assert len(reads) == 1 and 5_001.0 <= first <= second < 5_002.0
    assert queue_module.ServerClock(server, sync_seconds=0.0)() >= 5_002.0


# A host whose clock runs an hour fast: time.time, the clock a queue on "this host's clock"
# reads, moved for the whole process before semwatch is imported.
HOST_SKEW = 3600.0
_FAST_HOST = f"import time; _real = time.time; time.time = lambda: _real() + {HOST_SKEW}\n"

# The queue as the daemon opens it (open_queue, no clock given): every write that stamps a
# time, once each. Prints this host's clock and the queue's.
_FAST_HOST_QUEUE = (
    _FAST_HOST
    + """
import json, os, socket, sys
from semwatch.config import QueueConfig
from semwatch.queue import Owner, open_queue
lease = float(sys.argv[2])
queue = open_queue(QueueConfig(database_url=sys.argv[1], lease_seconds=lease))
owner = Owner(host=socket.gethostname(), pid=os.getpid(), token="f" * 32)
queue.enqueue("fast.tif", "f" * 64, 1, 1.0)
(job,) = queue.claim(owner, 1)
queue.start(owner, [job.id])
queue.renew(owner, [job.id])
queue.beat(owner, "worker")
assert queue.hold_watch("/inbox", owner, lease) is None
print(json.dumps({"host": time.time(), "queue": queue.now()}))
queue.close()
"""
)


def _server_time(url: str) -> float:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return float(conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar())
    finally:
        engine.dispose()


def _stamps(url: str) -> dict[str, float]:
    """Every time the queue wrote, by table.column (leases as the time they were taken)."""
    queries = {
        "jobs": "SELECT rel_path, arrived_at, enqueued_at, started_at, attempt_started, "
        "lease_until - :lease AS lease_taken FROM jobs",
        "files": "SELECT rel_path, seen_at FROM files",
        "daemons": "SELECT started_at, last_seen FROM daemons",
        "watch_locks": "SELECT root, lease_until - :lease AS lease_taken FROM watch_locks",
    }
    stamps: dict[str, float] = {}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            for table, query in queries.items():
                for row in conn.execute(sa.text(query), {"lease": LEASE}).mappings():
                    key = row.get("rel_path") or row.get("root") or ""
                    stamps.update(
                        {f"{table}.{k} {key}": float(v) for k, v in row.items() if isinstance(v, float)}
                    )
    finally:
        engine.dispose()
    return stamps


def test_postgresql_queues_run_on_the_servers_clock_on_a_host_an_hour_fast(
    postgres_url: str, tmp_path: Path
) -> None:
    """Leases, heartbeats, watch locks and arrivals written by a host whose clock is an hour
    fast follow the server's clock: the queue as the daemon opens it, and `semwatch enqueue`.
    (A server on the same host as the test agrees with the host's clock, so the skew is made.)"""
    site = Site(tmp_path / "site", tmp_path / "unused.safetensors", db_url=postgres_url)
    site.write_config(queue={"lease_seconds": LEASE})
    write_atomically(site.inbox / "cli.png", png_bytes(gray_image(0)))
    before = _server_time(postgres_url)
    queue_run = subprocess.run(
        [sys.executable, "-c", _FAST_HOST_QUEUE, postgres_url, str(LEASE)], capture_output=True, text=True
    )
    assert queue_run.returncode == 0, queue_run.stderr
    enqueue = subprocess.run(
        [sys.executable, "-c", _FAST_HOST + "from semwatch.cli import main; main()", "enqueue"]
        + [str(site.inbox / "cli.png"), "--config", str(site.config)],
        capture_output=True,
        text=True,
    )
    assert enqueue.returncode == 0, enqueue.stderr
    after = _server_time(postgres_url)

    clocks = json.loads(queue_run.stdout.splitlines()[-1])  # after the log lines
    assert clocks["host"] - after > HOST_SKEW - 60, "the host's clock was not skewed"
    # ServerClock carries the server's time on the host's monotonic clock: a few seconds'
    # allowance for the round trip, nothing near the hour of skew.
    assert before - 5 <= clocks["queue"] <= after + 5
    stamps = _stamps(postgres_url)
    assert len(stamps) == 12, sorted(stamps)  # the CLI's job: arrival only, not claimed
    off = {name: round(t - after) for name, t in stamps.items() if not before - 5 <= t <= after + 5}
    assert not off, f"seconds after the server's clock (host skew {HOST_SKEW:.0f} s): {off}"


def test_a_plain_postgresql_url_uses_psycopg_3(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with SqlJobQueue(plain, lease_seconds=LEASE, max_attempts=3, retry_backoff=1) as queue:
        assert queue.enqueue("a.tif", SHA_A, 1, 1.0) is not None


# ------------------------------------------------------------------ one daemon per database

_LOCK_SCRIPT = """
import sys
from pathlib import Path
from semwatch.config import QueueConfig
from semwatch.daemon_lock import DaemonLock
from semwatch.queue import QueueError
try:
    DaemonLock(QueueConfig(database_url=sys.argv[1]), Path(sys.argv[2])).acquire()
except QueueError as exc:
    print(exc)
    sys.exit(3)
print("acquired")
"""


def _try_lock_in_another_process(url: str, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _LOCK_SCRIPT, url, str(state_dir)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_daemon_lock_is_exclusive_across_processes(sqlite_url: str, tmp_path: Path) -> None:
    db_url = sqlite_url
    cfg = QueueConfig(database_url=db_url)
    lock = DaemonLock(cfg, tmp_path / "state")
    assert lock.path == tmp_path / "queue.db.lock"
    with lock:
        other = _try_lock_in_another_process(db_url, tmp_path / "state")
        assert other.returncode == 3, other.stderr
        assert other.stdout.strip() == (
            f"another semwatch daemon (pid {os.getpid()}) holds {tmp_path / 'queue.db.lock'}"
        )
    # Released; the child takes it, and the kernel drops it when the child exits.
    assert _try_lock_in_another_process(db_url, tmp_path / "state").stdout.strip() == "acquired"
    with DaemonLock(cfg, tmp_path / "state"):
        pass


def test_server_database_lock_lives_in_the_state_dir(tmp_path: Path) -> None:
    url = "postgresql://semwatch:secret@db.example/semwatch"
    path = lock_path(url, tmp_path / "state")
    assert path.parent == tmp_path / "state" and path.suffix == ".lock"
    assert path == lock_path(url.replace("secret", "other"), tmp_path / "state")


# ------------------------------------------------------------------ filesystems

SAMPLE_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
36 27 0:50 /export /mnt/sem\\040share rw,noatime shared:7 master:1 - nfs4 nas:/export rw,vers=4.2
37 27 0:51 / /mnt/sshfs rw - fuse.sshfs user@host:/data rw
38 36 0:52 / /mnt/sem\\040share/local rw - tmpfs tmpfs rw
39 27 0:53 / /mnt/over rw - cifs //pc/share rw
40 27 0:54 / /mnt/over rw - ext4 /dev/vdb rw
garbage line without separator
"""


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(SAMPLE_MOUNTINFO)
    assert entries[1] == MountEntry(mount_point="/mnt/sem share", fs_type="nfs4")
    assert entries[2].fs_type == "fuse.sshfs"
    assert len(entries) == 6


@pytest.mark.parametrize(
    "path, fs_type",
    [
        ("/mnt/sem share/run1/semwatch.db", "nfs4"),
        ("/mnt/sem share/local/x.db", "tmpfs"),
        ("/mnt/sshfs/x.db", "fuse.sshfs"),
        ("/mnt/over/x.db", "ext4"),  # the later mount is on top
        ("/mnt/sem/x.db", "ext4"),  # a name prefix is not a parent folder
        ("/var/lib/semwatch/x.db", "ext4"),
    ],
)
def test_filesystem_type_from_mountinfo(path: str, fs_type: str) -> None:
    assert filesystem_type(Path(path), SAMPLE_MOUNTINFO) == fs_type


def test_network_fs_types() -> None:
    for name in (
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "fuse.sshfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
    ):
        assert is_network_fs_type(name), name
    for name in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "fuseblk", "zfs"):
        assert not is_network_fs_type(name), name


def test_local_tmp_dir_is_not_a_network_filesystem(tmp_path: Path) -> None:
    assert is_network_filesystem(tmp_path) is False
    assert is_network_filesystem(tmp_path / "not" / "yet" / "there.db") is False
