"""The daemon's decisions that do not need a running daemon: paths, storage, start-up checks."""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import shutil
import struct
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import cannot_run
from structlog.testing import capture_logs

from semwatch.config import EXIT_CONFIG, Config, DaemonConfig, EngineConfig, OutputConfig, WatchConfig
from semwatch.daemon import Daemon
from semwatch.layout import OutputLayout
from semwatch.model import default_model_path
from semwatch.notify import Notifier
from semwatch.queue import JobState, SqlJobQueue
from semwatch.service.heartbeat import INTAKE_STALL_SECONDS, Pace, ping_interval
from semwatch.service.outcomes import Outcomes
from semwatch.service.runtime import Runtime
from semwatch.service.startup import (
    StartupError,
    check_config,
    load_colorizer,
    prepare_folders,
    reloaded_config,
)
from semwatch.service.storage import StorageGuard
from semwatch.service.worker import Worker


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    return inbox, outbox


def test_output_path_mirrors_the_source_path(roots) -> None:
    inbox, outbox = roots
    layout = OutputLayout(inbox, outbox, "tiff")
    assert layout.source("a/b/x.png") == inbox / "a" / "b" / "x.png"
    assert layout.target("a/b/x.png") == outbox / "a" / "b" / "x.tif"
    # A second source with the same stem keeps its extension (DESIGN.md).
    assert layout.target("x.png", ["x.png", "x.tif"]) == outbox / "x.png.tif"
    assert layout.target("x.tif", ["x.png", "x.tif"]) == outbox / "x.tif"
    # ...also when only the extension's case differs (they once wrote one output).
    assert layout.target("x.TIF", ["x.tif", "x.TIF"]) == outbox / "x.TIF.tif"
    assert OutputLayout(inbox, outbox, "png").target("d/y.tif") == outbox / "d" / "y.png"


@pytest.mark.parametrize("rel", ["../escape.png", "a/../../escape.png", "/etc/passwd.png", "", "."])
def test_paths_that_would_leave_the_roots_are_refused(roots, rel: str) -> None:
    layout = OutputLayout(*roots, "tiff")
    with pytest.raises(ValueError):
        layout.target(rel)
    with pytest.raises(ValueError):
        layout.source(rel)


def test_a_symlinked_output_subfolder_leading_outside_is_refused(roots, tmp_path: Path) -> None:
    inbox, outbox = roots
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (outbox / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        OutputLayout(inbox, outbox, "tiff").target("link/x.png")


class FakeClock:
    """Stands in for time.monotonic so the 10-second re-check needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_storage_guard_pauses_until_the_output_share_is_back(roots) -> None:
    inbox, outbox = roots
    clock = FakeClock()
    guard = StorageGuard(inbox, outbox, min_free_bytes=0, recheck_seconds=10, clock=clock)
    assert guard.problem() is None and guard.ready()

    away = outbox.with_name("unmounted")
    outbox.rename(away)
    assert "output folder missing" in guard.problem()
    assert not guard.ready()
    assert "output folder missing" in guard.paused_reason
    away.rename(outbox)
    clock.now += 5
    assert not guard.ready(), "looks again only every recheck_seconds"
    clock.now += 5
    assert guard.ready() and guard.paused_reason is None


@pytest.fixture
def other_filesystem(tmp_path: Path):
    """A folder on another file system than tmp_path: /dev/shm (a tmpfs, writable without
    privileges wherever it is mounted), or cannot_run."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        cannot_run(f"no second file system: /dev/shm is absent or on {tmp_path}'s own")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="semwatch-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_storage_guard_pauses_when_the_output_file_system_changes(
    roots, tmp_path: Path, other_filesystem: Path
) -> None:
    """A share mounted at output.dir itself leaves the empty local mount point when it goes."""
    inbox, _ = roots
    # The output path leads to another file system, as a mount point does; re-pointing the
    # link is what an unmount and a mount do to the path (no privileges needed).
    share, mount_point = other_filesystem, tmp_path / "local-mount-point"
    mount_point.mkdir()
    output = tmp_path / "output"
    output.symlink_to(share, target_is_directory=True)
    clock = FakeClock()
    guard = StorageGuard(inbox, output, min_free_bytes=0, recheck_seconds=10, clock=clock)
    assert guard.ready()

    output.unlink()
    output.symlink_to(mount_point, target_is_directory=True)  # unmounted
    assert "file system changed since start" in guard.problem()
    assert not guard.ready()
    output.unlink()
    output.symlink_to(share, target_is_directory=True)  # mounted again
    clock.now += 10
    assert guard.ready() and guard.paused_reason is None


def test_storage_guard_takes_a_share_mounted_anew_for_the_share(
    roots, tmp_path: Path, other_filesystem: Path
) -> None:
    inbox, _ = roots
    output = tmp_path / "output"
    output.mkdir()  # a plain folder at start...
    guard = StorageGuard(inbox, output, min_free_bytes=0)
    assert guard.problem() is None
    output.rmdir()
    output.symlink_to(other_filesystem, target_is_directory=True)  # ...a share on it later
    assert guard.problem() is None
    # A reload keeps what was learnt about folders it did not change.
    assert guard.for_roots(inbox, output)._devices == guard._devices


def test_storage_guard_reasons(roots) -> None:
    inbox, outbox = roots
    assert "nearly full" in StorageGuard(inbox, outbox, min_free_bytes=2**62).problem()
    inbox.rmdir()
    assert "watch folder unavailable" in StorageGuard(inbox, outbox, min_free_bytes=0).problem()


def test_which_write_errors_mean_storage_unavailable(roots) -> None:
    inbox, outbox = roots
    guard = StorageGuard(inbox, outbox, min_free_bytes=0)
    assert guard.is_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert guard.is_storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # Any other I/O error is the job's, while the storage itself looks fine...
    assert not guard.is_storage_error(OSError(errno.EACCES, "Permission denied"))
    assert not guard.is_storage_error(ValueError("bad image"))
    # ...and the storage's when the output root has gone with it.
    outbox.rmdir()
    assert guard.is_storage_error(OSError(errno.EIO, "Input/output error"))


def _config(tmp_path: Path, **engine) -> Config:
    return Config(
        watch=WatchConfig(input_dir=tmp_path / "in"),
        output=OutputConfig(dir=tmp_path / "out"),
        engine=EngineConfig(**engine),
        daemon=DaemonConfig(state_dir=tmp_path / "var"),
        source=tmp_path / "config.toml",
    )


def test_start_up_checks_name_the_key_and_exit_78(tmp_path: Path, tiny_model: Path) -> None:
    check_config(_config(tmp_path, model=tiny_model))
    with pytest.raises(StartupError) as info:
        check_config(_config(tmp_path, model=tmp_path / "nope.safetensors"))
    assert info.value.exit_code == EXIT_CONFIG
    assert "nope.safetensors" in str(info.value) and "engine.model" in str(info.value)

    same = dataclasses.replace(_config(tmp_path, model=tiny_model), output=OutputConfig(dir=tmp_path / "in"))
    with pytest.raises(StartupError, match="same folder") as info:
        check_config(same)
    assert info.value.exit_code == EXIT_CONFIG


def test_an_engine_that_cannot_start_exits_78_unless_a_later_start_may_work(
    tmp_path: Path, tiny_model: Path, monkeypatch
) -> None:
    """A missing torch-tensorrt needs an admin (78: systemd does not restart); a GPU the
    driver has not brought up yet may be there at the next start (1: systemd retries)."""
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no torch-tensorrt
    with pytest.raises(StartupError, match="needs a CUDA GPU .* and torch-tensorrt") as info:
        load_colorizer(_config(tmp_path, model=tiny_model, backend="tensorrt"))
    assert info.value.exit_code == EXIT_CONFIG
    with pytest.raises(StartupError, match="unknown engine.precision") as info:
        load_colorizer(_config(tmp_path, model=tiny_model, precision="fp8"))
    assert info.value.exit_code == EXIT_CONFIG
    with pytest.raises(StartupError, match="no CUDA GPU is available") as info:
        load_colorizer(_config(tmp_path, model=tiny_model, device="cuda"))
    assert info.value.exit_code == 1


def test_the_bundled_model_needs_no_engine_model(tmp_path: Path) -> None:
    assert default_model_path().is_file()
    check_config(_config(tmp_path))


def test_without_a_bundled_model_engine_model_must_be_set(tmp_path: Path, monkeypatch) -> None:
    # An install that lost its package data (e.g. a wheel built without it).
    import semwatch.model

    monkeypatch.setattr(semwatch.model, "default_model_path", lambda: tmp_path / "absent.safetensors")
    with pytest.raises(StartupError) as info:
        check_config(_config(tmp_path))
    message = str(info.value)
    assert "engine.model" in message and "bundled default model" in message
    assert str(tmp_path / "config.toml") in message
    assert info.value.exit_code == EXIT_CONFIG


def test_prepare_folders_creates_what_a_first_run_needs(tmp_path: Path, tiny_model: Path) -> None:
    config = _config(tmp_path, model=tiny_model)
    prepare_folders(config)
    assert all(p.is_dir() for p in (tmp_path / "in", tmp_path / "out", tmp_path / "var"))


def test_a_reload_never_creates_the_output_folder(tmp_path: Path, tiny_model: Path) -> None:
    """SIGHUP with a misspelt output.dir created it silently (input_dir was refused)."""
    config = _config(tmp_path, model=tiny_model)
    prepare_folders(config)
    config.source.write_text(
        f'[watch]\ninput_dir = "in"\n[output]\ndir = "outbx"\n[engine]\nmodel = "{tiny_model}"\n'
    )
    with capture_logs() as logs:
        assert reloaded_config(config) is None
    assert not (tmp_path / "outbx").exists()
    (refused,) = [e for e in logs if e["event"] == "reload refused"]
    assert "output folder does not exist" in refused["reason"] and "output.dir" in refused["reason"]


def test_a_reload_never_creates_the_watch_folder(tmp_path: Path, tiny_model: Path) -> None:
    """SIGHUP with a wrong input_dir is refused like any broken configuration."""
    config = _config(tmp_path, model=tiny_model)
    prepare_folders(config)
    config.source.write_text(f'[watch]\ninput_dir = "typo"\n[engine]\nmodel = "{tiny_model}"\n')
    assert reloaded_config(config) is None
    assert not (tmp_path / "typo").exists()
    with pytest.raises(StartupError, match="watch folder does not exist") as info:
        prepare_folders(
            dataclasses.replace(config, watch=WatchConfig(input_dir=tmp_path / "typo")),
            create_watch_folder=False,
        )
    assert info.value.exit_code == EXIT_CONFIG


def test_a_failed_decode_does_not_keep_the_file_in_memory(tmp_path: Path, tiny_model: Path) -> None:
    """A big file that fails to decode once stayed in memory until the cyclic GC ran."""
    config = _config(tmp_path, model=tiny_model)
    big = tmp_path / "big.tif"
    with big.open("wb") as f:
        # A sound TIFF structure (its strip at the end: the file is read whole) whose
        # photometric interpretation (5, separated) the decoder refuses.
        tags = [(256, 4, 1, 64), (257, 4, 1, 64), (258, 3, 1, 8), (262, 3, 1, 5), (277, 3, 1, 1)]
        tags += [(273, 4, 1, (64 << 20) - 4096), (278, 4, 1, 64), (279, 4, 1, 4096)]
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0" * 4
        f.write(b"II*\x00" + struct.pack("<I", 8) + ifd)
        f.truncate(64 << 20)
    prepare_folders(config)
    shutil.move(big, config.watch.input_dir / "big.tif")
    queue = SqlJobQueue(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=3, retry_backoff=1)
    worker = Worker(Runtime(config, queue), Pace())
    gc.disable()  # what the cycle waits for; collections come rarely on a busy daemon
    tracemalloc.start()
    try:
        queue.enqueue("big.tif", "0" * 64, 64 << 20, 1.0)
        assert worker.run_once() == 0.0  # claimed, read, failed
        (job,) = queue.jobs()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
        worker.close(wait=True)
        queue.close()
    assert peak > 60 << 20  # the file was read...
    assert held < 8 << 20, f"{held / 2**20:.0f} MiB still held after the failure was recorded"
    failed = SqlJobQueue(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=3, retry_backoff=1)
    try:
        job = failed.get(job.id)
        assert job.state is JobState.FAILED and "unsupported photometric" in job.error
    finally:
        failed.close()


def test_watchdog_is_fed_well_within_its_interval() -> None:
    assert ping_interval(None) is None
    assert ping_interval(120.0) == 30.0
    assert 0 < ping_interval(0.01) <= 0.05


@dataclasses.dataclass
class _CountingNotifier(Notifier):
    """systemd's side of the watchdog: counts the pings."""

    pings: int = 0

    def watchdog(self) -> bool:
        self.pings += 1
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stuck_intake_stops_feeding_the_watchdog(tmp_path: Path) -> None:
    """A watcher thread blocked for good (once: in open() of a FIFO) left the watchdog fed,
    so systemd never restarted the service whose intake had stopped."""
    from semwatch.watcher import Watcher

    config = _config(tmp_path)
    config.watch.input_dir.mkdir()
    (config.watch.input_dir / "a.tif").write_bytes(b"sem")
    queue = SqlJobQueue(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=3, retry_backoff=1)
    notifier = _CountingNotifier(None)
    daemon = Daemon(config, notifier=notifier, env={"WATCHDOG_USEC": "4000000"})
    clock, entered, gate = _Clock(), threading.Event(), threading.Event()

    def stuck(_jobs: int) -> None:  # the intake's pass blocks here for good
        entered.set()
        gate.wait(60)

    watch = dataclasses.replace(config.watch, settle_seconds=0.1, scan_interval=3600.0)
    watcher = Watcher(watch, queue, clock=clock, on_enqueued=stuck)
    daemon.rt.queue, daemon.rt.watcher = queue, watcher
    heartbeat = daemon.heartbeat
    never = time.monotonic() + 3600
    heartbeat.next_renew = heartbeat.next_beat = heartbeat.next_watch = heartbeat.next_recover = never

    def beat() -> int:
        heartbeat.next_ping = 0.0
        before = notifier.pings
        heartbeat.tick()
        return notifier.pings - before

    try:
        watcher.start()
        assert beat() == 1
        deadline = time.monotonic() + 60  # guards against a hang only
        while not entered.is_set() and time.monotonic() < deadline:
            clock.now += 0.1
            time.sleep(0.05)
        assert entered.is_set()
        assert beat() == 1  # stuck for a moment: still fed
        clock.now += INTAKE_STALL_SECONDS + 1
        with capture_logs() as logs:
            assert beat() == 0 and beat() == 0
            gate.set()
            while watcher.stalled_seconds() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert beat() == 1
        events = [(e["event"], e.get("step")) for e in logs]
        assert events == [
            ("intake stuck; watchdog no longer fed", "settling a.tif"),
            ("intake moving again", None),
        ]
    finally:
        gate.set()
        watcher.stop()
        queue.close()


def test_content_that_went_away_and_came_back_within_the_settle_time_still_gets_its_output(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A queued, decoding; the file held B for less than the settle time; back to A. A's job
    failed as superseded, B never became a job and A's return was only a touch: no output."""
    from daemon_harness import gray_image, png_bytes

    config = _config(tmp_path, model=tiny_model, batch_size=1)
    prepare_folders(config)
    source = config.watch.input_dir / "x.png"
    a, b = png_bytes(gray_image(1)), png_bytes(gray_image(2))
    queue = SqlJobQueue(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=3, retry_backoff=1)
    worker = Worker(Runtime(config, queue, colorizer=load_colorizer(config)), Pace())
    try:
        queue.enqueue("x.png", hashlib.sha256(a).hexdigest(), len(a), 1.0)
        source.write_bytes(b)  # B, read by the decode, never settles
        (job,) = queue.jobs()
        worker.run_once()
        back = queue.get(job.id)
        assert (back.state, back.attempts, back.error) == (JobState.PENDING, 0, None), back
        # B settles after all: its job supersedes A's at A's next read.
        queue.enqueue("x.png", hashlib.sha256(b).hexdigest(), len(b), 2.0)
        queue._clock = lambda: time.time() + 3600  # past the wait
        for _ in range(3):  # A's job and B's, one at a time
            worker.run_once()
        worker.stages.drain()
        failed = queue.get(job.id)
        assert failed.state is JobState.FAILED and failed.error.startswith("superseded"), failed
        (newer,) = [j for j in queue.jobs() if j.id != job.id]
        assert newer.state is JobState.DONE, newer
    finally:
        worker.close(wait=True)
        queue.close()


def test_a_finished_output_is_marked_done_once_the_database_answers_again(tmp_path: Path) -> None:
    """During a database outage a written output's completion failed once and was given up:
    the lease ran out and the image was colorized again; the log filled with tracebacks."""
    from semwatch.queue import QueueError

    class DownQueue(SqlJobQueue):
        # Fault injection: the database away for the first three completions.
        outage = 3

        def complete(self, owner, job_id, output_path, **kwargs):  # type: ignore[no-untyped-def]
            if self.outage:
                self.outage -= 1
                raise QueueError("database: complete failed: connection refused")
            return super().complete(owner, job_id, output_path, **kwargs)

    queue = DownQueue(f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=3, retry_backoff=1)
    runtime = Runtime(_config(tmp_path), queue)
    try:
        queue.enqueue("x.png", "a" * 64, 10, 1.0)
        (job,) = queue.claim(runtime.owner, 1)
        with capture_logs() as logs:
            assert Outcomes(runtime, Pace(), retry_first=0.05).mark_done(job, tmp_path / "out" / "x.tif")
        assert queue.get(job.id).state is JobState.DONE
        events = [e["event"] for e in logs]
        assert events == [
            "output written but job not marked done; retrying until the database answers",
            "job marked done after all",
        ], events
        assert not any("exc_info" in e for e in logs)
    finally:
        queue.close()


def test_a_heartbeat_that_keeps_failing_is_one_line_until_it_changes(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path), env={})
    with capture_logs() as logs:
        for _ in range(5):
            daemon.heartbeat.failed("database: heartbeat failed: connection refused")
        daemon.heartbeat.failed(None)
        daemon.heartbeat.failed(None)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("heartbeat step failed", "error"),
        ("heartbeat steps work again", "info"),
    ]
