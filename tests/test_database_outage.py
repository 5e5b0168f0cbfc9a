"""A real PostgreSQL outage while the daemon works: the server stopped (pg_ctl stop -m fast)
and started again under a running daemon (a real subprocess).

The cluster is the test's own (not the session's shared server): stopping that one would
take it away from the tests that follow, and CI's server is not ours to stop.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import postgres_server
import pytest
from conftest import cannot_run
from daemon_harness import (
    Site,
    gray_image,
    names,
    output_for,
    png_bytes,
    provenance,
    sha256_of,
    temp_files,
    wait_until,
    write_atomically,
)

from semwatch.imaging.encode import TEST_WRITE_DELAY_ENV
from semwatch.queue import JobState

pytestmark = pytest.mark.slow


@pytest.fixture
def stoppable_postgres() -> Iterator[postgres_server.Cluster]:
    reason = postgres_server.unavailable_reason()
    if reason is not None:
        cannot_run(f"no PostgreSQL cluster of its own: {reason}")
    with postgres_server.own_cluster() as cluster:
        yield cluster


def _problems(events: list[dict]) -> list[dict]:
    """Warning and error lines (and anything not JSON: a traceback)."""
    return [e for e in events if "raw" in e or e.get("level") in ("warning", "error", "critical")]


def test_the_daemon_outlives_a_postgresql_outage_and_loses_or_repeats_no_job(
    tmp_path: Path, tiny_model: Path, stoppable_postgres: postgres_server.Cluster
) -> None:
    """Issue 19: during an outage two finished outputs were redone after their leases ran
    out and the log filled with tracebacks. Now: the daemon lives through it, says so once
    per change of state, and every image ends with exactly one output, colorized once."""
    cluster = stoppable_postgres
    url = postgres_server.fresh_database(cluster.admin_url)
    site = Site(tmp_path / "site", tiny_model, db_url=url)
    site.write_config(engine={"batch_size": 2})
    try:
        for i in range(8):
            write_atomically(site.inbox / f"before{i}.png", png_bytes(gray_image(100 + i)))
        # Slow writes keep work in hand when the server goes: outputs written, not yet done.
        daemon = site.start(env={TEST_WRITE_DELAY_ENV: "0.5"})
        daemon.wait_ready()
        daemon.wait_event("job done", timeout=180)
        assert site.counts()["done"] < 8, "all done before the outage: nothing was tested"

        cluster.stop("fast")  # open transactions rolled back, every connection closed
        down_from = len(daemon.events())
        for i in range(4):  # images that arrive while the database is away
            write_atomically(site.inbox / f"during{i}.png", png_bytes(gray_image(200 + i)))
        wait_until(lambda: _problems(daemon.events()[down_from:]), 120, "the outage noticed")
        # Down long enough for every loop (watcher, claims, completions, heartbeat) to retry
        # several times; a state logged per retry would show up many times.
        wait_until(
            lambda: (
                len({e.get("event") for e in _problems(daemon.events()[down_from:])}) >= 2
                or not daemon.alive()
            ),
            60,
            "more than one part of the daemon meeting the outage",
        )
        time.sleep(6)
        assert daemon.alive(), daemon.log_tail()
        up_from = len(daemon.events())
        cluster.start()

        site.wait_settled(12, timeout=300)
        assert daemon.alive(), daemon.log_tail()
        jobs = site.jobs()
        inputs = sorted(p.name for p in site.inbox.iterdir())
        # Nothing lost, nothing twice: one job per image, done, and colorized once.
        assert sorted(j.rel_path for j in jobs) == inputs
        assert all(j.state is JobState.DONE for j in jobs), [j for j in jobs if j.state is not JobState.DONE]
        done = collections.Counter(e.get("path") for e in daemon.events() if e.get("event") == "job done")
        assert done == collections.Counter(inputs), done
        for source in site.inbox.iterdir():
            assert provenance(output_for(site, source))["source"]["sha256"] == sha256_of(source), source
        assert names(site.outputs(), site.outbox) == {f"{Path(n).stem}.tif" for n in inputs}
        assert not temp_files(site.outbox)

        # Logged once per change of state: no line repeated per retry, no traceback.
        during = _problems(daemon.events()[down_from:up_from])
        assert not [e for e in during if "raw" in e or "exception" in e], during
        repeated = collections.Counter((e.get("event"), e.get("job_id"), e.get("path")) for e in during)
        assert repeated and max(repeated.values()) == 1, repeated
        after = daemon.events()[up_from:]
        assert not [e for e in _problems(after) if "raw" in e or "exception" in e], _problems(after)
        assert daemon.stop() == 0
    finally:
        site.stop_all()
        try:
            postgres_server.drop_database(cluster.admin_url, url)
        except Exception:  # noqa: BLE001 - the cluster goes with the fixture anyway
            pass
