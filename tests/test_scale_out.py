"""Several daemons on one PostgreSQL queue: `semwatch run --role watcher|worker` as real
subprocesses on a real server (a throw-away cluster, see conftest.py), real folders.

The worker that is killed runs, where this machine allows it (root, util-linux unshare), in
a UTS namespace with a host name of its own: to the queue it is a worker on another host,
so its jobs must stay its own until its lease expires (never reclaimed by PID), and only
then be finished by the others. Where namespaces cannot be made, that is cannot_run: the
test fails under CI; elsewhere it warns (the warnings summary names why) and the victim runs
on this host, its jobs coming back by the same-host rule (PID gone). test_queue.py covers the
cross-host rule with an injected clock either way. Roles on SQLite are refused with one line.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import cannot_run, under_ci
from daemon_harness import (
    CLI,
    Site,
    gray_image,
    input_files,
    names,
    other_host_cli,
    output_for,
    png_bytes,
    provenance,
    sha256_of,
    wait_until,
    write_atomically,
)

from semwatch.queue import ALIVE_SECONDS, JobState

pytestmark = pytest.mark.slow

IMAGES = 200
LEASE = 6.0
OTHER_HOST = "gpu-server-b"


def _started_jobs_of(site: Site, pid: int) -> list[int]:
    engine = sa.create_engine(site.database_url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT id FROM jobs WHERE state = 'running' AND owner_pid = :pid "
                "AND attempt_started IS NOT NULL"
            )
            return list(conn.execute(query, {"pid": pid}).scalars())
    finally:
        engine.dispose()


def _leases(site: Site, ids: list[int]) -> tuple[float, list[tuple[str, str, float]]]:
    """The server's clock now, and (state, owner_host, lease_until) of jobs ``ids``."""
    engine = sa.create_engine(site.database_url)
    try:
        with engine.connect() as conn:
            now = conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            rows = conn.execute(
                sa.text("SELECT state, owner_host, lease_until FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids},
            ).all()
            return float(now), [(r.state, r.owner_host, r.lease_until) for r in rows]
    finally:
        engine.dispose()


def _other_host_or_warn() -> list[str] | None:
    """The CLI as another host; where that cannot be, a failure under CI (cannot_run), else a
    warning: the rest of the scenario still runs, on the same-host rule, and says so."""
    other_host = other_host_cli(OTHER_HOST)
    if isinstance(other_host, list):
        return other_host
    if under_ci():
        cannot_run(f"the cross-host lease check: {other_host}")
    warnings.warn(
        f"cross-host lease check not run, the killed worker is on this host: {other_host}", stacklevel=2
    )
    return None


def _alive_workers(site: Site) -> int:
    queue = site.queue()
    try:
        return queue.alive_workers()
    finally:
        queue.close()


def _done_events(runs) -> dict[str, int]:
    done: dict[str, int] = {}
    for run in runs:
        for event in run.events():
            if event.get("event") == "job done":
                done[event["path"]] = done.get(event["path"], 0) + 1
    return done


def test_one_watcher_three_workers_kill_9_and_takeover(
    tmp_path: Path, tiny_model: Path, postgres_url: str
) -> None:
    site = Site(tmp_path / "site", tiny_model, db_url=postgres_url)
    site.write_config(
        queue={"lease_seconds": LEASE, "retry_backoff": 0.5},
        engine={"batch_size": 4, "max_batch_wait": 0.2, "chroma_size": 64},
        watch={"settle_seconds": 0.5, "scan_interval": 2.0},
        daemon={"decode_threads": 1, "write_threads": 1},
    )
    try:
        watcher = site.start(role="watcher")
        watcher.wait_ready()
        other_host = _other_host_or_warn()
        workers = [site.start(role="worker", cli=other_host or CLI)]
        workers += [site.start(role="worker") for _ in range(2)]
        for worker in workers:
            worker.wait_ready()
        # Started on an empty queue, they idle (and beat) until work arrives.
        wait_until(lambda: _alive_workers(site) == 3, 60, "3 workers alive")
        assert site.counts() == {"pending": 0, "running": 0, "done": 0, "failed": 0}

        for i in range(IMAGES):
            write_atomically(site.inbox / f"d{i % 4}" / f"img{i:03d}.png", png_bytes(gray_image(i, 48, 64)))
        victim = workers[0]
        held = wait_until(lambda: _started_jobs_of(site, victim.pid), 120, "a batch in flight", interval=0.02)
        victim.kill()  # kill -9 mid-batch: its leases stay behind
        if other_host is not None:
            # Another host's dead worker: the living workers' recovery passes (every half
            # lease) must leave its jobs alone until their leases have expired.
            now, rows = _leases(site, held)
            expiry = min(lease_until for _, _, lease_until in rows)
            assert expiry > now + 1.0  # a window to check, not an already expired lease
            checks = 0
            while now < expiry - 0.3:
                assert all(state == "running" and host == OTHER_HOST for state, host, _ in rows), rows
                checks += 1
                time.sleep(0.2)
                now, rows = _leases(site, held)
            assert checks >= 3

        counts = site.wait_settled(IMAGES, timeout=600)
        assert counts == {"pending": 0, "running": 0, "done": IMAGES, "failed": 0}
        jobs = {job.id: job for job in site.jobs()}
        assert len(jobs) == IMAGES  # one job per file: the watcher queued each once
        assert all(jobs[i].state is JobState.DONE and jobs[i].attempts == 2 for i in held)
        inputs = input_files(site.inbox)
        assert names(site.outputs(), site.outbox) == names((output_for(site, p) for p in inputs), site.outbox)
        for source in inputs:
            assert provenance(output_for(site, source))["source"]["sha256"] == sha256_of(source)
        # Each file colorized once by the living workers; the killed one's jobs were taken
        # over, so only those may show a second "job done" (the victim's own, if it got
        # that far before the kill).
        done = _done_events(workers[1:])
        assert set(done) | {jobs[i].rel_path for i in held} == {job.rel_path for job in jobs.values()}
        assert all(n == 1 for n in done.values())
        assert sum(1 for w in workers[1:] if any(e.get("event") == "job done" for e in w.events())) == 2
        # The killed worker stops counting once its last beat is ALIVE_SECONDS old.
        wait_until(lambda: _alive_workers(site) == 2, ALIVE_SECONDS + 30, "the killed worker not counted")

        # A second watcher on the same folder waits; it takes over when the first dies.
        standby = site.start(role="watcher")
        standby.wait_event("input folder watched by another watcher; waiting to take over")
        watcher.kill()
        standby.wait_event("watch lock taken", timeout=60)
        write_atomically(site.inbox / "late" / "after.png", png_bytes(gray_image(999, 48, 64)))
        site.wait_settled(IMAGES + 1, timeout=120)
        assert (site.outbox / "late" / "after.tif").is_file()

        for run in (standby, *workers[1:]):
            assert run.stop() == 0
        assert _alive_workers(site) == 0  # a clean stop signs off at once
    finally:
        site.stop_all()


def test_roles_on_sqlite_are_refused_in_one_line(tmp_path: Path, tiny_model: Path) -> None:
    site = Site(tmp_path / "site", tiny_model)
    daemon = site.start(role="worker")
    assert daemon.proc.wait(120) == 78
    refusal = [e for e in daemon.events() if e.get("event") == "semwatch daemon cannot start"]
    assert len(refusal) == 1
    assert "daemon.role = 'worker'" in refusal[0]["reason"] and "PostgreSQL" in refusal[0]["reason"]
    assert "\n" not in refusal[0]["reason"]
