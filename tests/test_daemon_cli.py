"""`semwatch status`, `enqueue` and `retry` as an operator runs them, on a real SQLite queue
(no daemon needed; these commands must not import PyTorch): the commands run in process
through click's runner; the one test with a live daemon runs it as a real process."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

import pytest
from daemon_harness import Site, gray_image, png_bytes, write_atomically

from semwatch import schema
from semwatch.queue import JobState, Owner


@pytest.fixture
def site(tmp_path: Path) -> Site:
    # No daemon runs in these tests, so the model is never loaded.
    return Site(tmp_path / "site", tmp_path / "unused.safetensors", in_process_cli=True)


def _images(site: Site, *rel_paths: str) -> None:
    for i, rel in enumerate(rel_paths):
        write_atomically(site.inbox / rel, png_bytes(gray_image(i)))


def test_status_before_the_service_ever_ran_says_so(site: Site) -> None:
    result = site.cli("status", "--json", check=False)
    assert result.returncode == 1
    assert "no queue database yet" in result.stderr
    assert not site.database.exists(), "status must not create the database"


def test_status_answers_while_the_daemon_writes(site: Site) -> None:
    _images(site, "a.png", "b.png")
    site.cli("enqueue", str(site.inbox))
    writer = sqlite3.connect(site.database, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write...
        writer.execute("UPDATE files SET seen_at = seen_at + 1")
        # ...held until status has answered: a status that needed the write lock would wait
        # out the busy timeout and fail (site.status checks the exit code), however fast.
        status = site.status()
        assert status["counts"]["pending"] == 2
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_status_never_turns_an_empty_file_into_a_database(site: Site) -> None:
    site.database.parent.mkdir()
    site.database.write_bytes(b"")  # e.g. a database path created by mistake
    result = site.cli("status", check=False)
    assert result.returncode == 1
    assert "not a semwatch queue database (an empty file (0 bytes))" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert site.database.stat().st_size == 0, "status turned the file into a database"


def _damage_pages(database: Path) -> None:
    """Overwrite every other page past the schema with garbage, as a failing disk would."""
    raw = sqlite3.connect(database)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    data = bytearray(database.read_bytes())
    for page in range(3, len(data) // page_size, 2):
        start = page * page_size + 16
        data[start : start + page_size - 32] = b"\xa5" * (page_size - 32)
    database.write_bytes(bytes(data))


def test_status_on_a_damaged_database_is_one_error_line(site: Site) -> None:
    site.database.parent.mkdir()
    queue = site.queue()
    try:
        queue.enqueue_many((f"run/{i:05d}.tif", f"{i:064x}", i, 1.0, 0.0) for i in range(3000))
    finally:
        queue.close()
    _damage_pages(site.database)
    for args in (("status",), ("status", "--json")):
        result = site.cli(*args, check=False)
        assert result.returncode == 1, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert str(site.database) in lines[0] and "malformed" in lines[0], lines[0]


def test_enqueue_backfills_a_folder_once_and_again_on_request(site: Site) -> None:
    _images(site, "old/a.png", "old/b.tif", "old/deep/c.png", "old/.hidden.png", "old/notes.txt")
    result = site.cli("enqueue", str(site.inbox / "old"))
    assert "queued 3 of 3 images" in result.stdout
    assert "2 other files ignored" in result.stdout
    status = site.status()
    assert status["counts"] == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    assert set(status) >= {
        "counts",
        "oldest_pending_age_s",
        "throughput_per_min",
        "median_latency_s",
        "recent_failures",
    }
    assert set(status["throughput_per_min"]) == {"10m", "1h"}

    again = site.cli("enqueue", str(site.inbox / "old" / "a.png"))
    assert "queued 0 of 1 images" in again.stdout and "--again" in again.stdout

    queue = site.queue()
    owner = Owner.current()
    try:
        for job in queue.claim(owner, 10):
            queue.complete(owner, job.id, f"/out/{job.rel_path}")
    finally:
        queue.close()
    redo = site.cli("enqueue", "--again", str(site.inbox / "old"))
    assert "queued 3 of 3 images" in redo.stdout
    assert site.status()["counts"]["pending"] == 3


def test_enqueue_refuses_paths_outside_the_watch_folder(site: Site, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(gray_image(0)))
    result = site.cli("enqueue", str(outside), check=False)
    assert result.returncode == 2
    assert "outside the watch folder" in result.stderr and str(outside) in result.stderr

    _images(site, "fine.png")
    (site.inbox / "notes.txt").write_text("not an image")
    result = site.cli(
        "enqueue",
        str(site.inbox / "fine.png"),
        str(site.inbox / "notes.txt"),
        str(site.inbox / "missing.png"),
        check=False,
    )
    assert result.returncode == 1
    assert "queued 1 of 1 images" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "notes.txt: not picked up" in errors[0] and "missing.png: no such file" in errors[1]


def test_enqueue_names_a_file_whose_name_is_not_utf8_and_queues_the_rest(site: Site) -> None:
    _images(site, "run/a.png", "run/b.png")
    with open(os.fsencode(site.inbox) + b"/run/bad\xff.png", "wb") as f:
        f.write(png_bytes(gray_image(9)))
    result = site.cli("enqueue", str(site.inbox / "run"), check=False)
    assert result.returncode == 1 and "queued 2 of 2 images" in result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "bad\\xff.png" in error and "not valid UTF-8" in error
    assert "Traceback" not in result.stderr


def test_retry_failed_jobs_and_the_readable_status(site: Site) -> None:
    _images(site, "good.png", "bad1.png", "bad2.png")
    site.cli("enqueue", str(site.inbox))
    queue = site.queue()
    owner = Owner.current()
    try:
        jobs = {job.rel_path: job for job in queue.claim(owner, 10)}
        queue.complete(owner, jobs["good.png"].id, "/out/good.tif")
        queue.fail(owner, jobs["bad1.png"].id, "cannot decode PNG: truncated", permanent=True)
        queue.fail(owner, jobs["bad2.png"].id, "cannot decode PNG: bad CRC", permanent=True)
    finally:
        queue.close()

    table = site.cli("status").stdout
    assert "failed" in table and "bad1.png: cannot decode PNG: truncated" in table
    assert str(jobs["bad1.png"].id) in table  # the id `semwatch retry` needs
    failures = site.status()["recent_failures"]
    assert {f["path"] for f in failures} == {"bad1.png", "bad2.png"}

    assert site.cli("retry", check=False).returncode == 2
    one = site.cli("retry", str(jobs["bad1.png"].id))
    assert "re-queued 1 failed job" in one.stdout
    unknown = site.cli("retry", "99999", str(jobs["good.png"].id), check=False)
    assert unknown.returncode == 1 and "99999" in unknown.stderr
    rest = site.cli("retry", "--failed")
    assert "re-queued 1 failed job" in rest.stdout
    counts = site.status()["counts"]
    assert counts == {"pending": 2, "running": 0, "done": 1, "failed": 0}
    assert all(job.attempts == 0 for job in site.jobs(JobState.PENDING))


def test_every_subcommand_explains_itself_and_takes_config(site: Site) -> None:
    for command in ("run", "status", "enqueue", "retry"):
        text = site.cli(command, "--help").stdout
        assert "--config FILE" in text, command
    assert "SIGTERM" in site.cli("run", "--help").stdout


def test_db_upgrade_and_current_for_admins(tmp_path: Path, database_url: str) -> None:
    site = Site(
        tmp_path / "db-site", tmp_path / "unused.safetensors", db_url=database_url, in_process_cli=True
    )
    head = schema.head_revision()
    before = site.cli("db", "current", check=False)
    assert before.returncode == 1
    assert "no queue database yet" in before.stderr or before.stdout.startswith("database: empty\n")
    upgraded = site.cli("db", "upgrade")
    assert upgraded.stdout.strip().endswith(f"at revision {head}")
    assert site.cli("db", "current").stdout == f"database: {head}\nsemwatch: {head}\n"
    assert site.cli("db", "upgrade").returncode == 0  # nothing to do, still fine


@pytest.mark.slow
def test_status_shows_the_service_running_then_stopped(tmp_path: Path, tiny_model: Path) -> None:
    """The service's state from the heartbeat rows the daemon writes: a real daemon, then
    its clean stop; text and JSON."""
    site = Site(tmp_path / "live", tiny_model)
    host = socket.gethostname()
    daemon = site.start()
    try:
        daemon.wait_ready()
        running = site.status()["service"]
        assert running["state"] == "running" and running["hosts"] == [host] and running["workers"] == 1
        (row,) = running["daemons"]
        assert (row["host"], row["pid"], row["role"], row["state"]) == (host, daemon.pid, "all", "running")
        assert row["last_beat"] >= row["started_at"]
        text = site.cli("status").stdout
        assert f"service running on {host} (pid {daemon.pid}, watches and colorizes) since " in text
        assert "last beat" in text
    finally:
        assert daemon.stop() == 0
    stopped = site.status()["service"]
    assert stopped["state"] == "stopped" and stopped["hosts"] == [] and stopped["workers"] == 0
    assert stopped["daemons"][0]["state"] == "stopped" and stopped["last_beat_age_s"] >= 0
    _images(site, "waiting.png")
    site.cli("enqueue", str(site.inbox))
    text = site.cli("status").stdout
    assert "service stopped: last seen " in text and f"on {host}, stopped cleanly" in text
    assert "pending jobs wait until the service starts" in text
