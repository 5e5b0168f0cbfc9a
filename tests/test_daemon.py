"""The daemon as systemd runs it: `semwatch run` in a subprocess, real folders, real SQLite.

The end-to-end scenarios whose database behaviour differs run on SQLite and on PostgreSQL
(`queue_db`): intake exactly once, recovery from kill -9 (leases of a dead owner), the
sweep of interrupted writes. The others run on SQLite: the queue's semantics they rely on
(attempts, failures, supersession, siblings, released leases) are tested on both databases
in test_queue.py.

Nothing is mocked. Each test builds a site (config.toml, inbox/, outbox/, var/) in tmp_path
with a tiny random generator and a small chroma_size, so compute is quick; the time goes
into starting Python + torch, which is why related checks share one daemon run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cannot_run
from daemon_harness import (
    WORK_TIMEOUT,
    Site,
    gray_image,
    input_files,
    names,
    output_for,
    png_bytes,
    provenance,
    sha256_of,
    temp_files,
    tiff_bytes,
    wait_until,
    write_atomically,
    write_slowly,
)
from helpers import bomb_tiff_bytes

from semwatch.imaging.encode import TEST_WRITE_DELAY_ENV
from semwatch.model import GeneratorConfig, build_generator, save_generator
from semwatch.queue import JobState

pytestmark = pytest.mark.slow

# A file name stem that leaves room for its own extension, but not for a second one.
LONG = "L" * 251


@pytest.fixture
def make_site(tmp_path: Path, tiny_model: Path):
    sites: list[Site] = []

    def make(**kwargs) -> Site:
        site = Site(tmp_path / f"site{len(sites)}", tiny_model, **kwargs)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db(request: pytest.FixtureRequest) -> str | None:
    """A site's queue: None (SQLite in its var/) or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _assert_outputs_match_inputs(site: Site) -> None:
    """Exactly one output per input, made from the input's final bytes."""
    inputs = input_files(site.inbox)
    assert names(site.outputs(), site.outbox) == names((output_for(site, p) for p in inputs), site.outbox)
    for source in inputs:
        record = provenance(output_for(site, source))
        assert record["source"]["sha256"] == sha256_of(source), source


# --------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_arrivals_are_colorized_exactly_once_also_while_stopped(
    make_site, queue_db: str | None, polling: bool
) -> None:
    site = make_site(polling=polling, db_url=queue_db)
    site.write_config(watch={"settle_seconds": 1.5})
    for i in range(3):  # already there before the first start
        write_atomically(site.inbox / f"early{i}.png", png_bytes(gray_image(100 + i)))
    daemon = site.start()
    daemon.wait_ready()

    slow = [(site.inbox / "slow" / f"s{i:02d}.tif", tiff_bytes(gray_image(i, 128, 160))) for i in range(10)]
    writers = [threading.Thread(target=write_slowly, args=(path, data, 12, 0.25)) for path, data in slow]
    for thread in writers:
        thread.start()
    for i in range(37):
        folder = site.inbox / ("a" if i % 2 else "b/c")
        write_atomically(folder / f"img{i:02d}.png", png_bytes(gray_image(20 + i)))
    for thread in writers:
        thread.join()

    counts = site.wait_settled(50)
    assert counts == {"pending": 0, "running": 0, "done": 50, "failed": 0}
    jobs = site.jobs()
    # One job per file and every one done at the first attempt: no partial version of a
    # slowly written file was ever queued, and none was read before it was complete
    # (the provenance hash is the hash of the bytes decoded).
    assert len(jobs) == 50 and {job.attempts for job in jobs} == {1}
    _assert_outputs_match_inputs(site)
    for path, _data in slow:
        assert provenance(output_for(site, path))["source"]["sha256"] == sha256_of(path)
    assert daemon.stop() == 0
    assert not temp_files(site.outbox)

    # While stopped: new files, and new content under an old name.
    for i in range(4):
        write_atomically(site.inbox / "later" / f"l{i}.png", png_bytes(gray_image(200 + i)))
    changed = site.inbox / "a" / "img01.png"
    write_atomically(changed, png_bytes(gray_image(999)))
    daemon = site.start()
    counts = site.wait_settled(55)
    assert counts["done"] == 55 and counts["failed"] == 0
    _assert_outputs_match_inputs(site)
    assert provenance(output_for(site, changed))["source"]["sha256"] == sha256_of(changed)
    assert daemon.stop() == 0


def test_a_file_name_that_is_not_utf8_does_not_stop_intake(make_site) -> None:
    """`bad\\xff.tif` once stopped every watcher pass: nothing else was ever queued."""
    site = make_site()
    with open(os.fsencode(site.inbox) + b"/bad\xff.tif", "wb") as f:
        f.write(tiff_bytes(gray_image(1)))
    for i in range(3):
        write_atomically(site.inbox / f"good{i}.png", png_bytes(gray_image(10 + i)))
    daemon = site.start()
    counts = site.wait_settled(4)
    assert counts == {"pending": 0, "running": 0, "done": 3, "failed": 1}
    (failure,) = site.status()["recent_failures"]
    assert failure["path"] == "bad\\xff.tif" and "not valid UTF-8" in failure["error"]
    assert os.path.exists(os.fsencode(site.inbox) + b"/bad\xff.tif")  # never touched
    write_atomically(site.inbox / "later.png", png_bytes(gray_image(20)))
    assert site.wait_settled(5)["done"] == 4
    assert daemon.stop() == 0


def _source_sha(output: Path) -> str | None:
    try:
        return provenance(output)["source"]["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def test_outputs_follow_each_files_current_content(make_site) -> None:
    site = make_site()
    # Two sources whose names differ only in the extension's case: two outputs.
    lower, upper = site.inbox / "x.tif", site.inbox / "x.TIF"
    write_atomically(lower, tiff_bytes(gray_image(1)))
    write_atomically(upper, tiff_bytes(gray_image(2)))
    daemon = site.start()
    site.wait_settled(2)
    assert names(site.outputs(), site.outbox) == {"x.tif", "x.TIF.tif"}
    assert _source_sha(site.outbox / "x.tif") == sha256_of(lower)
    assert _source_sha(site.outbox / "x.TIF.tif") == sha256_of(upper)

    # Content A -> B -> A at one path: the output ends as A's.
    path, output = site.inbox / "a.png", site.outbox / "a.tif"
    versions = [png_bytes(gray_image(30)), png_bytes(gray_image(31))]
    for data in (versions[0], versions[1], versions[0]):
        write_atomically(path, data)
        wait_until(
            lambda: _source_sha(output) == sha256_of(path), 60, "the output of the file's current content"
        )
    jobs = [j for j in site.jobs() if j.rel_path == "a.png"]
    assert len(jobs) == 2 and all(j.state == JobState.DONE for j in jobs)  # A's job re-ran

    # A slow writer's partial file fails; the complete file's success makes that history.
    slow = site.inbox / "slow.tif"
    write_atomically(slow, tiff_bytes(gray_image(40, 256, 256))[:9000])
    wait_until(lambda: site.counts()["failed"] == 1, 60, "the partial file's failure")
    write_atomically(slow, tiff_bytes(gray_image(40, 256, 256)))
    wait_until(
        lambda: _source_sha(site.outbox / "slow.tif") == sha256_of(slow), 60, "the complete file's output"
    )
    status = site.status()
    assert status["counts"]["failed"] == 0 and status["recent_failures"] == []
    assert daemon.stop() == 0


@pytest.mark.slow
def test_content_read_as_another_and_back_before_it_settles_ends_with_its_output(make_site) -> None:
    """Issue 19 defect 5 end to end: A is queued; when the daemon reads the file it holds B;
    the file goes back to A before B settles. A's job once failed "superseded", B never
    became a job and A's return was only a touch: no output, ever."""
    site = make_site()
    site.write_config(watch={"settle_seconds": 10.0})  # B is back to A well within it
    path, output = site.inbox / "a.png", site.outbox / "a.tif"
    a, b = png_bytes(gray_image(50)), png_bytes(gray_image(51))
    write_atomically(path, a)
    site.cli("enqueue", str(path))  # A queued before the daemon runs ...
    write_atomically(path, b)  # ... and B is what its first read finds
    daemon = site.start()
    daemon.wait_event("file changed since it was queued; read again later", timeout=120)
    write_atomically(path, a)  # back to A, B never settled
    wait_until(lambda: _source_sha(output) == sha256_of(path), 180, "the output of the file's content A")
    assert _source_sha(output) == hashlib.sha256(a).hexdigest()
    counts = site.wait_settled(1)
    assert counts == {"pending": 0, "running": 0, "done": 1, "failed": 0}, counts
    (job,) = site.jobs()  # nothing lost: A's own job, done once, B never a job
    assert (job.sha256, job.state, job.output_path) == (
        hashlib.sha256(a).hexdigest(),
        JobState.DONE,
        str(output),
    )
    assert names(site.outputs(), site.outbox) == {"a.tif"} and not temp_files(site.outbox)
    assert path.read_bytes() == a  # the watched file untouched
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- crashes


def test_kill_9_during_batches_twice_then_restart_gives_one_output_each(
    make_site, queue_db: str | None
) -> None:
    site = make_site(db_url=queue_db)
    site.write_config(engine={"chroma_size": 256, "batch_size": 4})
    for i in range(40):
        write_atomically(site.inbox / f"k{i:02d}.png", png_bytes(gray_image(i, 384, 512)))
    recovered = []
    for _ in range(2):
        daemon = site.start()
        daemon.wait_ready()  # past its start-up recovery of the previous run's jobs
        # Killed once work is under way: these attempts count (merely claimed ones do not).
        running = wait_until(
            lambda: [j for j in site.jobs(JobState.RUNNING) if j.attempt_started],
            120,
            "a batch in flight",
            interval=0.02,
        )
        daemon.kill()
        assert running
        recovered.append(len(site.jobs(JobState.RUNNING)))
    # The killed runs left leases (and perhaps half-written temp files) behind.
    assert all(n > 0 for n in recovered)

    daemon = site.start()
    site.wait_settled(40)
    assert not temp_files(site.outbox)
    _assert_outputs_match_inputs(site)
    status = site.status()
    assert status["counts"] == {"pending": 0, "running": 0, "done": 40, "failed": 0}
    # The interrupted jobs were re-run, their crashes counted as attempts.
    assert max(job.attempts for job in site.jobs()) >= 2
    assert daemon.has_event("queue open") and any(
        e.get("recovered_jobs", 0) > 0 for e in daemon.events() if e.get("event") == "queue open"
    )
    assert daemon.stop() == 0


def test_kill_9_of_merely_claimed_jobs_uses_no_attempts(make_site) -> None:
    """An operator's kills while jobs wait for their batch to fill once failed good files."""
    site = make_site()
    # A long fill wait: the claimed job waits there, deterministically not started.
    site.write_config(queue={"max_attempts": 2}, engine={"batch_size": 4, "max_batch_wait": 120.0})
    write_atomically(site.inbox / "good.png", png_bytes(gray_image(1)))
    for _ in range(3):  # more kills than max_attempts
        daemon = site.start()
        daemon.wait_ready()  # past its start-up recovery: a RUNNING job is this run's claim
        (claimed,) = wait_until(
            lambda: site.jobs(JobState.RUNNING) or site.jobs(JobState.FAILED), 120, "the job claimed"
        )
        assert claimed.state == JobState.RUNNING, f"kills failed a good file: {claimed.error}"
        assert claimed.attempt_started is None
        daemon.kill()
    site.write_config(engine={"max_batch_wait": 0.3})
    daemon = site.start()
    site.wait_settled(1)
    (job,) = site.jobs()
    assert (job.state, job.attempts) == (JobState.DONE, 1), job
    assert daemon.stop() == 0


def test_kill_9_while_outputs_are_written_leaves_no_job_done_without_its_output(
    make_site, queue_db: str | None
) -> None:
    """Output written before the job is marked done (DESIGN.md): a kill between the two
    re-runs the job onto the same file; the other order leaves a done job without its output.
    The kills above land as a batch starts; here the test hook holds each output in its
    temporary file, so the kill lands mid-write, after earlier outputs were written and done."""
    site = make_site(db_url=queue_db)
    site.write_config(engine={"batch_size": 2}, daemon={"write_threads": 1})
    for i in range(4):
        write_atomically(site.inbox / f"w{i}.png", png_bytes(gray_image(i)))
    daemon = site.start(env={TEST_WRITE_DELAY_ENV: "2"})
    daemon.wait_ready()
    wait_until(
        lambda: site.jobs(JobState.DONE) and temp_files(site.outbox),
        WORK_TIMEOUT,
        "a job done and the next output being written",
        interval=0.02,
    )
    daemon.kill()
    interrupted = set(temp_files(site.outbox))
    assert interrupted, "the kill came after the write it waited for (raise the delay)"
    done = site.jobs(JobState.DONE)
    assert done
    for job in done:
        output = output_for(site, site.inbox / job.rel_path)
        assert output.is_file(), f"{job.rel_path} is done without its output"
        assert provenance(output)["source"]["sha256"] == job.sha256, job.rel_path

    daemon = site.start()  # no hook: the interrupted write is re-run onto the same file
    assert site.wait_settled(4) == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    # One daemon per SQLite queue sweeps every temporary at start; on PostgreSQL the output
    # folder may be shared by workers on other hosts, so a temporary younger than two leases
    # may be a live write and stays.
    assert set(temp_files(site.outbox)) == (interrupted if queue_db else set())
    for temp in interrupted:
        temp.unlink(missing_ok=True)
    _assert_outputs_match_inputs(site)
    assert daemon.stop() == 0


# The daemon's CLI with one test-only change, made in the test's own process code and not in
# semwatch: decoding a file whose name contains "poison" kills the process (SIGKILL), as a
# decoder that segfaults or an OOM kill would. No product hook: the patch lives here.
POISON_CLI = [
    sys.executable,
    "-c",
    "import os, signal\n"
    "import semwatch.service.worker as worker\n"
    "real_decode = worker.decode\n"
    "def decode(source, **kwargs):\n"
    "    if 'poison' in source.name:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return real_decode(source, **kwargs)\n"
    "worker.decode = decode\n"
    "from semwatch.cli import main\n"
    "main()\n",
]


def test_an_image_that_kills_the_process_fails_alone(make_site) -> None:
    """Three crashes used to fail every job in hand (the batch computing and the one decoding
    ahead): after a crash the jobs in hand run one at a time, so only the poison fails."""
    site = make_site()
    site.write_config(queue={"max_attempts": 3}, engine={"batch_size": 4, "max_batch_wait": 1.0})
    for i in range(8):
        write_atomically(site.inbox / f"g{i}.png", png_bytes(gray_image(60 + i)))
    write_atomically(site.inbox / "g4_poison.png", png_bytes(gray_image(70)))
    crashes = 0
    daemon = site.start(cli=POISON_CLI)
    while True:
        outcome = wait_until(
            lambda run=daemon: "crashed" if not run.alive() else _settled(site, 9),
            240,
            "a crash or all 9 settled",
        )
        if outcome != "crashed":
            break
        crashes += 1
        # The poison is charged once per crash it causes, except a crash while it was merely
        # decoded ahead for the next batch.
        assert crashes <= 4, daemon.log_tail()
        daemon = site.start(cli=POISON_CLI)
    jobs = {Path(job.rel_path).name: job for job in site.jobs()}
    poison = jobs.pop("g4_poison.png")
    assert poison.state is JobState.FAILED and poison.error.startswith("crashed/timed out 3 times"), poison
    assert crashes >= 3
    assert {name: job.state for name, job in jobs.items()} == {f"g{i}.png": JobState.DONE for i in range(8)}
    # A good job was charged for the first crash at most (it was in the batch computing).
    assert max(job.attempts for job in jobs.values()) <= 2, jobs
    assert names(site.outputs(), site.outbox) == {f"g{i}.tif" for i in range(8)}
    assert daemon.stop() == 0


def _settled(site: Site, total: int) -> dict[str, int] | None:
    counts = site.counts()
    finished = counts["done"] + counts["failed"]
    return counts if finished >= total and not counts["pending"] and not counts["running"] else None


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_with_a_reason_and_good_ones_are_done(make_site) -> None:
    site = make_site()
    good16 = gray_image(1).astype(np.uint16) * 200 + 1000
    bad = {
        "zero.tif": b"",
        "truncated.tif": tiff_bytes(gray_image(2, 256, 256))[:9000],
        "random.png": np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text.tif": b"this is not an image, it is a text file\n" * 20,
        "huge.tif": bomb_tiff_bytes(),
        "volume.tif": tiff_bytes(np.zeros((2, 3, 32, 32, 3), np.uint8), photometric="rgb"),
        "stack4d.tif": tiff_bytes(np.zeros((3, 64, 64, 5), np.uint16)),
        "nan.tif": tiff_bytes(np.full((48, 64), np.nan, np.float32)),
        # Its output name (beside LONG.tif: LONG.png.tif) is 259 bytes: too long, every time.
        LONG + ".png": png_bytes(gray_image(8)),
    }
    colored = np.stack([gray_image(5), gray_image(6), np.full((96, 128), 30, np.uint8)], axis=-1)
    good = {
        "good.png": png_bytes(gray_image(4)),
        "good16.tif": tiff_bytes(good16),
        "float32.tif": tiff_bytes(gray_image(7).astype(np.float32) / 255.0 * 3.5 - 1.0),
        "rgb.png": png_bytes(colored),
        LONG + ".tif": tiff_bytes(gray_image(9)),
    }
    for name, data in {**bad, **good}.items():
        (site.inbox / name).write_bytes(data)  # before the start: no need for a temp name

    daemon = site.start()
    site.wait_settled(len(bad) + len(good))
    assert daemon.alive()
    jobs = {job.rel_path: job for job in site.jobs()}
    for name in bad:
        job = jobs[name]
        assert job.state == JobState.FAILED, (name, job)
        assert job.attempts == 1, f"{name}: an undecodable file is not retried"
        assert job.error and "\n" not in job.error and len(job.error) < 300, job.error
    assert "(2, 3, 32, 32, 3)" in jobs["volume.tif"].error
    assert "(3, 64, 64, 5)" in jobs["stack4d.tif"].error
    assert "no finite pixel" in jobs["nan.tif"].error
    assert "File name too long" in jobs[LONG + ".png"].error
    for name in good:
        assert jobs[name].state == JobState.DONE, (name, jobs[name].error)
    assert provenance(site.outbox / "float32.tif")["source"]["dtype"] == "float32"
    assert provenance(site.outbox / "float32.tif")["source"]["window"] is not None
    assert any(e.get("event") == "input warning" and e.get("path") == "rgb.png" for e in daemon.events())

    failures = {f["path"]: f for f in site.status()["recent_failures"]}
    assert set(failures) == set(bad)
    assert all(f["error"] and "\n" not in f["error"] for f in failures.values())
    table = site.cli("status").stdout
    assert "failed" in table and "huge.tif" in table
    assert daemon.stop() == 0


def test_special_files_swapped_in_after_queueing_fail_alone(make_site, tmp_path: Path) -> None:
    """A FIFO once blocked the service forever; a symlink swapped in was followed out."""
    site = make_site()
    for name in ("fifo.png", "outside.png", "good.png"):
        write_atomically(site.inbox / name, png_bytes(gray_image(len(name))))
    site.cli("enqueue", str(site.inbox))  # queued while the service is down...
    (site.inbox / "fifo.png").unlink()  # ...then swapped
    os.mkfifo(site.inbox / "fifo.png")
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(gray_image(99)))
    (site.inbox / "outside.png").unlink()
    (site.inbox / "outside.png").symlink_to(secret)
    daemon = site.start()
    site.wait_settled(3)
    jobs = {job.rel_path: job for job in site.jobs()}
    assert jobs["good.png"].state == JobState.DONE
    assert jobs["fifo.png"].state == JobState.FAILED
    assert "not a regular file (a FIFO)" in jobs["fifo.png"].error
    assert jobs["outside.png"].state == JobState.FAILED
    assert "leads outside the watched folder" in jobs["outside.png"].error
    assert names(site.outputs(), site.outbox) == {"good.tif"}
    assert daemon.alive() and daemon.stop() == 0


def test_siblings_arriving_one_after_the_other_keep_their_own_outputs(make_site) -> None:
    """z.TIF alone got z.tif; z.tif arriving later wrote over it (and y.png's y.tif likewise):
    the first colorization was lost. The naming rule now holds whatever the arrival order."""
    site = make_site()
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "z.TIF", tiff_bytes(gray_image(80)))
    write_atomically(site.inbox / "y.png", png_bytes(gray_image(81)))
    site.wait_settled(2)
    assert names(site.outputs(), site.outbox) == {"z.tif", "y.tif"}  # alone: the plain names
    write_atomically(site.inbox / "z.tif", tiff_bytes(gray_image(82)))
    write_atomically(site.inbox / "y.tif", tiff_bytes(gray_image(83)))
    site.wait_settled(4)
    expected = {"z.tif": "z.tif", "z.TIF.tif": "z.TIF", "y.tif": "y.tif", "y.png.tif": "y.png"}
    assert names(site.outputs(), site.outbox) == set(expected)
    for output, source in expected.items():
        assert provenance(site.outbox / output)["source"]["sha256"] == sha256_of(site.inbox / source), output
    recorded = {job.rel_path: Path(job.output_path).name for job in site.jobs(JobState.DONE)}
    assert recorded == {source: output for output, source in expected.items()}
    assert daemon.has_event("output moved to its sibling name", path="z.TIF")
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- systemd


class _NotifyListener:
    """What systemd does for Type=notify: a datagram socket named by $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for _, m in self.messages if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_systemd_notify_protocol_and_sigterm_mid_batch(make_site, tmp_path: Path) -> None:
    site = make_site()
    site.write_config(engine={"chroma_size": 256, "batch_size": 2})
    listener = _NotifyListener(tmp_path / "notify.sock")
    try:
        daemon = site.start(env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"})
        wait_until(lambda: listener.with_key("READY"), 120, "READY=1")
        # READY=1 only once the model is loaded.
        assert daemon.has_event("model loaded")
        for i in range(16):
            write_atomically(site.inbox / f"t{i:02d}.png", png_bytes(gray_image(i, 384, 512)))
        wait_until(lambda: site.jobs(JobState.RUNNING), 60, "a batch in flight", interval=0.02)
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
        wait_until(lambda: listener.with_key("STOPPING"), 5, "STOPPING=1")
    finally:
        listener.close()

    assert len(listener.with_key("WATCHDOG")) >= 2
    statuses = [m["STATUS"] for m in listener.with_key("STATUS")]
    assert any("pending" in s and "done" in s for s in statuses), statuses
    # Leases released: nothing is left running, and unfinished jobs got their attempt back.
    jobs = site.jobs()
    assert not [j for j in jobs if j.state == JobState.RUNNING]
    assert all(j.attempts == 0 for j in jobs if j.state == JobState.PENDING)
    assert all(
        (site.outbox / Path(j.rel_path).with_suffix(".tif")).is_file()
        for j in jobs
        if j.state == JobState.DONE
    )
    assert daemon.has_event("semwatch daemon stopped", exit_code=0)


def test_shutdown_timeout_exceeded_releases_leases_and_exits_non_zero(make_site) -> None:
    site = make_site()
    site.write_config(engine={"chroma_size": 512, "batch_size": 8}, daemon={"shutdown_timeout": 0.05})
    # Written before the start, so the start-up scan queues all 8 together and the first
    # claim is one batch of 8 full-size frames: seconds of work, far beyond 0.05 s, on any
    # machine. (Arriving live, they settle one by one and may go out in small batches that
    # finish inside the timeout.)
    for i in range(8):
        write_atomically(site.inbox / f"big{i}.png", png_bytes(gray_image(i, 2048, 2560)))
    daemon = site.start()
    daemon.wait_ready()
    wait_until(lambda: site.jobs(JobState.RUNNING), 60, "a batch in flight", interval=0.02)
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(60) != 0
    jobs = site.jobs()
    assert jobs and not [j for j in jobs if j.state == JobState.RUNNING]
    assert daemon.has_event("shutdown timeout passed")


# --------------------------------------------------------------------------- reload, storage


def test_sighup_swaps_the_model_and_a_broken_one_keeps_the_old(make_site, tmp_path: Path) -> None:
    site = make_site()
    model = tmp_path / "live.safetensors"
    config = GeneratorConfig(decoder_width=8)
    first = save_generator(model, build_generator(config), config, {"name": "first"})
    site.write_config(engine={"model": str(model)})
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "one.png", png_bytes(gray_image(1)))
    site.wait_settled(1)
    assert provenance(site.outbox / "one.tif")["model"] == {"name": "first", "sha256": first}

    # One daemon per database.
    second = site.start()
    assert second.proc.wait(120) == 1
    assert "another semwatch daemon" in second.log_path.read_text()

    retrained = save_generator(model, build_generator(config), config, {"name": "second"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("model reloaded", timeout=120)
    write_atomically(site.inbox / "two.png", png_bytes(gray_image(2)))
    site.wait_settled(2)
    assert provenance(site.outbox / "two.tif")["model"] == {"name": "second", "sha256": retrained}

    model.write_bytes(b"not a generator")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("model reload failed", timeout=120)
    write_atomically(site.inbox / "three.png", png_bytes(gray_image(3)))
    site.wait_settled(3)
    assert provenance(site.outbox / "three.tif")["model"]["sha256"] == retrained

    # A watch folder that does not exist is refused like a broken config, never created.
    site.write_config(watch={"input_dir": "inbox-typo"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reload refused", timeout=120)
    assert not (site.root / "inbox-typo").exists()
    assert any(
        "inbox-typo" in e.get("reason", "") for e in daemon.events() if e.get("event") == "reload refused"
    )
    write_atomically(site.inbox / "four.png", png_bytes(gray_image(4)))
    site.wait_settled(4)

    # Another watch folder that exists: the daemon takes that folder's watch lock, then
    # watches it (the lock first: another watcher may hold it).
    (site.root / "inbox-2").mkdir()
    site.write_config(watch={"input_dir": "inbox-2"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("configuration reloaded", timeout=120)
    write_atomically(site.root / "inbox-2" / "five.png", png_bytes(gray_image(5)))
    site.wait_settled(5)
    assert (site.outbox / "five.tif").is_file()
    assert daemon.alive()
    assert daemon.stop() == 0


def test_missing_output_share_pauses_without_using_attempts(make_site) -> None:
    site = make_site()
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "before.png", png_bytes(gray_image(1)))
    site.wait_settled(1)

    away = site.root / "outbox-unmounted"
    site.outbox.rename(away)  # the share goes away
    for i in range(3):
        write_atomically(site.inbox / f"during{i}.png", png_bytes(gray_image(10 + i)))
    daemon.wait_event("output paused", timeout=60)
    wait_until(lambda: site.counts()["pending"] == 3, 30, "3 jobs pending")
    time.sleep(1.0)
    counts = site.counts()
    assert counts["pending"] == 3 and counts["failed"] == 0
    assert all(j.attempts == 0 for j in site.jobs(JobState.PENDING))
    assert not site.outbox.exists(), "the daemon must not recreate an unmounted output root"

    away.rename(site.outbox)  # mounted again
    site.wait_settled(4, timeout=60)
    assert site.counts()["done"] == 4
    assert daemon.has_event("storage available again, resuming")
    assert daemon.stop() == 0


@pytest.fixture
def mount_tmpfs():
    """mount(8) a tmpfs on a folder, as a share is mounted; unmounted at the end.

    Needs root with CAP_SYS_ADMIN (.ci/run runs as root; a container must allow mounts)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "1g") -> None:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "semwatch-test", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            cannot_run(f"cannot mount a tmpfs here (needs root, CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(folder)

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_sidecar_bigger_than_the_free_space_never_undoes_its_image(make_site, mount_tmpfs) -> None:
    """The sidecar's ENOSPC released the image's job: the service paused, resumed and
    colorized the same image again, forever, while the images behind it waited."""
    site = make_site()
    site.outbox.mkdir()
    mount_tmpfs(site.outbox, "260m")  # above the 200 MiB the service keeps free
    daemon = site.start()
    daemon.wait_ready()
    part = site.inbox / ".x.txt.part"
    with part.open("wb") as f:
        f.truncate(300 << 20)  # sparse in the inbox, too big for the output's free space
    write_atomically(site.inbox / "x.tif", tiff_bytes(gray_image(90)))
    os.replace(part, site.inbox / "x.txt")
    write_atomically(site.inbox / "after.png", png_bytes(gray_image(91)))
    site.wait_settled(2)
    x = next(job for job in site.jobs() if job.rel_path == "x.tif")
    assert (x.state, x.attempts) == (JobState.DONE, 1), x
    assert names(site.outputs(), site.outbox) == {"x.tif", "after.tif"}
    assert not temp_files(site.outbox)
    assert len([e for e in daemon.events() if e.get("event") == "job done" and e.get("path") == "x.tif"]) == 1
    assert daemon.has_event("sidecar not copied", job_id=x.id)
    assert x.sidecar_error is not None and x.sidecar_error.startswith("x.txt not copied"), x
    assert any(p["id"] == x.id for p in site.status()["sidecar_problems"])
    assert daemon.stop() == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def test_unmounting_a_share_mounted_at_the_output_folder_pauses(make_site, mount_tmpfs) -> None:
    """The local mount point left behind once received the outputs."""
    site = make_site()
    site.outbox.mkdir()
    mount_tmpfs(site.outbox)
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "before.png", png_bytes(gray_image(1)))
    site.wait_settled(1)

    _umount(site.outbox)  # the share goes away; its empty mount point folder stays
    write_atomically(site.inbox / "during.png", png_bytes(gray_image(2)))
    daemon.wait_event("output paused", timeout=60)
    wait_until(lambda: site.counts()["pending"] == 1, 30, "the job pending")
    time.sleep(1.0)
    assert site.counts()["pending"] == 1 and site.jobs(JobState.PENDING)[0].attempts == 0
    assert list(site.outbox.iterdir()) == [], "outputs went to the local disk"
    assert any(
        "file system changed" in e.get("reason", "")
        for e in daemon.events()
        if e.get("event", "").startswith("output paused")
    )

    mount_tmpfs(site.outbox)  # mounted again (a new device id, as NFS/SMB get too)
    site.wait_settled(2, timeout=60)
    assert (site.outbox / "during.tif").is_file()
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- start-up errors


def test_configuration_errors_exit_78_with_one_clear_line(make_site, tmp_path: Path) -> None:
    site = make_site()
    site.write_config(engine={"model": str(tmp_path / "missing.safetensors")})
    daemon = site.start()
    assert daemon.proc.wait(60) == 78
    errors = [e for e in daemon.events() if e.get("level") == "error"]
    assert len(errors) == 1 and "missing.safetensors" in errors[0]["reason"]
    assert "engine.model" in errors[0]["reason"]

    site.config.write_text("[engine]\nbatch_size = 'four'\n")
    daemon = site.start()
    assert daemon.proc.wait(60) == 78
    assert "engine.batch_size" in daemon.log_path.read_text()


@pytest.mark.parametrize("module, package", [("skimage", "scikit-image"), ("watchdog", "watchdog")])
def test_a_missing_package_at_start_exits_78_naming_it(make_site, module: str, package: str) -> None:
    """An installation without one of semwatch's packages (scikit-image was once undeclared):
    one line naming the package and how to install it, and exit 78 so systemd does not
    restart into it. The module is made unimportable in the daemon's process only."""
    site = make_site()
    hide = f"import sys; sys.modules[{module!r}] = None; from semwatch.cli import main; main()"
    daemon = site.start(cli=[sys.executable, "-c", hide])
    assert daemon.proc.wait(60) == 78, daemon.log_tail()
    text = daemon.log_path.read_text()
    assert f"'{package}'" in text and "pip install" in text and "Traceback" not in text
    errors = [e for e in daemon.events() if e.get("level") == "error" or "raw" in e]
    assert len(errors) == 1, errors
