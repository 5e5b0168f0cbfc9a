"""`semwatch status`, `enqueue` and `retry` as an operator runs them: real CLI processes on a
real SQLite queue (no daemon needed; these commands must not import PyTorch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon_harness import Site, gray_image, png_bytes, write_atomically
from semwatch.queue import JobState, Owner


@pytest.fixture
def site(tmp_path: Path) -> Site:
    # No daemon runs in these tests, so the model is never loaded.
    return Site(tmp_path / "site", tmp_path / "unused.safetensors")


def _images(site: Site, *rel_paths: str) -> None:
    for i, rel in enumerate(rel_paths):
        write_atomically(site.inbox / rel, png_bytes(gray_image(i)))


def test_status_before_the_service_ever_ran_says_so(site: Site) -> None:
    result = site.cli("status", "--json", check=False)
    assert result.returncode == 1
    assert "no queue database yet" in result.stderr
    assert not site.database.exists(), "status must not create the database"


def test_enqueue_backfills_a_folder_once_and_again_on_request(site: Site) -> None:
    _images(site, "old/a.png", "old/b.tif", "old/deep/c.png", "old/.hidden.png", "old/notes.txt")
    result = site.cli("enqueue", str(site.inbox / "old"))
    assert "queued 3 of 3 images" in result.stdout
    assert "2 other files ignored" in result.stdout
    status = site.status()
    assert status["counts"] == {"pending": 3, "running": 0, "done": 0, "failed": 0}
    assert set(status) >= {"counts", "oldest_pending_age_s", "throughput_per_min",
                           "median_latency_s", "recent_failures"}
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
    result = site.cli("enqueue", str(site.inbox / "fine.png"), str(site.inbox / "notes.txt"),
                      str(site.inbox / "missing.png"), check=False)
    assert result.returncode == 1
    assert "queued 1 of 1 images" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "notes.txt: not picked up" in errors[0] and "missing.png: no such file" in errors[1]


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
