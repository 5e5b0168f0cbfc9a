"""Arrival detection on real folders with watchdog's real observers (inotify and polling).

Synchronous tests drive `scan()` / `process_ready()` with an injected clock so settling is
exact without sleeping; the threaded tests use the real clock, small settle times, and a
generous deadline that only guards against hanging (never a speed assertion).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.observers.polling import PollingObserver

import semwatch.watcher as watcher_mod
from semwatch.config import WatchConfig
from semwatch.hashing import sha256_file
from semwatch.queue import Job, JobQueue, QueueError, SqlJobQueue
from semwatch.watcher import ScanResult, Watcher, WatcherError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TIFF = SHARED_DATA / "sem-real" / "fei-helios-rbc.tif"
DEADLINE = 15.0


def open_test_queue(folder: Path) -> SqlJobQueue:
    return SqlJobQueue(
        f"sqlite:///{folder / 'queue.db'}", lease_seconds=60.0, max_attempts=3, retry_backoff=1.0
    )


def jobs(queue: JobQueue) -> list[Job]:
    return sorted(queue.jobs(limit=100_000), key=lambda j: j.id)


def job_paths(queue: JobQueue) -> list[str]:
    return sorted(j.rel_path for j in queue.jobs(limit=100_000))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_cfg(root: Path, **overrides: object) -> WatchConfig:
    base = WatchConfig(input_dir=root, settle_seconds=0.2, scan_interval=3600.0, poll_interval=0.5)
    return dataclasses.replace(base, **overrides)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write(path: Path, data: bytes = b"sem") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def settled_jobs(w: Watcher, clock: FakeClock, settle: float = 0.2) -> int:
    """One scan, then let the clock pass the settle time and process what is ready."""
    w.scan()
    clock.advance(settle)
    return w.process_ready()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def queue(tmp_path: Path) -> Iterable[SqlJobQueue]:
    q = open_test_queue(tmp_path)
    yield q
    q.close()


@pytest.fixture
def running() -> Iterable[list[Watcher]]:
    """Watchers started by a test; stopped even when the test fails."""
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop(timeout=5)


def start(w: Watcher, running: list[Watcher]) -> Watcher:
    w.start()
    running.append(w)
    return w


def payload() -> bytes:
    # Real SEM bytes when ../shared is there; the watcher is content-agnostic either way.
    if REAL_TIFF.is_file():
        return REAL_TIFF.read_bytes()
    return os.urandom(600_000)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


# ------------------------------------------------------------------ threaded, real observers


def test_slowly_written_file_becomes_one_job_only_when_complete(
    root: Path, queue: SqlJobQueue, running: list[Watcher]
) -> None:
    w = start(Watcher(make_cfg(root, settle_seconds=1.0), queue), running)
    assert w.observer is not None and not isinstance(w.observer, PollingObserver)
    data = payload()
    step = len(data) // 6 + 1
    target = root / "slow.tif"
    with target.open("wb") as f:
        for start_at in range(0, len(data), step):
            f.write(data[start_at : start_at + step])
            f.flush()
            time.sleep(0.5)
            assert jobs(queue) == [], "enqueued before the file was complete"
    wait_for(lambda: len(jobs(queue)) == 1, "the completed file's job")
    job = jobs(queue)[0]
    assert (job.rel_path, job.sha256, job.size) == ("slow.tif", hashlib.sha256(data).hexdigest(), len(data))
    time.sleep(1.3)  # past another settle period: still the one job
    assert len(jobs(queue)) == 1


def test_files_present_before_start_are_found_by_the_startup_scan(
    root: Path, queue: SqlJobQueue, running: list[Watcher]
) -> None:
    write(root / "a.tif")
    write(root / "sub" / "deeper" / "b.png", b"png")
    write(root / "notes.txt")
    before = tree_state(root)
    notified: list[int] = []
    start(Watcher(make_cfg(root), queue, on_enqueued=notified.append), running)
    wait_for(lambda: len(jobs(queue)) == 2, "two start-up jobs")
    assert job_paths(queue) == ["a.tif", "sub/deeper/b.png"]
    wait_for(lambda: sum(notified) == 2, "the daemon's wake-up call")
    assert tree_state(root) == before, "the watched folder must only ever be read"


def test_polling_observer_detects_a_new_file(
    root: Path, tmp_path: Path, queue: SqlJobQueue, running: list[Watcher]
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)  # the poller follows it
    w = start(Watcher(make_cfg(root, polling=True, poll_interval=0.5), queue), running)
    assert isinstance(w.observer, PollingObserver)
    time.sleep(0.2)  # let the start-up scan pass; only the poller can report what follows
    write(outside / "secret.tif", b"outside the root")
    time.sleep(0.6)
    write(root / "late.tif", b"late")
    wait_for(lambda: job_paths(queue) == ["late.tif"], "the polled file's job")
    time.sleep(0.5)
    assert job_paths(queue) == ["late.tif"]


def test_folder_moved_in_with_its_files_is_picked_up(
    root: Path, tmp_path: Path, queue: SqlJobQueue, running: list[Watcher]
) -> None:
    start(Watcher(make_cfg(root), queue), running)
    staging = tmp_path / "staging" / "run-7"
    for i in range(3):
        write(staging / f"img{i}.tif", bytes([i]) * 10)
    os.rename(staging, root / "run-7")
    made = root / "made" / "x"
    made.mkdir(parents=True)
    write(made / "fast.tif", b"written right after mkdir")
    expected = ["made/x/fast.tif", "run-7/img0.tif", "run-7/img1.tif", "run-7/img2.tif"]
    wait_for(lambda: job_paths(queue) == expected, "the moved-in folder's jobs")


def test_root_vanishing_later_is_survived(root: Path, queue: SqlJobQueue, running: list[Watcher]) -> None:
    with capture_logs() as logs:
        w = start(Watcher(make_cfg(root, scan_interval=0.3), queue), running)
        shutil.rmtree(root)
        wait_for(
            lambda: any(e["event"].startswith("watch folder unavailable") for e in logs),
            "the unavailable-folder warning",
        )
        root.mkdir()
        write(root / "after.tif", b"back")
        wait_for(lambda: job_paths(queue) == ["after.tif"], "a job after the folder came back")
        wait_for(w._observer_healthy, "file events re-armed on the recreated folder")
    assert w._thread is not None and w._thread.is_alive()
    warnings = [e for e in logs if e["event"].startswith("watch folder unavailable")]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"


def test_worker_logs_a_failing_pass_and_carries_on(
    root: Path, tmp_path: Path, running: list[Watcher]
) -> None:
    class FlakyQueue(SqlJobQueue):
        # Fault injection: the first bulk query fails as a dropped database connection would.
        failed = False

        def known_files(self) -> dict[str, tuple[int, float]]:
            if not self.failed:
                self.failed = True
                raise QueueError("database went away")
            return super().known_files()

    write(root / "a.tif")
    queue = FlakyQueue(
        f"sqlite:///{tmp_path / 'flaky.db'}", lease_seconds=60.0, max_attempts=3, retry_backoff=1.0
    )
    try:
        with capture_logs() as logs:
            start(Watcher(make_cfg(root), queue), running)
            wait_for(lambda: job_paths(queue) == ["a.tif"], "the job after the failed pass")
    finally:
        for w in running:
            w.stop()
        queue.close()
    # A database outage is a state: one line (no traceback) when it begins, one when it ends.
    (failed,) = [e for e in logs if e["event"].startswith("watcher pass failed")]
    assert failed["log_level"] == "error" and "database went away" in failed["error"]
    assert "exc_info" not in failed
    assert [e["event"] for e in logs if "work again" in e["event"]] == [
        "watcher passes work again: the queue database answers"
    ]


def test_missing_root_at_start_is_a_clear_error(tmp_path: Path, queue: SqlJobQueue) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(WatcherError, match=f"{missing}: watch folder does not exist"):
        Watcher(make_cfg(missing), queue).start()
    not_dir = write(tmp_path / "file")
    with pytest.raises(WatcherError, match="is not a directory"):
        Watcher(make_cfg(not_dir), queue).start()


# --------------------------------------------------------------- synchronous, injected clock


def test_settling_waits_for_size_and_mtime_to_stop_changing(root: Path, queue: SqlJobQueue) -> None:
    clock = FakeClock()
    w = Watcher(make_cfg(root, settle_seconds=5.0), queue, clock=clock)
    f = write(root / "a.tif", b"part")
    assert w.scan() == ScanResult(files_seen=1, candidates=1, seconds=0.0)
    clock.advance(4.9)
    assert w.process_ready() == 0
    clock.advance(0.1)
    with f.open("ab") as fh:
        fh.write(b" more")  # grew just before the check: settling starts again
    assert w.process_ready() == 0
    clock.advance(4.9)
    assert w.process_ready() == 0
    clock.advance(0.1)
    assert w.process_ready() == 1
    assert jobs(queue)[0].sha256 == hashlib.sha256(b"part more").hexdigest()


def test_touch_is_not_a_new_job_but_changed_content_is(root: Path, queue: SqlJobQueue) -> None:
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    f = write(root / "a.tif", b"one")
    assert settled_jobs(w, clock) == 1
    later = time.time() + 60
    os.utime(f, (later, later))
    assert settled_jobs(w, clock) == 0
    assert len(jobs(queue)) == 1
    assert queue.known_files()["a.tif"] == (3, f.stat().st_mtime)  # the touch was recorded...
    assert w.scan().candidates == 0  # ...so later scans do not hash it again
    f.write_bytes(b"two")
    os.utime(f, (later + 60, later + 60))
    assert settled_jobs(w, clock) == 1
    assert [j.sha256 for j in jobs(queue)] == [
        hashlib.sha256(b"one").hexdigest(),
        hashlib.sha256(b"two").hexdigest(),
    ]


def test_content_reverting_to_an_earlier_version_is_hashed_once(
    root: Path, queue: SqlJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    f = write(root / "a.tif", b"A")
    settled_jobs(w, clock)
    f.write_bytes(b"B")
    os.utime(f, (time.time() + 60, time.time() + 60))
    settled_jobs(w, clock)
    f.write_bytes(b"A")
    os.utime(f, (time.time() + 120, time.time() + 120))
    assert settled_jobs(w, clock) == 0  # (a.tif, A) is still pending: nothing new to do
    calls = count_hashes(monkeypatch)
    for _ in range(3):
        assert w.scan().candidates == 0
        clock.advance(1)
        w.process_ready()
    assert calls == []


def test_vanished_candidate_is_dropped_and_zero_byte_file_still_settles(
    root: Path, queue: SqlJobQueue
) -> None:
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    gone = write(root / "gone.tif")
    write(root / "empty.tif", b"")
    w.scan()
    gone.unlink()
    clock.advance(0.2)
    assert w.process_ready() == 1
    assert [(j.rel_path, j.sha256, j.size) for j in jobs(queue)] == [
        ("empty.tif", hashlib.sha256(b"").hexdigest(), 0)
    ]
    assert w.candidate_count == 0


def _make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 0; root reads files whatever their mode, so there the read fails as it would."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    real = watcher_mod.open_regular

    def denied(target: Path, inside: Path | None) -> int:
        if Path(target) == path:
            raise PermissionError(13, "Permission denied", os.fspath(target))
        return real(target, inside)

    monkeypatch.setattr(watcher_mod, "open_regular", denied)


def test_an_unreadable_file_shows_as_failed_with_its_reason(
    root: Path, queue: SqlJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    write(root / "fine.tif", b"fine")
    locked = write(root / "locked.tif")
    _make_unreadable(locked, monkeypatch)
    with capture_logs() as logs:
        assert settled_jobs(w, clock) == 1
        assert settled_jobs(w, clock) == 0  # the next scan looks again, quietly
    assert [e["path"] for e in logs if e["log_level"] == "warning"] == ["locked.tif"]
    assert w.candidate_count == 0
    failures = queue.stats().recent_failures
    assert [(f["path"], f["error"]) for f in failures] == [("locked.tif", "cannot read: Permission denied")]
    assert job_paths(queue) == ["fine.tif", "locked.tif"]


def test_a_file_swapped_for_a_fifo_before_it_is_hashed_never_blocks_the_intake(
    root: Path, queue: SqlJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settled file that became a FIFO between its settle check and its open once blocked
    the watcher thread in open() forever: nothing more was queued and nothing said so."""
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    flip = write(root / "flip.tif", b"A" * 1000)
    write(root / "other.tif", b"other")
    w.scan()
    clock.advance(0.2)
    real_stat_key = w._stat_key
    swapped: list[bool] = []

    def stat_then_swap(path: str) -> tuple[int, float] | None:
        # The microscope's flip, forced into the window between the check and the open.
        key = real_stat_key(path)
        if path == str(flip) and not swapped:
            swapped.append(True)
            flip.unlink()
            os.mkfifo(flip)
        return key

    monkeypatch.setattr(w, "_stat_key", stat_then_swap)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(w.process_ready()), daemon=True)
    with capture_logs() as logs:
        thread.start()
        thread.join(DEADLINE)  # only guards against the hang; no speed is asserted
    if thread.is_alive():
        os.close(os.open(flip, os.O_WRONLY | os.O_NONBLOCK))  # let the stuck open return
        pytest.fail("the watcher thread blocked opening a FIFO")
    assert swapped and done == [1] and job_paths(queue) == ["other.tif"]
    assert [(e["path"], e["log_level"]) for e in logs if e["event"] == "file not hashed"] == [
        ("flip.tif", "warning")
    ]
    assert w.candidate_count == 0
    flip.unlink()  # a regular file again: intake goes on with it
    write(flip, b"B" * 1000)
    assert settled_jobs(w, clock) == 1 and job_paths(queue) == ["flip.tif", "other.tif"]


def test_a_pass_without_progress_counts_as_stalled(
    root: Path, queue: SqlJobQueue, running: list[Watcher]
) -> None:
    """The daemon feeds systemd's watchdog only while the intake makes progress."""
    clock = FakeClock()
    entered, gate = threading.Event(), threading.Event()

    def stuck(_jobs: int) -> None:  # the pass blocks here, as in a hung open or read
        entered.set()
        gate.wait(DEADLINE)

    w = Watcher(make_cfg(root), queue, clock=clock, on_enqueued=stuck)
    assert w.stalled_seconds() == 0.0
    write(root / "a.tif")
    start(w, running)
    wait_for(lambda: w.candidate_count == 1, "the start-up scan")
    clock.advance(1.0)
    wait_for(entered.is_set, "the pass to block")
    clock.advance(500.0)
    assert w.stalled_seconds() == 500.0 and "a.tif" in w.current_step
    gate.set()
    wait_for(lambda: w.stalled_seconds() == 0.0, "the pass to end")


def test_a_file_name_that_is_not_utf8_fails_alone(root: Path, queue: SqlJobQueue) -> None:
    """`bad\\xff.tif` once stopped the whole pass, so nothing else was ever queued."""
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    for name in (b"a.tif", b"bad\xff.tif", b"z.tif"):
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(name)
    before = tree_state(root)
    with capture_logs() as logs:
        assert settled_jobs(w, clock) == 2
        assert settled_jobs(w, clock) == 0
    assert sorted(j.rel_path for j in jobs(queue) if j.sha256) == ["a.tif", "z.tif"]
    (failure,) = queue.stats().recent_failures
    assert failure["path"] == "bad\\xff.tif" and "not valid UTF-8" in failure["error"]
    assert len([e for e in logs if e["log_level"] == "warning"]) == 1
    assert tree_state(root) == before


def test_any_error_on_one_files_way_stays_that_files_problem(root: Path, tmp_path: Path) -> None:
    class BrittleQueue(SqlJobQueue):
        # Fault injection: errors that are not the database's, tied to two files.
        def latest_sha256(self, rel_path: str) -> str | None:
            if rel_path == "odd.tif":
                raise RuntimeError("unexpected")
            return super().latest_sha256(rel_path)

        def enqueue_many(self, records: Iterable[tuple]) -> int:
            records = list(records)
            if any(r[0] == "poison.tif" for r in records):
                raise TypeError("a record the insert cannot take")
            return super().enqueue_many(records)

    queue = BrittleQueue(
        f"sqlite:///{tmp_path / 'brittle.db'}", lease_seconds=60.0, max_attempts=3, retry_backoff=1.0
    )
    try:
        clock = FakeClock()
        w = Watcher(make_cfg(root), queue, clock=clock)
        for name in ("a.tif", "odd.tif", "poison.tif", "z.tif"):
            write(root / name, name.encode())
        with capture_logs() as logs:
            assert settled_jobs(w, clock) == 2
        assert sorted(j.rel_path for j in jobs(queue) if j.sha256) == ["a.tif", "z.tif"]
        failures = {f["path"]: f["error"] for f in queue.stats().recent_failures}
        assert failures == {
            "odd.tif": "cannot queue: RuntimeError: unexpected",
            "poison.tif": "cannot queue: TypeError: a record the insert cannot take",
        }
        errors = [e for e in logs if e["log_level"] == "error"]
        assert {e["path"] for e in errors} == {"odd.tif", "poison.tif"}
        assert all(e["exc_info"] for e in errors)
        assert settled_jobs(w, clock) == 0 and w.candidate_count == 0  # not retried unchanged
    finally:
        queue.close()


def test_ignored_names_folders_links_and_special_files(
    root: Path, tmp_path: Path, queue: SqlJobQueue
) -> None:
    wanted = ["a.tif", "B.TIF", "c.TiFf", "d.jpeg", "sub/e.png", "link_in.tif", "dir.tif/f.tif"]
    for rel in wanted:
        if rel != "link_in.tif":
            write(root / rel)
    unwanted = [
        ".hidden.tif",
        ".hiddendir/x.tif",
        "~$report.tif",
        ".semwatch-tmp-1.tif",
        "notes.txt",
        "out/colored.tif",
        "out/sub/c2.tif",
    ]
    for rel in unwanted:
        write(root / rel)
    outside = write(tmp_path / "elsewhere" / "secret.tif")
    (root / "link_out.tif").symlink_to(outside)
    (root / "link_in.tif").symlink_to(root / "a.tif")
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.tif").symlink_to(root / "missing.tif")
    (root / "out" / "back.tif").symlink_to(root / "out" / "colored.tif")
    os.mkfifo(root / "pipe.tif")
    unwanted += ["link_out.tif", "linked_dir/secret.tif", "dangling.tif", "out/back.tif", "pipe.tif"]

    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, output_dir=root / "out", clock=clock)
    assert w.scan().files_seen == len(wanted)
    clock.advance(0.2)
    w.process_ready()
    assert job_paths(queue) == sorted(wanted)  # the loop was not followed: no "loop/a.tif"
    for rel in wanted:
        assert not w.is_ignored(root / rel), rel
    for rel in unwanted:
        assert w.is_ignored(root / rel), rel


def test_temporary_names_are_ignored_even_when_the_patterns_match_everything(
    root: Path, queue: SqlJobQueue
) -> None:
    temporary = [
        "~$report.tif",
        "x.tmp",
        "x.TMP",
        "x.tif.part",
        "x.tif.crdownload",
        "x.tif.partial",
        ".~lock.x.tif#",
        "x.tif.swp",
        ".semwatch-tmp-123.tif",
    ]
    for name in [*temporary, "keep.dat"]:
        write(root / name)
    w = Watcher(make_cfg(root, patterns=("*",)), queue)
    assert w.scan().files_seen == 1
    assert not w.is_ignored(root / "keep.dat")
    for name in temporary:
        assert w.is_ignored(root / name), name


def test_non_recursive_watch_sees_only_the_top_folder(root: Path, queue: SqlJobQueue) -> None:
    write(root / "top.tif")
    write(root / "sub" / "deep.tif")
    w = Watcher(make_cfg(root, recursive=False), queue)
    assert w.scan().files_seen == 1
    assert w.is_ignored(root / "sub" / "deep.tif")


def test_relpath(root: Path, tmp_path: Path, queue: SqlJobQueue) -> None:
    w = Watcher(make_cfg(root), queue)
    assert w.relpath(root / "sub" / "x.tif") == "sub/x.tif"
    assert w.relpath(tmp_path / "x.tif") is None
    assert w.relpath(root) is None
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert w.relpath(tmp_path / "alias" / "x.tif") == "x.tif"
    (root / "away").symlink_to(tmp_path, target_is_directory=True)
    assert w.relpath(root / "away" / "x.tif") is None


def test_scan_of_known_files_enqueues_and_hashes_nothing(
    root: Path, queue: SqlJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = []
    for d in range(20):
        folder = root / f"d{d:02}"
        folder.mkdir()
        for i in range(100):
            p = write(folder / f"img{i:03}.tif", b"%d/%d" % (d, i))
            st = p.stat()
            records.append(
                (
                    f"d{d:02}/img{i:03}.tif",
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                    st.st_size,
                    st.st_mtime,
                    0.0,
                )
            )
    assert queue.enqueue_many(records) == 2000
    known_calls = count_calls(monkeypatch, queue, "known_files")
    enqueue_calls = count_calls(monkeypatch, queue, "enqueue_many")
    hashes = count_hashes(monkeypatch)
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    result = w.scan()
    assert (result.files_seen, result.candidates) == (2000, 0)
    assert len(known_calls) == 1
    clock.advance(10)
    assert w.process_ready() == 0
    assert hashes == [] and enqueue_calls == []


def test_configuration_mistakes_are_refused(root: Path, queue: SqlJobQueue) -> None:
    with pytest.raises(ValueError, match="output folder is the watched folder"):
        Watcher(make_cfg(root), queue, output_dir=root)
    with pytest.raises(ValueError, match="watch.patterns is empty"):
        Watcher(make_cfg(root, patterns=()), queue)


def test_sha256_file_streams_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    f = write(tmp_path / "x.bin", data)
    assert sha256_file(f, chunk_size=1024) == hashlib.sha256(data).hexdigest()


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy (not a mock): records each hashed path and still hashes it."""
    calls: list[str] = []
    real = Watcher._hash

    def spy(self: Watcher, rel: str, path: str, key: tuple[int, float]) -> str | None:
        calls.append(os.fspath(path))
        return real(self, rel, path, key)

    monkeypatch.setattr(Watcher, "_hash", spy)
    return calls


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[tuple]:
    """Spy on a method of a real object: records the arguments and calls through."""
    calls: list[tuple] = []
    real = getattr(obj, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return calls
