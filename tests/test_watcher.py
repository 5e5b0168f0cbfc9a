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
from semwatch.watcher import ScanResult, Watcher, WatcherError, sha256_file

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TIFF = SHARED_DATA / "sem-real" / "fei-helios-rbc.tif"
DEADLINE = 15.0


class FakeQueue:
    """In-memory stand-in with SqlJobQueue's watcher-facing semantics (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: list[tuple[str, str, int, float, float | None]] = []
        self.files: dict[str, tuple[int, float]] = {}
        self.latest: dict[str, str] = {}
        self.touched: list[str] = []
        self.known_calls = 0

    def known_files(self) -> dict[str, tuple[int, float]]:
        with self.lock:
            self.known_calls += 1
            return dict(self.files)

    def enqueue(self, rel_path: str, sha256: str, size: int, mtime: float, *,
                arrived_at: float | None = None) -> int | None:
        with self.lock:
            if any(j[0] == rel_path and j[1] == sha256 for j in self.jobs):
                return None
            self.jobs.append((rel_path, sha256, size, mtime, arrived_at))
            self.files[rel_path] = (size, mtime)
            self.latest[rel_path] = sha256
            return len(self.jobs)

    def enqueue_many(self, records: Iterable[tuple[str, str, int, float, float | None]]) -> int:
        return sum(self.enqueue(r, s, z, m, arrived_at=a) is not None for r, s, z, m, a in records)

    def note_unchanged(self, rel_path: str, size: int, mtime: float) -> None:
        with self.lock:
            self.touched.append(rel_path)
            self.files[rel_path] = (size, mtime)

    def latest_sha256(self, rel_path: str) -> str | None:
        with self.lock:
            return self.latest.get(rel_path)

    def job_paths(self) -> list[str]:
        with self.lock:
            return sorted(j[0] for j in self.jobs)


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
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


# ------------------------------------------------------------------ threaded, real observers


def test_slowly_written_file_becomes_one_job_only_when_complete(root: Path, running: list[Watcher]) -> None:
    queue = FakeQueue()
    w = start(Watcher(make_cfg(root, settle_seconds=1.0), queue), running)
    assert w.observer is not None and not isinstance(w.observer, PollingObserver)
    data = payload()
    chunks = [data[i:i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
    target = root / "slow.tif"
    with target.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(0.5)
            assert queue.jobs == [], "enqueued before the file was complete"
    wait_for(lambda: len(queue.jobs) == 1, "the completed file's job")
    rel, sha, size, _mtime, arrived_at = queue.jobs[0]
    assert (rel, sha, size) == ("slow.tif", hashlib.sha256(data).hexdigest(), len(data))
    assert arrived_at is not None
    time.sleep(1.3)  # past another settle period: still the one job
    assert len(queue.jobs) == 1


def test_files_present_before_start_are_found_by_the_startup_scan(root: Path, running: list[Watcher]) -> None:
    write(root / "a.tif")
    write(root / "sub" / "deeper" / "b.png", b"png")
    write(root / "notes.txt")
    before = tree_state(root)
    notified: list[int] = []
    queue = FakeQueue()
    start(Watcher(make_cfg(root), queue, on_enqueued=notified.append), running)
    wait_for(lambda: len(queue.jobs) == 2, "two start-up jobs")
    assert queue.job_paths() == ["a.tif", "sub/deeper/b.png"]
    assert sum(notified) == 2
    assert tree_state(root) == before, "the watched folder must only ever be read"


def test_polling_observer_detects_a_new_file(root: Path, running: list[Watcher]) -> None:
    queue = FakeQueue()
    w = start(Watcher(make_cfg(root, polling=True, poll_interval=0.5), queue), running)
    assert isinstance(w.observer, PollingObserver)
    time.sleep(0.2)  # let the start-up scan pass; only the poller can report what follows
    write(root / "late.tif", b"late")
    wait_for(lambda: queue.job_paths() == ["late.tif"], "the polled file's job")


def test_folder_moved_in_with_its_files_is_picked_up(root: Path, tmp_path: Path,
                                                      running: list[Watcher]) -> None:
    queue = FakeQueue()
    start(Watcher(make_cfg(root), queue), running)
    staging = tmp_path / "staging" / "run-7"
    for i in range(3):
        write(staging / f"img{i}.tif", bytes([i]) * 10)
    os.rename(staging, root / "run-7")
    made = root / "made" / "x"
    made.mkdir(parents=True)
    write(made / "fast.tif", b"written right after mkdir")
    expected = ["made/x/fast.tif", "run-7/img0.tif", "run-7/img1.tif", "run-7/img2.tif"]
    wait_for(lambda: queue.job_paths() == expected, "the moved-in folder's jobs")


def test_root_vanishing_later_is_survived(root: Path, running: list[Watcher]) -> None:
    queue = FakeQueue()
    with capture_logs() as logs:
        w = start(Watcher(make_cfg(root, scan_interval=0.3), queue), running)
        shutil.rmtree(root)
        wait_for(lambda: any(e["event"].startswith("watch folder unavailable") for e in logs),
                 "the unavailable-folder warning")
        root.mkdir()
        write(root / "after.tif", b"back")
        wait_for(lambda: queue.job_paths() == ["after.tif"], "a job after the folder came back")
        wait_for(w._observer_healthy, "file events re-armed on the recreated folder")
    assert w._thread is not None and w._thread.is_alive()
    warnings = [e for e in logs if e["event"].startswith("watch folder unavailable")]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"


def test_worker_logs_a_failing_pass_and_carries_on(root: Path, running: list[Watcher]) -> None:
    class FlakyQueue(FakeQueue):
        # Fault injection: the first bulk query fails as a dropped database connection would.
        def known_files(self) -> dict[str, tuple[int, float]]:
            if self.known_calls == 0:
                self.known_calls += 1
                raise ConnectionError("database went away")
            return super().known_files()

    write(root / "a.tif")
    queue = FlakyQueue()
    with capture_logs() as logs:
        start(Watcher(make_cfg(root), queue), running)
        wait_for(lambda: queue.job_paths() == ["a.tif"], "the job after the failed pass")
    failed = [e for e in logs if e["event"] == "watcher pass failed, will retry"]
    assert failed and failed[0]["log_level"] == "error" and failed[0]["exc_info"]


def test_missing_root_at_start_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(WatcherError, match=f"{missing}: watch folder does not exist"):
        Watcher(make_cfg(missing), FakeQueue()).start()
    not_dir = write(tmp_path / "file")
    with pytest.raises(WatcherError, match="is not a directory"):
        Watcher(make_cfg(not_dir), FakeQueue()).start()


# --------------------------------------------------------------- synchronous, injected clock


def test_settling_waits_for_size_and_mtime_to_stop_changing(root: Path) -> None:
    clock = FakeClock()
    queue = FakeQueue()
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
    assert queue.jobs[0][1] == hashlib.sha256(b"part more").hexdigest()


def test_touch_is_not_a_new_job_but_changed_content_is(root: Path) -> None:
    clock = FakeClock()
    queue = FakeQueue()
    w = Watcher(make_cfg(root), queue, clock=clock)
    f = write(root / "a.tif", b"one")
    assert settled_jobs(w, clock) == 1
    os.utime(f, (time.time() + 60, time.time() + 60))
    assert settled_jobs(w, clock) == 0
    assert queue.touched == ["a.tif"] and len(queue.jobs) == 1
    assert w.scan().candidates == 0  # the touch was recorded: no re-hashing on later scans
    f.write_bytes(b"two")
    os.utime(f, (time.time() + 120, time.time() + 120))
    assert settled_jobs(w, clock) == 1
    assert [j[1] for j in queue.jobs] == [hashlib.sha256(b"one").hexdigest(),
                                           hashlib.sha256(b"two").hexdigest()]


def test_content_reverting_to_an_earlier_version_is_hashed_once(root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    queue = FakeQueue()
    w = Watcher(make_cfg(root), queue, clock=clock)
    f = write(root / "a.tif", b"A")
    settled_jobs(w, clock)
    f.write_bytes(b"B")
    os.utime(f, (time.time() + 60, time.time() + 60))
    settled_jobs(w, clock)
    f.write_bytes(b"A")
    os.utime(f, (time.time() + 120, time.time() + 120))
    assert settled_jobs(w, clock) == 0  # (a.tif, A) is already a job
    calls = count_hashes(monkeypatch)
    for _ in range(3):
        assert w.scan().candidates == 0
        clock.advance(1)
        w.process_ready()
    assert calls == []


def test_vanished_candidate_is_dropped_and_zero_byte_file_still_settles(root: Path) -> None:
    clock = FakeClock()
    queue = FakeQueue()
    w = Watcher(make_cfg(root), queue, clock=clock)
    gone = write(root / "gone.tif")
    write(root / "empty.tif", b"")
    w.scan()
    gone.unlink()
    clock.advance(0.2)
    assert w.process_ready() == 1
    assert queue.job_paths() == ["empty.tif"]
    assert queue.jobs[0][1] == hashlib.sha256(b"").hexdigest()
    assert w.candidate_count == 0


def test_ignored_names_folders_links_and_special_files(root: Path, tmp_path: Path) -> None:
    wanted = ["a.tif", "B.TIF", "c.TiFf", "d.jpeg", "sub/e.png", "link_in.tif", "dir.tif/f.tif"]
    for rel in wanted:
        if rel != "link_in.tif":
            write(root / rel)
    unwanted = [".hidden.tif", ".hiddendir/x.tif", "~$report.tif", ".semwatch-tmp-1.tif",
                "notes.txt", "out/colored.tif", "out/sub/c2.tif"]
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
    unwanted += ["link_out.tif", "linked_dir/secret.tif", "dangling.tif", "out/back.tif",
                 "pipe.tif"]

    clock = FakeClock()
    queue = FakeQueue()
    w = Watcher(make_cfg(root), queue, output_dir=root / "out", clock=clock)
    assert w.scan().files_seen == len(wanted)
    clock.advance(0.2)
    w.process_ready()
    assert queue.job_paths() == sorted(wanted)  # the loop was not followed: no "loop/a.tif"
    for rel in wanted:
        assert not w.is_ignored(root / rel), rel
    for rel in unwanted:
        assert w.is_ignored(root / rel), rel


def test_temporary_names_are_ignored_even_when_the_patterns_match_everything(root: Path) -> None:
    temporary = ["~$report.tif", "x.tmp", "x.TMP", "x.tif.part", "x.tif.crdownload",
                 "x.tif.partial", ".~lock.x.tif#", "x.tif.swp", ".semwatch-tmp-123.tif"]
    for name in [*temporary, "keep.dat"]:
        write(root / name)
    w = Watcher(make_cfg(root, patterns=("*",)), FakeQueue())
    assert w.scan().files_seen == 1
    assert not w.is_ignored(root / "keep.dat")
    for name in temporary:
        assert w.is_ignored(root / name), name


def test_non_recursive_watch_sees_only_the_top_folder(root: Path) -> None:
    write(root / "top.tif")
    write(root / "sub" / "deep.tif")
    clock = FakeClock()
    w = Watcher(make_cfg(root, recursive=False), FakeQueue(), clock=clock)
    assert w.scan().files_seen == 1
    assert w.is_ignored(root / "sub" / "deep.tif")


def test_relpath(root: Path, tmp_path: Path) -> None:
    w = Watcher(make_cfg(root), FakeQueue())
    assert w.relpath(root / "sub" / "x.tif") == "sub/x.tif"
    assert w.relpath(tmp_path / "x.tif") is None
    assert w.relpath(root) is None
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert w.relpath(tmp_path / "alias" / "x.tif") == "x.tif"
    (root / "away").symlink_to(tmp_path, target_is_directory=True)
    assert w.relpath(root / "away" / "x.tif") is None


def test_scan_of_known_files_enqueues_and_hashes_nothing(root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    queue = FakeQueue()
    for d in range(20):
        folder = root / f"d{d:02}"
        folder.mkdir()
        for i in range(100):
            p = folder / f"img{i:03}.tif"
            p.write_bytes(b"x")
            st = p.stat()
            queue.files[f"d{d:02}/img{i:03}.tif"] = (st.st_size, st.st_mtime)
    calls = count_hashes(monkeypatch)
    clock = FakeClock()
    w = Watcher(make_cfg(root), queue, clock=clock)
    result = w.scan()
    assert (result.files_seen, result.candidates) == (2000, 0)
    assert queue.known_calls == 1
    clock.advance(10)
    assert w.process_ready() == 0
    assert calls == [] and queue.jobs == []


def test_configuration_mistakes_are_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="output folder is the watched folder"):
        Watcher(make_cfg(root), FakeQueue(), output_dir=root)
    with pytest.raises(ValueError, match="watch.patterns is empty"):
        Watcher(make_cfg(root, patterns=()), FakeQueue())


def test_sha256_file_streams_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    f = write(tmp_path / "x.bin", data)
    assert sha256_file(f, chunk_size=1024) == hashlib.sha256(data).hexdigest()


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy (not a mock): records each hashed path and still hashes it."""
    calls: list[str] = []
    real = watcher_mod.sha256_file

    def spy(path: str | os.PathLike[str], chunk_size: int = watcher_mod.HASH_CHUNK) -> str:
        calls.append(os.fspath(path))
        return real(path, chunk_size)

    monkeypatch.setattr(watcher_mod, "sha256_file", spy)
    return calls
