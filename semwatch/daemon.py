"""The service loop: claim a batch, decode, colorize, write, mark done; never lose an image.

Pipeline (DESIGN.md "Data flow"): the main thread claims up to ``batch_size`` jobs
(waiting at most ``max_batch_wait`` for a partial batch to fill), decoding runs in a thread
pool, the network runs in a single compute thread, and encoding + atomic writes run in a
second pool. Batch k's writes overlap batch k+1's decode and compute, and batch k+1's
decode is started before batch k is computed. A job is marked done only after its atomic
write returned, so a crash anywhere re-runs the job onto the same output path.

Crash isolation (DESIGN.md "Queue"): a batch's attempts count from its turn, not from its
decode ahead; every job in hand when the process dies comes back as a crash suspect, which
is claimed alone and computed with nothing decoding beside it, so only a file that crashes
the process itself runs out of attempts.

The main thread itself only waits, in slices of at most ``TICK_SECONDS``, and feeds the
systemd watchdog, renews leases and publishes STATUS between slices; it never blocks on the
network or the disk. A stage that runs longer than ``queue.lease_seconds`` is considered
hung: the watchdog is no longer fed (systemd restarts the daemon) and leases are no longer
renewed (the restarted daemon reclaims them).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING, Any

from semwatch.config import EXIT_CONFIG, Config, ConfigError, load_config
from semwatch.daemon_lock import DaemonLock
from semwatch.dependencies import MissingPackage
from semwatch.errors import one_line
from semwatch.hashing import sha256_fd
from semwatch.imaging import DecodedImage, ImageError, read_provenance, sweep_temp_files
from semwatch.imaging.source import open_regular
from semwatch.layout import OutputLayout, sibling_names
from semwatch.log import configure_logging, get_logger
from semwatch.metrics import DaemonMetrics, MetricsError, MetricSources, ModelInfo
from semwatch.notify import Notifier, watchdog_interval
from semwatch.pipeline import (
    WRITE_BACKLOG_BATCHES,
    OutputSettings,
    Task,
    colorize_batch,
    colorize_error,
    decode,
    decode_error,
    write_colorized,
    write_error,
)
from semwatch.queue import (
    HEARTBEAT_SECONDS,
    WORKER_ROLES,
    Job,
    JobQueue,
    JobState,
    Owner,
    QueueError,
    check_sqlite_is_local,
    open_queue,
    redacted_url,
    sqlite_path,
)
from semwatch.sidecars import copy_sidecar, copy_sidecars, image_names, sidecar_target
from semwatch.styles import Style, StyleError, StyleFinder

if TYPE_CHECKING:
    from semwatch.engine import Colorizer, EngineInfo
    from semwatch.watcher import Watcher

log = get_logger(__name__)

EXIT_FAILURE = 1
# Longest the main thread waits without feeding the watchdog and looking at its flags.
TICK_SECONDS = 0.5
# Claim poll while idle: jobs queued by `semwatch enqueue`/`retry` and retries whose
# back-off expired do not wake the daemon.
IDLE_POLL_SECONDS = 1.0
# While output (or input) storage is unavailable, how often it is looked at again.
STORAGE_RECHECK_SECONDS = 10.0
# Writing needs headroom; below this much free space on the output filesystem we pause
# rather than fill the disk to the last byte (other programs on the host need it too).
MIN_FREE_BYTES = 200 * 2**20
STATUS_INTERVAL_SECONDS = 10.0
RECOVER_INTERVAL_SECONDS = 60.0
# The watcher's lock on its input folder (in the database): renewed every
# WATCH_RENEW_SECONDS; a watcher on another host takes over once it is WATCH_LOCK_SECONDS
# old (on this host, at once when the holder's process is gone). A waiting watcher asks
# again every WATCH_RENEW_SECONDS.
WATCH_LOCK_SECONDS = 30.0
WATCH_RENEW_SECONDS = 5.0
# The watcher's intake without progress for this long is stuck (a blocked open, a hung
# share): the watchdog is no longer fed, so systemd restarts the service. Progress comes with
# every folder entry walked and every MiB hashed, so a busy intake is never taken for stuck.
INTAKE_STALL_SECONDS = 120.0
# complete() while the database does not answer: retried with back-off up to this interval.
COMPLETE_RETRY_MAX_SECONDS = 15.0
# After an unexpected error in the loop itself: a pause, not a tight crash loop.
LOOP_ERROR_SLEEP_SECONDS = 5.0
# Write errors that mean "the output storage is unavailable", not "this image is bad".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# Write errors that the same output path will meet every time: retrying only repeats the
# colorization (e.g. "File name too long" for x.png.tif beside x.tif at 255 bytes).
PERMANENT_WRITE_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EILSEQ})


class StartupError(RuntimeError):
    """The daemon cannot start; ``exit_code`` tells systemd whether a restart can help."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _ShutdownTimeout(Exception):
    """shutdown_timeout passed while waiting for work in flight."""


# --------------------------------------------------------------------------- storage


@dataclass
class StorageGuard:
    """Pauses claiming while the output (or input) storage cannot take work.

    A full disk or an unmounted share is not the images' fault: their jobs are released
    (attempts given back) and claiming waits until ``problem()`` is None again. A share
    mounted at a folder itself leaves an empty local folder behind when it goes away, so
    each folder's file system (device id) is remembered at the first check and a change
    is a problem too, unless the folder is a mount point again (a share mounted anew
    gets a new device id).
    """

    input_root: Path
    output_root: Path
    min_free_bytes: int = MIN_FREE_BYTES
    recheck_seconds: float = STORAGE_RECHECK_SECONDS
    clock: Callable[[], float] = time.monotonic
    _reason: str | None = field(default=None, init=False)
    _next_check: float = field(default=0.0, init=False)
    _devices: dict[Path, int] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def paused_reason(self) -> str | None:
        return self._reason

    def for_roots(self, input_root: Path, output_root: Path) -> StorageGuard:
        """A guard for (reloaded) folders that remembers the file systems of unchanged ones,
        so a reload while a share is unmounted does not take its mount point for it."""
        guard = StorageGuard(input_root, output_root, self.min_free_bytes, self.recheck_seconds, self.clock)
        with self._lock:
            guard._devices = {
                root: device for root, device in self._devices.items() if root in (input_root, output_root)
            }
        return guard

    def problem(self) -> str | None:
        """Why work cannot go on now, or None when both folders are usable."""
        if not self.input_root.is_dir():
            return f"{self.input_root}: watch folder unavailable (share unmounted?)"
        if not self.output_root.is_dir():
            return f"{self.output_root}: output folder missing (share unmounted?)"
        moved = self._filesystem_change(self.input_root, "watch folder") or self._filesystem_change(
            self.output_root, "output folder"
        )
        if moved is not None:
            return moved
        if not os.access(self.output_root, os.W_OK | os.X_OK):
            return f"{self.output_root}: output folder not writable"
        try:
            st = os.statvfs(self.output_root)
        except OSError as exc:
            return f"{self.output_root}: cannot check free space: {exc.strerror or exc}"
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            return (
                f"{self.output_root}: disk nearly full ({free // 2**20} MiB free, "
                f"need {self.min_free_bytes // 2**20} MiB)"
            )
        return None

    def _filesystem_change(self, root: Path, what: str) -> str | None:
        try:
            device = os.stat(root).st_dev
            parent = os.stat(root.parent).st_dev
        except OSError as exc:
            return f"{root}: cannot check the {what}: {exc.strerror or exc}"
        with self._lock:
            known = self._devices.setdefault(root, device)
            if device == known:
                return None
            if device != parent:
                self._devices[root] = device  # a mount point again: the share is back
        if device != parent:
            # A mount point of another device: taken as the share mounted again.
            log.info(
                "share mounted again",
                folder=what,
                path=str(root),
                device=device,
                was=known,
            )
            return None
        return (
            f"{root}: the {what}'s file system changed since start (device {known} -> "
            f"{device}): share unmounted?"
        )

    def is_storage_error(self, exc: BaseException) -> bool:
        """Whether a failed write means "storage unavailable" rather than "bad job"."""
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return True
        return isinstance(exc, OSError) and self.problem() is not None

    def trip(self, reason: str) -> None:
        """Pause; logged once per outage, not once per image."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = one_line(reason)
            self._next_check = self.clock() + self.recheck_seconds
        # The jobs in hand are released without using attempts: not the images' fault.
        log.error(
            "output paused",
            reason=self._reason,
            recheck_seconds=self.recheck_seconds,
        )

    def ready(self) -> bool:
        """True when work may be claimed; while paused, looks again every recheck_seconds."""
        with self._lock:
            paused = self._reason is not None
            if paused and self.clock() < self._next_check:
                return False
        problem = self.problem()
        with self._lock:
            if problem is None:
                if self._reason is not None:
                    log.info("storage available again, resuming", was=self._reason)
                self._reason = None
                return True
            self._next_check = self.clock() + self.recheck_seconds
        if not paused:
            self.trip(problem)
        return False


# --------------------------------------------------------------------------- work items


@dataclass
class _Item:
    """One claimed job on its way through the pipeline."""

    job: Job
    source: Path
    target: Path
    claimed_at: float  # monotonic
    decode: Future | None = None
    image: DecodedImage | None = None
    # Whether its attempt counts (queue.start): decoded ahead for the next batch, it does not
    # until its batch's turn comes.
    started: bool = False
    style: Style | None = None  # the watch folder's style, read when the job ran


class _KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Any, list[Any]] = {}  # key -> [lock, holders and waiters]

    @contextmanager
    def holding(self, key: Any) -> Iterator[None]:
        with self._lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class _Leases:
    """Ids of the jobs this daemon holds (claimed and not yet done, failed or released)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()

    def add(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.update(ids)

    def discard(self, job_id: int) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def snapshot(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """`semwatch run`: one instance per process; `run()` returns the exit code."""

    def __init__(
        self, config: Config, *, notifier: Notifier | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self._env = dict(os.environ if env is None else env)
        self._notifier = notifier if notifier is not None else Notifier.from_env(self._env)
        self._owner = Owner.current()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._stop_deadline: float | None = None
        self._leases = _Leases()
        self._layout = OutputLayout.of(config)
        self._styles = StyleFinder(config.watch.input_dir, config.engine.style)
        self._storage = StorageGuard(config.watch.input_dir, config.output.dir)
        self._queue: JobQueue | None = None
        self._lock: DaemonLock | None = None
        self._colorizer: Colorizer | None = None
        self._watcher: Watcher | None = None
        self._decoders: ThreadPoolExecutor | None = None
        self._writers: ThreadPoolExecutor | None = None
        self._compute: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []
        # Sources whose names differ only in the extension share an output stem: their
        # naming, writing and completion run one at a time (see _own_output_name).
        self._output_stems = _KeyedLocks()
        self._metrics = _daemon_metrics(self)
        # Heartbeat bookkeeping (main thread only).
        self._watchdog_every = _ping_interval(watchdog_interval(self._env))
        self._next_ping = 0.0
        self._next_renew = 0.0
        self._next_status = 0.0
        self._next_recover = 0.0
        self._next_beat = 0.0
        self._next_watch = 0.0
        self._role = config.daemon.role
        # The input folder's key in the watch lock (None: this daemon does not watch).
        self._watch_root = None if self._role == "worker" else str(config.watch.input_dir.resolve())
        self._watch_holder: Owner | None = None  # the other watcher we wait for
        self._stage: tuple[str, float] | None = None
        self._stall_logged = False
        self._intake_stall_logged = False
        self._heartbeat_problem: str | None = None

    # ---- lifecycle

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._start()
        except StartupError as exc:
            log.error("semwatch daemon cannot start", reason=str(exc))
            self._abort_start()
            return exc.exit_code
        except ModuleNotFoundError as exc:
            # A package missing from the installation (modules load lazily, so it shows
            # here): an admin must install it; a restart would meet the same error.
            log.error("semwatch daemon cannot start", reason=MissingPackage.from_error(exc).message())
            self._abort_start()
            return EXIT_CONFIG
        except Exception:
            log.exception("semwatch daemon cannot start")
            self._abort_start()
            return EXIT_FAILURE
        code = 0
        try:
            self._loop()
        except _ShutdownTimeout:
            code = EXIT_FAILURE
        finally:
            code = self._shutdown(code)
        return code

    def request_stop(self, reason: str = "requested") -> None:
        if self._stop.is_set():
            # A second Ctrl-C/SIGTERM: do not wait for the batch any longer.
            self._stop_deadline = time.monotonic()
            log.warning("second stop request", reason=reason, giving_up="work in flight")
        else:
            self._stop_deadline = time.monotonic() + self.config.daemon.shutdown_timeout
            log.info(
                "stopping",
                reason=reason,
                shutdown_timeout=self.config.daemon.shutdown_timeout,
            )
            self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        log.info("reload requested", when="after this batch")
        self._reload.set()
        self._wake.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded use (tests): the caller drives request_stop()
        signal.signal(signal.SIGTERM, lambda s, f: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda s, f: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()

    def _start(self) -> None:
        cfg = self.config
        check_config(cfg)
        prepare_folders(cfg)
        working = self._role in WORKER_ROLES
        try:
            if sqlite_path(cfg.queue.database_url) is not None:
                # One daemon per SQLite database; a server database takes any number.
                self._lock = DaemonLock(cfg.queue, cfg.daemon.state_dir)
                self._lock.acquire()
            self._queue = open_queue(cfg.queue)
            recovered = self._queue.recover(self._owner) if working else 0
            self._queue.beat(self._owner, self._role)
        except QueueError as exc:
            raise StartupError(str(exc)) from None
        swept = 0
        if working:
            # Alone on the output folder under SQLite's lock; on a shared queue other workers
            # may be writing there now: only temporaries older than two leases are a crash's.
            alone = self._lock is not None
            swept = sweep_temp_files(cfg.output.dir, older_than=0.0 if alone else 2 * cfg.queue.lease_seconds)
        log.info(
            "queue open",
            database=redacted_url(cfg.queue.database_url),
            role=self._role,
            recovered_jobs=recovered,
            temp_files_swept=swept,
            owner_pid=self._owner.pid,
        )
        _serve_metrics(self._metrics, cfg)
        if working:
            self._colorizer = load_colorizer(cfg)
            daemon_cfg = cfg.daemon
            self._decoders = ThreadPoolExecutor(daemon_cfg.decode_threads, thread_name_prefix="decode")
            self._writers = ThreadPoolExecutor(daemon_cfg.write_threads, thread_name_prefix="write")
            self._compute = ThreadPoolExecutor(1, thread_name_prefix="compute")
        self._notifier.ready(self._status_text() if self._notifier.enabled else None)
        now = time.monotonic()
        self._next_recover = now + self._recover_interval()
        self._next_beat = now + HEARTBEAT_SECONDS
        self._keep_watching()
        log.info(
            "semwatch daemon ready",
            role=self._role,
            input=str(cfg.watch.input_dir),
            output=str(cfg.output.dir),
            batch_size=cfg.engine.batch_size,
            watchdog_ping_s=self._watchdog_every,
        )

    def _keep_watching(self) -> None:
        """Take or renew this daemon's watch lock; start or stop its watcher to match."""
        if self._watch_root is None:
            return
        self._next_watch = time.monotonic() + WATCH_RENEW_SECONDS
        holder = self._queue.hold_watch(self._watch_root, self._owner, WATCH_LOCK_SECONDS)
        if holder is None:
            if self._watcher is None:
                self._watcher = self._start_watcher(self.config)
            self._watch_holder = None
            return
        if self._watcher is not None:
            log.warning("watch lock lost; stopped watching", root=self._watch_root, holder_host=holder.host)
            self._watcher.stop()
            self._watcher = None
        if holder != self._watch_holder:
            log.info(
                "input folder watched by another watcher; waiting to take over",
                root=self._watch_root,
                holder_host=holder.host,
                holder_pid=holder.pid,
            )
            self._watch_holder = holder

    def _start_watcher(self, cfg: Config) -> Watcher:
        from semwatch.watcher import Watcher, WatcherError

        watcher = Watcher(
            cfg.watch,
            self._queue,
            output_dir=cfg.output.dir,
            on_enqueued=lambda n: self._wake.set(),
            sidecars=cfg.output.sidecars,
            on_sidecar=self._sidecar_settled,
            # Arrival times on the queue's clock, as the finish times: latency across hosts.
            wall_clock=self._queue.now,
        )
        try:
            watcher.start()
        except WatcherError as exc:
            raise StartupError(str(exc)) from None
        return watcher

    # ---- main loop

    def _loop(self) -> None:
        carry: list[_Item] = []  # claimed, decode started, not computed yet
        while not self._stop.is_set():
            try:
                self._heartbeat()
                if self._reload.is_set():
                    self._do_reload()
                if self._role not in WORKER_ROLES:
                    self._sleep(IDLE_POLL_SECONDS)  # a watcher's work is on its own threads
                    continue
                if not self._storage.ready():
                    self._release(carry, "storage unavailable")
                    carry = []
                    self._sleep(TICK_SECONDS)
                    continue
                if not carry:
                    carry = self._claim(ahead=False)
                    if not carry:
                        self._sleep(IDLE_POLL_SECONDS)
                        continue
                carry = self._process(carry)
            except _ShutdownTimeout:
                raise
            except Exception:
                log.exception(
                    "daemon loop error",
                    pause_seconds=LOOP_ERROR_SLEEP_SECONDS,
                )
                self._after_loop_error(carry)
                carry = []
                self._sleep(LOOP_ERROR_SLEEP_SECONDS)
        self._release(carry, "shutdown: claimed, not started")

    def _after_loop_error(self, carry: list[_Item]) -> None:
        """Let the writes finish (they settle their own jobs), then give back every other
        job still held: whatever the error interrupted must not stay leased and renewed."""
        for item in carry:
            if item.decode is not None:
                item.decode.cancel()
        with self._staged("writes after a loop error"):
            self._wait(self._writes)
        self._release_ids(self._leases.snapshot(), "loop error")

    def _claim(self, *, ahead: bool) -> list[_Item]:
        """Lease up to batch_size jobs. The batch to work on next (not ``ahead``) waits up to
        max_batch_wait for more, unless it is a crash suspect, which runs alone; a batch
        decoded ahead never takes a suspect."""
        if self._stop.is_set() or self._reload.is_set():
            return []
        engine = self.config.engine
        jobs = self._queue.claim(self._owner, engine.batch_size, suspects=not ahead)
        self._leases.add([job.id for job in jobs])
        if jobs and jobs[0].crash_suspect:
            self._before_alone(jobs[0])
        fill = not ahead and jobs and not jobs[0].crash_suspect
        if fill and len(jobs) < engine.batch_size and engine.max_batch_wait > 0:
            deadline = time.monotonic() + engine.max_batch_wait
            self._wake.clear()
            while len(jobs) < engine.batch_size and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._wake.wait(min(remaining, TICK_SECONDS)):
                    self._wake.clear()
                self._heartbeat()
                more = self._queue.claim(self._owner, engine.batch_size - len(jobs), suspects=False)
                self._leases.add([job.id for job in more])
                jobs.extend(more)
            if self._stop.is_set():
                self._release_ids([job.id for job in jobs], "shutdown: claimed, not started")
                return []
        return self._start_decoding(jobs, ahead=ahead)

    def _before_alone(self, job: Job) -> None:
        """A crash suspect runs with no other job in hand: the previous batch's writes end
        first, or a crash now would be charged to them too."""
        log.info(
            "running a job alone: it was in hand when a process died",
            job_id=job.id,
            path=job.rel_path,
            attempts=job.attempts,
        )
        with self._staged("writes before a job run alone"):
            self._wait(self._writes)

    def _start_decoding(self, jobs: Sequence[Job], *, ahead: bool) -> list[_Item]:
        now = time.monotonic()
        listings: dict[Path, list[str]] = {}
        items = []
        for job in jobs:
            try:
                source = self._layout.source(job.rel_path)
                siblings = sibling_names(source.parent, listings)
                target = self._layout.target(job.rel_path, siblings)
            except ValueError as exc:
                self._fail(job, str(exc), permanent=True, started=now)
                continue
            items.append(_Item(job, source, target, now))
        # From here a crash may be these files' doing: they become crash suspects. Their
        # attempts count from their batch's turn (_start_work); until then a kill costs
        # them nothing, and a merely claimed job is not even a suspect.
        if ahead:
            self._queue.decode_ahead(self._owner, [item.job.id for item in items])
        else:
            self._start_work(items)
        for item in items:
            item.decode = self._decoders.submit(self._decode, item)
        return items

    def _start_work(self, items: Sequence[_Item]) -> None:
        """The batch's turn: the attempts of its jobs count from now on."""
        waiting = [item for item in items if not item.started]
        self._queue.start(self._owner, [item.job.id for item in waiting])
        for item in waiting:
            item.started = True

    def _decode(self, item: _Item) -> DecodedImage:
        # inside: a symlink, FIFO or device swapped in after queueing is refused, not read.
        return decode(item.source, max_pixels=self.config.engine.max_pixels, inside=self._layout.input_root)

    def _process(self, items: list[_Item]) -> list[_Item]:
        """Finish decoding ``items``, compute them, hand them to the writers.

        Returns the next batch, claimed and decoding while this one was computed.
        """
        self._start_work(items)
        started = time.monotonic()
        with self._staged("decode"):
            self._wait([item.decode for item in items if item.decode is not None])
        decoded = [item for item in items if self._take_decoded(item) and self._take_style(item)]
        decode_s = time.monotonic() - started
        # A crash suspect is computed with nothing else decoding: whatever kills the process
        # now is its doing, and no other job is charged for it.
        alone = any(item.job.crash_suspect for item in items)
        upcoming = self._claim(ahead=True) if not alone and self._storage.ready() else []
        if not decoded:
            return upcoming
        colorizer = self._colorizer
        info = colorizer.info
        t0 = time.monotonic()
        with self._staged("compute"):
            rgbs = self._colorize(colorizer, decoded)
        compute_s = time.monotonic() - t0
        self._metrics.batch(len(decoded), compute_s)
        written = 0
        for item, rgb in zip(decoded, rgbs):
            if rgb is not None:
                self._submit_write(item, rgb, info)
                written += 1
        log.info(
            "batch",
            jobs=len(items),
            decoded=len(decoded),
            colorized=written,
            decode_wait_s=round(decode_s, 3),
            compute_s=round(compute_s, 3),
            images_per_s=round(written / compute_s, 2) if compute_s > 0 else None,
            model=info.model_name,
        )
        if alone:
            # Its write too ends before the next job is taken: one job in hand, start to end.
            with self._staged("write of a job run alone"):
                self._wait(self._writes)
        return upcoming

    def _take_decoded(self, item: _Item) -> bool:
        """Move the decode result into ``item``; a failed or superseded job is recorded."""
        future, item.decode = item.decode, None
        # exception(), not result(): re-raising here would tie this frame into the error's
        # traceback, a reference cycle that keeps the decoded file's bytes alive until the
        # cyclic garbage collector happens to run (a gigabyte per big bad file).
        error = future.exception()
        if error is not None:
            self._decode_failed(item, error)
            _drop_frames(error)
            return False
        image = future.result()
        if image.sha256 != item.job.sha256:
            self._content_changed(item, image.sha256)
            return False
        for warning in image.warnings:
            log.warning("input warning", path=item.job.rel_path, job_id=item.job.id, warning=warning)
        item.image = image
        return True

    def _take_style(self, item: _Item) -> bool:
        """Read the style that applies to the item's folder (now: an edited style applies to
        the next image); a broken one fails this job with its reason, nothing else."""
        try:
            item.style = self._styles.style_for(item.source)
            if item.style is not None:
                self._colorizer.check_style(item.style)
        except StyleError as exc:
            self._fail(item.job, str(exc), permanent=True, started=item.claimed_at)
            return False
        return True

    def _content_changed(self, item: _Item, read: str) -> None:
        """The file held other content than the job's when it was read. Superseded only
        when the queue knows a newer version (a job of its own); content that has not
        settled may go back to the job's (A -> B -> A within the settle time, the return
        only a touch to the watcher), so the job waits and reads the file again."""
        job = item.job
        queued = job.sha256[:12] or "unreadable"
        try:
            latest = self._queue.latest_sha256(job.rel_path)
        except QueueError as exc:
            log.warning("cannot check for a newer version", job_id=job.id, error=one_line(exc))
            latest = None
        if latest is not None and latest != job.sha256:
            self._fail(
                job,
                f"superseded: the file changed after it was queued (queued {queued}, now "
                f"{read[:12]}); its new content is a job of its own",
                permanent=True,
                started=item.claimed_at,
            )
            return
        delay = max(2 * self.config.watch.settle_seconds, 1.0)
        log.info(
            "file changed since it was queued; read again later",
            job_id=job.id,
            path=job.rel_path,
            queued=queued,
            now=read[:12],
            retry_s=delay,
        )
        self._release([item], "content not settled", delay=delay)

    def _decode_failed(self, item: _Item, error: BaseException) -> None:
        if isinstance(error, ImageError):
            problem = None if error.permanent else self._storage.problem()
            if problem is not None:
                self._storage.trip(problem)
                self._release([item], "storage unavailable")
                return
            self._fail(item.job, decode_error(error), permanent=error.permanent, started=item.claimed_at)
            return
        # One image must not stop the service.
        log.error("unexpected error decoding", path=item.job.rel_path, job_id=item.job.id, exc_info=error)
        self._fail(item.job, decode_error(error), permanent=False, started=item.claimed_at)

    def _colorize(self, colorizer: Colorizer, items: list[_Item]) -> list[Any]:
        """RGB per item (None for one that failed, recorded); the pipeline falls back to
        image by image when the batch fails, in the compute thread."""
        images = [item.image for item in items]
        styles = [item.style for item in items]
        rgbs = self._wait_result(self._compute.submit(colorize_batch, colorizer, images, None, styles))
        for item, rgb in zip(items, rgbs):
            if isinstance(rgb, Exception):
                self._fail(item.job, colorize_error(rgb), permanent=False, started=item.claimed_at)
        return [None if isinstance(rgb, Exception) else rgb for rgb in rgbs]

    # ---- writing

    def _submit_write(self, item: _Item, rgb: Any, info: EngineInfo) -> None:
        limit = WRITE_BACKLOG_BATCHES * self.config.engine.batch_size
        self._writes = [f for f in self._writes if not f.done()]
        if len(self._writes) >= limit:
            with self._staged("write backlog"):
                self._wait(self._writes[: len(self._writes) - limit + 1])
            self._writes = [f for f in self._writes if not f.done()]
        self._writes.append(self._writers.submit(self._write, item, rgb, info))

    def _write(self, item: _Item, rgb: Any, info: EngineInfo) -> None:
        """Runs in a writer thread: encode + atomic write, then mark done. Never raises."""
        # write_image would create a missing root, and under an unmounted share's mount
        # point it would write to the local disk: both are a storage pause, not a write.
        problem = self._storage.problem()
        if problem is not None:
            self._storage.trip(problem)
            self._release([item], "storage unavailable")
            return
        if self._superseded_before_write(item):
            return
        with self._output_stems.holding((item.source.parent, PurePosixPath(item.source.name).stem.lower())):
            self._write_named(item, rgb, info)

    def _write_named(self, item: _Item, rgb: Any, info: EngineInfo) -> None:
        """_write under its output stem's lock: name, write, mark done."""
        job, image = item.job, item.image
        cfg = self.config.output
        try:
            item.target = self._own_output_name(item)
        except (OSError, QueueError, ValueError) as exc:
            # Writing anyway could land over a sibling's output: tried again later instead.
            reason = f"cannot make the output name {item.target.name} free: {one_line(exc)}"
            self._fail(job, reason, permanent=False, started=item.claimed_at)
            return
        try:
            # The output first, then its sidecars: a sidecar that settles from now on finds
            # the output there (_sidecar_settled), one that came earlier is in the listing.
            task = Task(item.source, item.target, style=item.style)
            write_colorized(task, image, rgb, info, OutputSettings.of(cfg))
        except OSError as exc:
            if exc.errno in PERMANENT_WRITE_ERRNOS:
                self._fail(job, write_error(item.target, exc), permanent=True, started=item.claimed_at)
            elif self._storage.is_storage_error(exc):
                self._storage.trip(self._storage.problem() or one_line(exc))
                self._release([item], "storage unavailable")
            else:
                self._fail(job, write_error(item.target, exc), permanent=False, started=item.claimed_at)
            return
        except Exception as exc:  # noqa: BLE001
            log.exception("unexpected error writing", path=job.rel_path, job_id=job.id)
            self._fail(job, write_error(item.target, exc), permanent=False, started=item.claimed_at)
            return
        # Before the job is marked done (a crash in between re-runs the job, sidecars too), and
        # whatever becomes of them the output stands: the job is never undone for a sidecar.
        sidecars = self._copy_sidecars(item)
        try:
            if not self._mark_done(job, item.target):
                return
        finally:
            self._leases.discard(job.id)
        # arrived_at is on the queue's clock (the database server's on PostgreSQL), so the
        # latency is too: a worker whose clock is off does not skew it.
        latency = self._queue.now() - job.arrived_at
        self._metrics.job_done(latency)
        log.info(
            "job done",
            job_id=job.id,
            path=job.rel_path,
            output=str(item.target),
            seconds=round(time.monotonic() - item.claimed_at, 3),
            latency_s=round(latency, 3),
            sidecars=sidecars,
        )

    def _mark_done(self, job: Job, target: Path) -> bool:
        """complete(), retried while the database does not answer: the output is written, and
        a job given up here would be colorized again once its lease ran out (its lease stays
        renewed meanwhile). False when it could not be recorded (logged)."""
        delay, failing = 1.0, False
        while True:
            try:
                self._queue.complete(self._owner, job.id, str(target))
            except QueueError as exc:
                if not failing:
                    log.error(
                        "output written but job not marked done; retrying until the database answers",
                        job_id=job.id,
                        path=job.rel_path,
                        error=one_line(exc),
                    )
                    failing = True
                if self._stop.is_set() and self._past_deadline():
                    log.error("job not marked done before shutdown; it is redone", job_id=job.id)
                    return False
                time.sleep(delay)
                delay = min(2 * delay, COMPLETE_RETRY_MAX_SECONDS)
                continue
            except Exception as exc:  # noqa: BLE001
                # The output exists; the lease will expire and the job re-run onto the same file.
                log.error("output written but job not marked done", job_id=job.id, error=one_line(exc))
                return False
            if failing:
                log.info("job marked done after all", job_id=job.id, path=job.rel_path)
            return True

    def _copy_sidecars(self, item: _Item) -> int:
        """Copy the source's sidecars beside its new output; returns how many. One that
        cannot be copied is logged with its reason; on a full disk it is copied alone once
        there is room again (the watcher settles it anew), the image is not colorized again."""
        try:
            copies = copy_sidecars(
                item.source, item.target, self.config.output.sidecars, inside=self._layout.input_root
            )
        except OSError as exc:
            log.warning("sidecars not looked for", path=item.job.rel_path, error=one_line(exc))
            return 0
        for failure in copies.failures:
            storage = self._storage.is_storage_error(failure.error)
            rel = self._layout.input_rel(failure.source)
            if storage and self._watcher is not None and rel is not None:
                self._watcher.recheck(rel)
            log.warning(
                "sidecar not copied",
                path=str(failure.source),
                output=str(item.target),
                error=failure.reason,
                job_id=item.job.id,
                retry="when there is room again (watcher)" if storage else "when the sidecar changes",
            )
        return copies.copied

    def _own_output_name(self, item: _Item) -> Path:
        """The job's output path by its folder's listing now, made free for it: a sibling's
        output that holds it (written while that sibling was alone: z.TIF -> z.tif, then
        z.tif arrived) is first moved to the sibling's own name (z.TIF.tif), so an output
        never lands over another source's, whatever the order they arrived in."""
        names = os.listdir(item.source.parent)
        target = self._layout.target(item.job.rel_path, names)
        for other in self._queue.output_holders(str(target), other_than=item.job.rel_path):
            self._move_sibling_output(other, target, names)
        return target

    def _move_sibling_output(self, other_rel: str, held: Path, names: list[str]) -> None:
        """Rename ``other_rel``'s output from ``held`` to its sibling name and record it."""
        other_name = PurePosixPath(other_rel).name
        # Named as beside the siblings even when its source is gone: its output stays its own.
        moved = self._layout.target(other_rel, [*names, other_name])
        if moved == held:
            raise ValueError(f"{other_rel}: no sibling name apart from {held.name}")
        if self._output_of(held) == str(self._layout.source(other_rel)):
            # Only that source's output is moved: after a crash between this rename and the
            # record below, `held` may already be this job's own output.
            os.rename(held, moved)
        self._queue.move_output(other_rel, str(held), str(moved))
        log.info("output moved to its sibling name", path=other_rel, was=str(held), output=str(moved))
        try:
            copies = copy_sidecars(
                self._layout.source(other_rel),
                moved,
                self.config.output.sidecars,
                inside=self._layout.input_root,
            )
            for failure in copies.failures:
                log.warning(
                    "sidecar not copied", path=str(failure.source), output=str(moved), error=failure.reason
                )
        except OSError as exc:
            log.warning("sidecars not copied beside a moved output", path=other_rel, error=one_line(exc))

    def _made_from_current(self, image_rel: str, output: Path) -> bool:
        """Whether ``output`` was made from the content the image holds now (by SHA-256)."""
        recorded = _output_source(output).get("sha256")
        try:
            fd = open_regular(self._layout.source(image_rel), self._layout.input_root)
            try:
                return recorded is not None and sha256_fd(fd) == recorded
            finally:
                os.close(fd)
        except (OSError, ImageError, ValueError) as exc:
            log.debug("image not readable to match its sidecar", path=image_rel, error=one_line(exc))
            return False

    @staticmethod
    def _output_of(output: Path) -> str | None:
        """The source path recorded in an output's provenance (None: no output there)."""
        return _output_source(output).get("path")

    def _sidecar_settled(self, rel_path: str) -> None:
        """Watcher thread: a sidecar arrived or changed. Copy it beside the outputs already
        written for its image; an image still queued gets it when its output is written.
        Raises (the watcher logs and retries at its next scan) when it cannot be copied."""
        # Not onto a missing root, nor into an unmounted share's local mount point.
        problem = self._storage.problem()
        if problem is not None:
            raise OSError(f"storage unavailable: {problem}")
        source = self._layout.source(rel_path)
        names = os.listdir(source.parent)
        folder = PurePosixPath(rel_path).parent
        for image in image_names(source.name, names):
            image_rel = str(folder / image)
            target = self._layout.target(image_rel, names)
            if not target.is_file():
                continue  # copied when the image's output is written
            if not self._made_from_current(image_rel, target):
                # A new acquisition's record beside an earlier one's image: it waits for the
                # output of the image there now (and is never copied if that one fails).
                log.info("sidecar waits for its image's new output", path=rel_path, output=str(target))
                continue
            try:
                copied = copy_sidecar(
                    source, sidecar_target(target, source.name), inside=self._layout.input_root
                )
            except OSError as exc:
                if self._storage.is_storage_error(exc):
                    raise  # the watcher tries again at its next scan
                log.warning("sidecar not copied", path=rel_path, output=str(target), error=one_line(exc))
                continue
            if copied:
                log.info("sidecar copied", path=rel_path, output=str(target))

    def _superseded_before_write(self, item: _Item) -> bool:
        """Whether the file went on to other content while this job was computed; its
        output would then land over the newer one's (A -> B -> A in quick succession)."""
        job = item.job
        try:
            latest = self._queue.latest_sha256(job.rel_path)
        except QueueError as exc:
            log.warning("cannot check for a newer version; writing", job_id=job.id, error=one_line(exc))
            return False
        if latest is None or latest == job.sha256:
            return False
        self._fail(
            job,
            f"superseded: the file changed to other content ({latest[:12]}) before "
            "this output was written; that content is a job of its own",
            permanent=True,
            started=item.claimed_at,
        )
        return True

    # ---- job outcomes

    def _fail(self, job: Job, reason: str, *, permanent: bool, started: float) -> None:
        reason = one_line(reason)
        try:
            state = self._queue.fail(self._owner, job.id, reason, permanent=permanent)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "job failure not recorded",
                job_id=job.id,
                path=job.rel_path,
                reason=reason,
                error=one_line(exc),
            )
            return
        finally:
            self._leases.discard(job.id)
        log.warning(
            "job failed",
            job_id=job.id,
            path=job.rel_path,
            error=reason,
            permanent=permanent,
            state=state.value,
            seconds=round(time.monotonic() - started, 3),
        )
        self._metrics.job_failed(state)

    def _release(self, items: Sequence[_Item], why: str, *, delay: float = 0.0) -> None:
        """Give claimed, unfinished jobs back without using an attempt."""
        for item in items:
            if item.decode is not None:
                item.decode.cancel()
        self._release_ids([item.job.id for item in items], why, delay=delay)

    def _release_ids(self, ids: Sequence[int], why: str, *, delay: float = 0.0) -> None:
        if not ids:
            return
        try:
            self._queue.release(self._owner, ids, delay=delay)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "leases not released",
                job_ids=ids,
                error=one_line(exc),
                expire_after_s=self.config.queue.lease_seconds,
            )
            return
        for job_id in ids:
            self._leases.discard(job_id)
        log.info("jobs released", job_ids=ids, reason=why)

    # ---- waiting with a heartbeat

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(min(remaining, TICK_SECONDS)):
                self._wake.clear()
                return
            self._heartbeat()

    def _wait(self, futures: Sequence[Future | None]) -> None:
        pending = {f for f in futures if f is not None}
        while pending:
            _done, pending = wait_futures(pending, timeout=TICK_SECONDS)
            self._heartbeat()
            if pending and self._past_deadline():
                raise _ShutdownTimeout

    def _wait_result(self, future: Future) -> Any:
        self._wait([future])
        return future.result()

    def _past_deadline(self) -> bool:
        return self._stop_deadline is not None and time.monotonic() > self._stop_deadline

    @contextmanager
    def _staged(self, name: str) -> Iterator[None]:
        self._stage = (name, time.monotonic())
        try:
            yield
        finally:
            self._stage = None
            if self._stall_logged:
                log.warning("stalled stage finished after all", stage=name)
                self._stall_logged = False

    def _heartbeat(self) -> None:
        """Watchdog, lease renewal, STATUS, recovery; called at least every TICK_SECONDS."""
        now = time.monotonic()
        if self._stalled(now):
            return
        # Whether this tick asks the database something (only such a tick tells whether an
        # outage is over).
        due = [self._next_renew, self._next_beat, self._next_watch]
        if self._role in WORKER_ROLES:
            due.append(self._next_recover)
        asks = now >= min(due)
        try:
            if self._watchdog_every is not None and now >= self._next_ping and not self._intake_stalled():
                self._notifier.watchdog()
                self._next_ping = now + self._watchdog_every
            if now >= self._next_renew:
                self._next_renew = now + self.config.queue.lease_seconds / 4
                held = self._leases.snapshot()
                if held:
                    self._queue.renew(self._owner, held)
            if self._notifier.enabled and now >= self._next_status:
                self._next_status = now + STATUS_INTERVAL_SECONDS
                self._notifier.status(self._status_text())
            if now >= self._next_beat:
                self._next_beat = now + HEARTBEAT_SECONDS
                self._queue.beat(self._owner, self._role)
            if now >= self._next_watch:
                self._keep_watching()
            if now >= self._next_recover and self._role in WORKER_ROLES:
                # Jobs whose lease ran out (ours during a stall, or a dead worker's) go
                # back to pending.
                self._next_recover = now + self._recover_interval()
                held = self._leases.snapshot()
                if held:
                    # First our own leases, which may have run out while the database was
                    # away: recovery must not take back jobs this daemon is finishing.
                    self._queue.renew(self._owner, held)
                self._queue.recover(self._owner)
        except Exception as exc:  # noqa: BLE001 - the heartbeat must not break a wait
            self._heartbeat_failed(one_line(exc))
        else:
            if asks:
                self._heartbeat_failed(None)

    def _heartbeat_failed(self, problem: str | None) -> None:
        """One log line per change (a database outage is not a line per tick)."""
        if problem == self._heartbeat_problem:
            return
        if problem is None:
            log.info("heartbeat steps work again", was=self._heartbeat_problem)
        else:
            log.error("heartbeat step failed", error=problem, logged="once until it changes")
        self._heartbeat_problem = problem

    def _recover_interval(self) -> float:
        # A dead worker's jobs wait at most half a lease past its expiry for another worker.
        return min(RECOVER_INTERVAL_SECONDS, self.config.queue.lease_seconds / 2)

    def _stalled(self, now: float) -> bool:
        stage = self._stage
        if stage is None or now - stage[1] <= self.config.queue.lease_seconds:
            return False
        if not self._stall_logged:
            # No more watchdog pings or lease renewals: systemd restarts the daemon, and the
            # jobs are recovered.
            log.error(
                "stage hung",
                stage=stage[0],
                seconds=round(now - stage[1], 1),
            )
            self._stall_logged = True
        return True

    def _intake_stalled(self) -> bool:
        """Whether the watcher's intake is stuck (then the watchdog is not fed); the change
        either way is logged once."""
        watcher = self._watcher
        seconds = 0.0 if watcher is None else watcher.stalled_seconds()
        stalled = seconds > INTAKE_STALL_SECONDS
        if stalled and not self._intake_stall_logged:
            log.error(
                "intake stuck; watchdog no longer fed",
                step=watcher.current_step,
                seconds=round(seconds, 1),
                effect="systemd restarts the service (WatchdogSec)",
            )
        elif not stalled and self._intake_stall_logged:
            log.warning("intake moving again")
        self._intake_stall_logged = stalled
        return stalled

    def _status_text(self) -> str:
        if self._queue is None:
            return "starting"
        counts = self._queue.stats(details=False).counts
        text = ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in JobState)
        reason = self._storage.paused_reason
        return f"paused ({reason}); {text}" if reason else text

    # ---- reload

    def _do_reload(self) -> None:
        """SIGHUP, between batches: new configuration and model; a bad one keeps the old."""
        self._reload.clear()
        self._notifier.reloading()
        try:
            new = self._reloaded_config()
            if new is not None:
                self._apply(new)
        finally:
            self._notifier.ready(self._status_text() if self._notifier.enabled else None)

    def _reloaded_config(self) -> Config | None:
        source = self.config.source
        try:
            new = load_config(source)
            check_config(new)
            # Never created on reload: a missing watch folder is a typo or an unmounted
            # share, and a fresh local folder would hide either.
            prepare_folders(new, create_watch_folder=False)
        except (ConfigError, StartupError) as exc:
            log.error("reload refused", reason=str(exc), kept="the running configuration and model")
            return None
        restart_only = [
            name
            for name in ("queue", "daemon", "metrics")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if restart_only:
            log.warning("sections need a restart", sections=restart_only)
            new = dataclasses.replace(new, **{name: getattr(self.config, name) for name in restart_only})
        return new

    def _apply(self, new: Config) -> None:
        old = self.config
        if new.logging != old.logging:
            configure_logging(new.logging.level, new.logging.format)
        if self._compute is not None:  # a watcher has no model
            new = self._reload_model(new, old)
        self._layout = OutputLayout.of(new)
        self._styles = StyleFinder(new.watch.input_dir, new.engine.style)
        self._storage = self._storage.for_roots(new.watch.input_dir, new.output.dir)
        self.config = new
        if self._watch_root is not None and new.watch.input_dir != old.watch.input_dir:
            # Another folder, another lock: nothing watches the new folder before this daemon
            # holds its lock (another host may hold it); the next heartbeat step takes it.
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            self._queue.release_watch(self._watch_root, self._owner)
            self._watch_root = str(new.watch.input_dir.resolve())
            self._watch_holder = None
            self._next_watch = 0.0
        elif new.watch != old.watch or new.output.dir != old.output.dir:
            self._restart_watcher(new, old)
        log.info("configuration reloaded", source=str(new.source))

    def _reload_model(self, new: Config, old: Config) -> Config:
        """The new model, or the old one kept: returns `new` with the engine in use."""
        try:
            with self._staged("model reload"):
                colorizer = self._wait_result(self._compute.submit(load_colorizer, new))
        except _ShutdownTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - keep serving with the model we have
            log.error(
                "model reload failed",
                model=self._colorizer.model_name,
                sha256=self._colorizer.model_sha256,
                reason=str(exc) if isinstance(exc, StartupError) else one_line(exc),
            )
            new = dataclasses.replace(new, engine=old.engine)
        else:
            self._colorizer = colorizer
            log.info("model reloaded", **_model_fields(colorizer))
        return new

    def _restart_watcher(self, new: Config, old: Config) -> None:
        if self._watcher is None:
            return  # a worker, or a watcher waiting for the lock: it starts with `new`
        self._watcher.stop()
        try:
            self._watcher = self._start_watcher(new)
        except StartupError as exc:
            log.error("new watch settings refused", reason=str(exc), kept="the previous watch settings")
            self._watcher = self._start_watcher(old)

    # ---- shutdown

    def _shutdown(self, code: int) -> int:
        self._notifier.stopping("stopping")
        if self._watcher is not None:
            self._watcher.stop()
        try:
            if self._writes:
                with self._staged("final writes"):
                    self._wait(self._writes)
        except _ShutdownTimeout:
            code = EXIT_FAILURE
        leftover = self._leases.snapshot()
        if leftover:
            if code != 0:
                log.error(
                    "shutdown timeout passed",
                    shutdown_timeout=self.config.daemon.shutdown_timeout,
                )
            self._release_ids(leftover, "shutdown")
        if code == 0:
            for pool in (self._decoders, self._writers, self._compute):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        self._close()
        log.info("semwatch daemon stopped", exit_code=code)
        if code != 0:
            # Threads stuck in the network or on a dead share cannot be joined; leaving
            # now is what shutdown_timeout promises (their leases were released above).
            sys.stderr.flush()
            os._exit(code)
        return code

    def _say_goodbye(self) -> None:
        """A clean stop leaves no live heartbeat and no watch lock for others to wait out."""
        try:
            if self._watch_root is not None:
                self._queue.release_watch(self._watch_root, self._owner)
            self._queue.sign_off(self._owner)
        except QueueError as exc:
            log.warning("heartbeat row or watch lock not released", error=str(exc))

    def _abort_start(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        for pool in (self._decoders, self._writers, self._compute):
            if pool is not None:
                pool.shutdown(wait=False)
        self._close()

    def _close(self) -> None:
        self._metrics.close()  # first: scrapes read the queue
        if self._queue is not None:
            self._say_goodbye()
            self._queue.close()
            self._queue = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# --------------------------------------------------------------------------- start-up helpers


def check_config(cfg: Config) -> None:
    """Configuration problems a restart cannot fix -> StartupError(exit 78)."""
    where = f" (in {cfg.source})" if cfg.source else ""
    input_dir, output_dir = cfg.watch.input_dir.resolve(), cfg.output.dir.resolve()
    if input_dir == output_dir:
        raise StartupError(
            f"watch.input_dir and output.dir are the same folder {input_dir}"
            f"{where}; colorized files would be colorized again",
            EXIT_CONFIG,
        )
    db = sqlite_path(cfg.queue.database_url)
    if cfg.daemon.role != "all" and db is not None:
        raise StartupError(
            f"daemon.role = {cfg.daemon.role!r}{where} needs a PostgreSQL queue: a SQLite queue "
            'takes one daemon (role "all"); set queue.database_url = "postgresql://..."',
            EXIT_CONFIG,
        )
    model = cfg.engine.model
    if cfg.daemon.role == "watcher":
        pass  # a watcher only finds and queues files: no model on its host
    elif model is None:
        from semwatch.model import default_model_path

        if not default_model_path().is_file():
            raise StartupError(
                f"no model: engine.model is not set{where} and the bundled default model "
                f"({default_model_path()}) is not installed; set engine.model = "
                '"/path/to/generator.safetensors" in the [engine] section',
                EXIT_CONFIG,
            )
    elif not model.is_file():
        raise StartupError(f"{model}: model file not found (engine.model{where})", EXIT_CONFIG)
    try:
        check_sqlite_is_local(cfg.queue.database_url)
    except QueueError as exc:
        raise StartupError(f"{exc}{where}", EXIT_CONFIG) from None


def prepare_folders(cfg: Config, *, create_watch_folder: bool = True) -> None:
    """Create the watch, output and state folders when missing (first run from the repo).

    With ``create_watch_folder=False`` (a reload) a missing watch or output folder is a
    configuration error (exit 78) instead.
    """
    watch = cfg.watch.input_dir
    if not create_watch_folder:
        # A reload creates neither: a missing folder is a typo or an unmounted share, and a
        # fresh local folder would hide either.
        for key, what, folder in (
            ("watch.input_dir", "watch", watch),
            ("output.dir", "output", cfg.output.dir),
        ):
            if not folder.is_dir():
                where = f" ({key} in {cfg.source})" if cfg.source else f" ({key})"
                reason = "is not a folder" if folder.exists() else "does not exist"
                raise StartupError(
                    f"{folder}: {what} folder {reason}{where}; a reload does not create it", EXIT_CONFIG
                )
    for what, folder in (
        ("watch folder", watch),
        ("output folder", cfg.output.dir),
        ("state folder", cfg.daemon.state_dir),
    ):
        if folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"{folder}: cannot create the {what}: {exc.strerror or exc}") from None
        log.info("folder created", folder=what, path=str(folder))


def load_colorizer(cfg: Config) -> Colorizer:
    """The engine for cfg.engine; errors become one-line StartupErrors."""
    from semwatch.engine import Colorizer, EngineError
    from semwatch.model import ModelError

    started = time.monotonic()
    try:
        colorizer = Colorizer.from_config(cfg.engine)
    except ModelError as exc:
        raise StartupError(str(exc), EXIT_CONFIG) from None
    except EngineError as exc:
        # A GPU driver not loaded yet at boot may be there at the next start; a missing
        # package or a wrong setting will not.
        raise StartupError(str(exc), EXIT_FAILURE if exc.retryable else EXIT_CONFIG) from None
    log.info(
        "model loaded",
        **_model_fields(colorizer),
        chroma_size=colorizer.chroma_size,
        seconds=round(time.monotonic() - started, 2),
    )
    return colorizer


def _model_fields(colorizer: Colorizer) -> dict[str, str]:
    """How a log line names the model in use (start-up and reload say it alike)."""
    info = colorizer.info
    return {
        "model": info.model_name,
        "sha256": info.model_sha256,
        "backend": info.backend,
        "device": info.device,
    }


def _daemon_metrics(daemon: Daemon) -> DaemonMetrics:
    """The daemon's metrics; the sources read its queue and model when scraped."""

    def queue_stats() -> Any:
        queue = daemon._queue  # once: shutdown sets it to None
        if queue is None:
            raise RuntimeError("queue not open")
        # Counts and backlog age are all a scrape shows: not the latency median's rows.
        return queue.stats(details=False)

    def workers_alive() -> int:
        # From the heartbeat rows: every worker on this database, whichever host it runs on,
        # so a scrape of any one daemon (a watcher too) sees a dead worker fleet.
        queue = daemon._queue
        if queue is None:
            raise RuntimeError("queue not open")
        return queue.alive_workers()

    return DaemonMetrics(
        MetricSources(
            queue_stats=queue_stats,
            workers_alive=workers_alive,
            model=lambda: None if daemon._colorizer is None else ModelInfo.of(daemon._colorizer),
        )
    )


def _serve_metrics(metrics: DaemonMetrics, cfg: Config) -> None:
    """Start the /metrics server when [metrics] listen is set; a bind error is a StartupError."""
    address = cfg.metrics.address
    if address is None:
        return
    try:
        metrics.serve(address)
    except MetricsError as exc:
        where = f" in {cfg.source}" if cfg.source else ""
        raise StartupError(
            f"{exc} (metrics.listen{where})", EXIT_CONFIG if exc.config_error else EXIT_FAILURE
        ) from None


def _output_source(output: Path) -> dict[str, Any]:
    """The "source" record of an output's provenance ({} when there is none to read)."""
    try:
        record = read_provenance(output)
    except FileNotFoundError:
        return {}
    except (OSError, ImageError, ValueError) as exc:
        log.warning("output's provenance unreadable", output=str(output), error=one_line(exc))
        return {}
    source = (record or {}).get("semwatch", {}).get("source")
    return source if isinstance(source, dict) else {}


def _drop_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames an error's traceback holds (and its causes'):
    a failed decode's frames hold the whole file's bytes for as long as the error lives."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        pending += [exc.__cause__, exc.__context__]


def _ping_interval(watchdog_s: float | None) -> float | None:
    # systemd wants a ping at least every WatchdogSec; a quarter leaves room for a slow tick.
    return None if watchdog_s is None else max(watchdog_s / 4, 0.05)


def run_daemon(config: Config) -> int:
    """Entry point of `semwatch run` once the configuration is loaded; returns the exit code."""
    configure_logging(config.logging.level, config.logging.format)
    return Daemon(config).run()
