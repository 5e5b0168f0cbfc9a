"""File arrival: watchdog events are hints, a periodic reconciliation scan is the truth.

A path becomes a *candidate* when an event names it or a scan finds it new or changed
against the queue's (rel_path, size, mtime). A candidate is *ready* once its size and
mtime stayed the same for ``settle_seconds`` measured on this host's monotonic clock (the
microscope PC's clock may be skewed, so mtime is only ever compared for equality). Only
ready files are hashed; a hash equal to the path's latest known content is a touch, not a
job. Sidecar metadata files (``sidecars``: `x.txt` beside `x.tif`) settle the same way but are
never jobs: once ready they are handed to ``on_sidecar``. The watched folder is only ever read.

One file never holds up the others: whatever goes wrong on one file's way to the queue
(a name that is not UTF-8, a file that cannot be read, any unexpected error) is logged and
recorded as that file's failure, which `semwatch status` shows; only a database error
stops the pass (it is retried with back-off).

Files are opened only through one descriptor each, without blocking (a FIFO swapped in for
a settled file cannot hang the intake), never through a symlink leading out of the root,
and checked with fstat to be the regular file that settled. The worker thread reports its
progress (each folder entry walked, each file settled, each MiB hashed): a pass that makes
none for long is a stuck intake, and the daemon stops feeding systemd's watchdog.

Observers and handlers are split as watchdog intends: `_CandidateMarker` only marks paths;
whether inotify or polling (SMB/NFS deliver no inotify events) feeds it is decided in one
line of `Watcher._start_observer`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from structlog.typing import FilteringBoundLogger
from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from semwatch.config import WatchConfig
from semwatch.errors import one_line
from semwatch.hashing import sha256_fd
from semwatch.imaging.errors import ImageError
from semwatch.imaging.source import open_regular
from semwatch.log import get_logger
from semwatch.paths import same_folder
from semwatch.queue import Intake, QueueError
from semwatch.walk import WalkItem, WatchRules, walk

# Jobs are handed to the queue in slices so the daemon can start on the first files of a
# large batch (a share with thousands of unprocessed files) while the rest are hashed.
ENQUEUE_SLICE = 100
MAX_BACKOFF_SECONDS = 60.0
INOTIFY_LIMIT_HINT = "set watch.polling = true or raise fs.inotify.max_user_watches"
OBSERVER_JOIN_SECONDS = 5.0

EnqueueRecord = tuple[str, str, int, float, float]  # rel_path, sha256, size, mtime, arrived_at


class WatcherError(RuntimeError):
    """The watch folder cannot be watched (message names the folder and the reason)."""


@dataclass(frozen=True)
class ScanResult:
    files_seen: int  # matching regular files under the root
    candidates: int  # of those, new or changed against the queue (to be settled and hashed)
    seconds: float


@dataclass(slots=True)
class _Candidate:
    size: int
    mtime: float
    stable_since: float  # this host's monotonic clock
    arrived_at: float  # wall clock, when first noticed (for latency figures)


def printable_name(rel: str) -> str:
    """A path (or a message quoting one) as it can be stored and shown: bytes that are not
    UTF-8 as \\xNN escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def name_problem(rel: str) -> str | None:
    """Why a path cannot be queued under its own name (None: it can)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (shown with \\x escapes); rename the file"
    return None


class _CandidateMarker(FileSystemEventHandler):
    """Forwards file and directory paths from watchdog events; decides nothing itself."""

    def __init__(self, on_file: Callable[[str], None], on_dir: Callable[[str], None]) -> None:
        super().__init__()
        self._on_file = on_file
        self._on_dir = on_dir
        self._log = get_logger(__name__)

    def on_created(self, event: DirCreatedEvent | FileCreatedEvent) -> None:
        self._route(event.src_path, event.is_directory)

    def on_modified(self, event: DirModifiedEvent | FileModifiedEvent) -> None:
        # A directory's mtime changes whenever an entry is added; its files get their own events.
        if not event.is_directory:
            self._route(event.src_path, False)

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        self._route(event.dest_path, event.is_directory)

    def on_closed(self, event: FileClosedEvent) -> None:
        # inotify's close-after-write: the writer is probably done; settle still decides.
        self._route(event.src_path, False)

    def _route(self, path: bytes | str, is_directory: bool) -> None:
        # An exception escaping here would kill watchdog's dispatcher thread for good.
        try:
            (self._on_dir if is_directory else self._on_file)(os.fsdecode(path))
        except Exception:
            self._log.exception("watch event handling failed", path=os.fsdecode(path))


class Watcher:
    """Turns files arriving under ``cfg.input_dir`` into queue jobs, once each is complete."""

    def __init__(
        self,
        cfg: WatchConfig,
        queue: Intake,
        *,
        output_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_enqueued: Callable[[int], None] | None = None,
        sidecars: Iterable[str] = (),
        on_sidecar: Callable[[str], None] | None = None,
    ) -> None:
        if not cfg.patterns:
            raise ValueError(f"{cfg.input_dir}: watch.patterns is empty, no file would ever be picked up")
        self._cfg = cfg
        self._queue = queue
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_enqueued = on_enqueued
        # Sidecar suffixes are never jobs, whatever the patterns say; they are watched only
        # when someone takes them (on_sidecar, called from the worker thread with rel_path).
        self.rules = WatchRules(cfg.input_dir, cfg.patterns, cfg.recursive, output_dir, frozenset(sidecars))
        problem = None if output_dir is None else same_folder(cfg.input_dir, output_dir)
        if problem is not None:
            raise ValueError(problem)
        self._root = str(self.rules.root)
        self._on_sidecar = on_sidecar
        self._tick = max(0.05, min(1.0, cfg.settle_seconds / 4))

        self._lock = threading.Lock()  # guards the three collections below
        self._candidates: dict[str, _Candidate] = {}
        self._pending_dirs: set[str] = set()
        # (size, mtime) of files already hashed and resolved since the last full scan. Late
        # duplicate events (close after modify, a slow poller) then cost a dict lookup, not a
        # re-hash, and a queue whose record lags behind cannot make a file be hashed on every
        # scan. Full scans drop the entries the queue's records agree with.
        self._resolved: dict[str, tuple[int, float]] = {}

        self._handler = _CandidateMarker(self._on_file_event, self._on_dir_event)
        self._observer_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._root_missing = False
        # Progress of the worker thread (see stalled_seconds); plain assignments, read by
        # the daemon's main thread.
        self._busy = False
        self._progress_at = clock()
        self._step = ""

    @property
    def _log(self) -> FilteringBoundLogger:
        # Bound per call: binding once would freeze the structlog configuration in force
        # when the watcher was built (the daemon may configure logging afterwards).
        return get_logger(__name__).bind(root=self._root)

    # ----------------------------------------------------------------- public API

    @property
    def root(self) -> Path:
        return Path(self._root)

    def start(self) -> None:
        """Start the observer and the worker thread (start-up scan, settling, re-scans)."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        if not os.path.isdir(self._root):
            reason = "is not a directory" if os.path.exists(self._root) else "does not exist"
            raise WatcherError(f"{self._root}: watch folder {reason}")
        self._stopping.clear()
        self._start_observer()
        self._thread = threading.Thread(target=self._run, name="semwatch-watcher", daemon=True)
        self._thread.start()
        self._log.info(
            "watching",
            polling=self._cfg.polling,
            recursive=self._cfg.recursive,
            settle_seconds=self._cfg.settle_seconds,
            scan_interval=self._cfg.scan_interval,
        )

    def stop(self, timeout: float = 10) -> None:
        """Stop observing and let the worker finish the file in hand (up to `timeout` s)."""
        self._stopping.set()
        self._stop_observer(timeout)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._log.warning("watcher thread still busy", timeout=timeout)

    def scan(self) -> ScanResult:
        """One reconciliation pass: every new or changed file under the root becomes a candidate."""
        started = self._clock()
        if not self._root_available():
            return ScanResult(0, 0, self._clock() - started)
        known = self._queue.known_files()
        with self._lock:
            resolved = dict(self._resolved)
        seen = changed = 0
        errors: list[str] = []
        still_resolved: set[str] = set()
        self._progress("scan")
        for rel, size, mtime in self._walk(self._root, errors):
            self._progress()
            seen += 1
            key = (size, mtime)
            if known.get(rel) == key:
                continue
            if resolved.get(rel) == key:
                still_resolved.add(rel)
                continue
            changed += 1
            self._mark(rel, key)
        if not errors:
            self._prune_resolved(still_resolved)
        result = ScanResult(seen, changed, self._clock() - started)
        log = self._log.info if changed or errors else self._log.debug
        log(
            "scan done",
            files_seen=seen,
            candidates=changed,
            unreadable_dirs=len(errors),
            seconds=round(result.seconds, 3),
        )
        return result

    def process_ready(self) -> int:
        """Settle-check the due candidates; hash and enqueue the settled. Returns jobs enqueued."""
        now = self._clock()
        with self._lock:
            due = [
                (rel, c.size, c.mtime, c.arrived_at)
                for rel, c in self._candidates.items()
                if now - c.stable_since >= self._cfg.settle_seconds
            ]
        enqueued = 0
        batch: list[EnqueueRecord] = []
        for rel, size, mtime, arrived_at in due:
            if self._stopping.is_set():
                break
            self._progress(f"settling {printable_name(rel)}")
            record = self._settle_safely(rel, (size, mtime), arrived_at)
            if record is not None:
                batch.append(record)
            if len(batch) >= ENQUEUE_SLICE:
                enqueued += self._enqueue(batch)
                batch = []
        return enqueued + self._enqueue(batch)

    def recheck(self, rel: str) -> None:
        """Look at a file again at the next scan although it has not changed (a sidecar
        whose copy failed for want of room is then handed over anew)."""
        with self._lock:
            self._resolved.pop(rel, None)

    def is_ignored(self, path: Path) -> bool:
        """True for anything that must never become a job (see DESIGN.md "Arrival detection")."""
        return self.rules.is_ignored(path)

    def relpath(self, path: Path) -> str | None:
        """POSIX path relative to the root, or None outside it (see WatchRules.relpath)."""
        return self.rules.relpath(path)

    @property
    def observer(self) -> BaseObserver | None:
        """The running watchdog observer (None before start or while events are unavailable)."""
        return self._observer

    def stalled_seconds(self) -> float:
        """How long the worker thread has been inside a pass without progress (0 while it
        waits between passes); a thread that died counts from its last progress."""
        thread = self._thread
        if thread is None or self._stopping.is_set():
            return 0.0
        if self._busy or not thread.is_alive():
            return max(self._clock() - self._progress_at, 0.0)
        return 0.0

    @property
    def current_step(self) -> str:
        """What the worker thread was doing at its last progress (for the stuck-intake log)."""
        return self._step

    def _progress(self, step: str | None = None) -> None:
        self._progress_at = self._clock()
        if step is not None:
            self._step = step

    @property
    def candidate_count(self) -> int:
        with self._lock:
            return len(self._candidates)

    # ------------------------------------------------------------ worker thread

    def _run(self) -> None:
        next_scan = self._clock()  # the start-up scan: files that arrived while we were down
        failures = 0
        database_down = False
        while not self._stopping.is_set():
            self._busy = True
            self._progress("pass")
            try:
                if self._clock() >= next_scan:
                    self.scan()
                    self._heal_observer()
                    next_scan = self._clock() + self._cfg.scan_interval
                self._scan_pending_dirs()
                self.process_ready()
                if database_down:
                    self._log.info("watcher passes work again: the queue database answers", failures=failures)
                    database_down = False
                failures = 0
            except QueueError as exc:
                failures += 1
                # A database outage is one state: one line when it begins, one when it ends
                # (not a traceback per retry); what is not yet queued is found by the next pass.
                if not database_down:
                    self._log.error(
                        "watcher pass failed: the queue database does not answer; retried with back-off",
                        error=one_line(exc),
                        logged="once until it answers",
                    )
                    database_down = True
            except Exception:
                failures += 1
                self._log.exception("watcher pass failed", consecutive_failures=failures)
            finally:
                self._busy = False
            self._stopping.wait(self._delay(failures))

    def _delay(self, failures: int) -> float:
        # A database that is down must not turn into a log line per tick for hours.
        if failures == 0:
            return self._tick
        return min(MAX_BACKOFF_SECONDS, self._tick * 2 ** min(failures, 16))

    def _scan_pending_dirs(self) -> None:
        with self._lock:
            dirs, self._pending_dirs = self._pending_dirs, set()
        for rel in sorted(dirs):
            folder = self.rules.abspath(rel)
            if os.path.realpath(folder) != folder:
                continue  # a symlinked folder (or one on the way): never entered
            # A folder copied in as a whole: its files may predate the folder's own watch.
            # Its paths are new, so there is no queue record to compare with; hashing decides.
            for file_rel, size, mtime in self._walk(folder, []):
                self._progress()
                self._mark_unless_resolved(file_rel, (size, mtime))

    # ------------------------------------------------------------- settle + hash

    def _settle_safely(self, rel: str, key: tuple[int, float], arrived_at: float) -> EnqueueRecord | None:
        """`_settle_one`, with any error but the database's made this one file's problem."""
        try:
            return self._settle_one(rel, key, arrived_at)
        except QueueError:
            raise  # the database, not the file: the whole pass backs off and retries
        except Exception as exc:  # noqa: BLE001 - one file must not stop the intake
            self._file_failed(rel, key, exc)
            return None

    def _settle_one(self, rel: str, key: tuple[int, float], arrived_at: float) -> EnqueueRecord | None:
        path = self.rules.abspath(rel)
        # Events may name a path through a symlinked folder (the polling observer follows
        # them); such a file is either outside the root or already known by its real name.
        current = self._stat_key(path) if self.relpath(Path(path)) == rel else None
        if current != key:
            self._restart_or_drop(rel, current)
            return None
        problem = name_problem(rel)
        if problem is not None:
            self._record_failure(rel, key, problem)
            self._forget(rel, key)  # a rename is a new path; this one cannot change
            return None
        if self.rules.is_sidecar(rel):
            self._settle_sidecar(rel, key)
            return None
        try:
            sha256 = self._hash(rel, path, key)
        except FileNotFoundError:
            self._restart_or_drop(rel, None)
            return None
        except ImageError as exc:  # a symlink leading out swapped in: never followed
            self._log.warning("file not hashed", path=printable_name(rel), reason=exc.reason)
            self._restart_or_drop(rel, self._stat_key(path))
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink swapped in after the check: not followed
                self._log.warning(
                    "file not hashed", path=printable_name(rel), reason="became a symbolic link"
                )
                self._restart_or_drop(rel, self._stat_key(path))
                return None
            # Looked at again at every scan (permissions may be fixed without a new mtime).
            self._record_failure(rel, key, f"cannot read: {exc.strerror or exc}")
            self._restart_or_drop(rel, None)
            return None
        after = self._stat_key(path)
        if sha256 is None or after != key:  # changed (content or kind) while we looked: settle again
            self._restart_or_drop(rel, after)
            return None
        if sha256 == self._queue.latest_sha256(rel):
            self._queue.note_unchanged(rel, *key)
            self._log.debug("touched, content unchanged", path=rel)
            self._forget(rel, key)
            return None
        return (rel, sha256, key[0], key[1], arrived_at)

    def _hash(self, rel: str, path: str, key: tuple[int, float]) -> str | None:
        """SHA-256 of the settled file, through one descriptor opened without blocking and
        without following a symlink out of the root; None when fstat shows that it is no
        longer the regular file that settled (a FIFO or device swapped in is never read)."""
        fd = open_regular(Path(path), self.rules.root)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self._log.warning(
                    "file not hashed",
                    path=printable_name(rel),
                    reason="no longer a regular file (swapped for a FIFO, device or socket?)",
                )
                return None
            if (before.st_size, before.st_mtime) != key:
                return None
            sha256 = sha256_fd(fd, on_chunk=self._progress)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        return sha256 if (after.st_size, after.st_mtime) == key else None

    def _settle_sidecar(self, rel: str, key: tuple[int, float]) -> None:
        try:
            self._on_sidecar(rel)
        except OSError as exc:  # a full disk, an output share gone: one line, no traceback
            self._log.warning("sidecar not copied", path=rel, error=one_line(exc), retry="at the next scan")
            self._restart_or_drop(rel, None)
            return
        except Exception:
            # Not resolved: the next scan finds it again and retries.
            self._log.exception("sidecar handling failed", path=rel, retry="at the next scan")
            self._restart_or_drop(rel, None)
            return
        self._forget(rel, key)

    def _record_failure(self, rel: str, key: tuple[int, float], reason: str) -> None:
        """Shown by `semwatch status` as a failed job; logged when new, not at every scan."""
        name, reason = printable_name(rel), printable_name(reason)  # messages may quote the name
        if self._queue.record_failure(name, key[0], key[1], reason):
            self._log.warning("file not queued", path=name, reason=reason)
        else:
            self._log.debug("file still not queued", path=name, reason=reason)

    def _file_failed(self, rel: str, key: tuple[int, float], exc: Exception) -> None:
        self._log.error("unexpected error with one file", path=printable_name(rel), exc_info=exc)
        self._record_failure(rel, key, f"cannot queue: {type(exc).__name__}: {exc}")
        self._forget(rel, key)  # not again until the file changes

    def _enqueue(self, batch: list[EnqueueRecord]) -> int:
        if not batch:
            return 0
        n = self._enqueue_isolated(batch)
        for rel, _sha, size, mtime, _arrived in batch:
            self._forget(rel, (size, mtime))
        self._log.info("enqueued", jobs=n, settled=len(batch))
        if n and self._on_enqueued is not None:
            try:
                self._on_enqueued(n)
            except Exception:
                self._log.exception("on_enqueued callback failed", jobs=n)
        return n

    def _enqueue_isolated(self, batch: list[EnqueueRecord]) -> int:
        """enqueue_many; when a record (not the database) breaks it, each record alone, so
        one bad record does not keep the others out."""
        try:
            return self._queue.enqueue_many(batch)
        except QueueError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(batch) == 1:
                rel, _sha, size, mtime, _arrived = batch[0]
                self._file_failed(rel, (size, mtime), exc)
                return 0
        return sum(self._enqueue_isolated([record]) for record in batch)

    # ------------------------------------------------------------- candidates

    def _mark(self, rel: str, key: tuple[int, float]) -> None:
        with self._lock:
            candidate = self._candidates.get(rel)
            if candidate is None:
                self._candidates[rel] = _Candidate(key[0], key[1], self._clock(), self._wall_clock())
            elif (candidate.size, candidate.mtime) != key:
                candidate.size, candidate.mtime = key
                candidate.stable_since = self._clock()

    def _mark_unless_resolved(self, rel: str, key: tuple[int, float]) -> None:
        with self._lock:
            if self._resolved.get(rel) == key:
                return
        self._mark(rel, key)

    def _restart_or_drop(self, rel: str, key: tuple[int, float] | None) -> None:
        if key is None:
            with self._lock:
                self._candidates.pop(rel, None)
            self._log.debug("candidate gone", path=rel)
        else:
            self._mark(rel, key)

    def _forget(self, rel: str, key: tuple[int, float]) -> None:
        """The file at `key` is resolved; keep the candidate only if an event moved it on."""
        with self._lock:
            candidate = self._candidates.get(rel)
            if candidate is not None and (candidate.size, candidate.mtime) == key:
                del self._candidates[rel]
            self._resolved[rel] = key

    def _prune_resolved(self, still_resolved: set[str]) -> None:
        with self._lock:
            self._resolved = {rel: key for rel, key in self._resolved.items() if rel in still_resolved}

    # ---------------------------------------------------------------- events

    def _on_file_event(self, path: str) -> None:
        rel = self.rules.rel_of(path)
        if rel is None or self.rules.ignored_name(rel, self._watched_name):
            return
        key = self._stat_key(path)
        if key is not None:
            self._mark_unless_resolved(rel, key)

    def _on_dir_event(self, path: str) -> None:
        rel = self.rules.rel_of(path)
        if rel is None or not self._cfg.recursive or self.rules.ignored_dir(rel):
            return
        with self._lock:
            self._pending_dirs.add(rel)

    # ------------------------------------------------------------- observer

    def _start_observer(self) -> None:
        cfg = self._cfg
        # The one place where local disks and network shares differ.
        observer = PollingObserver(timeout=cfg.poll_interval) if cfg.polling else Observer()
        observer.schedule(self._handler, self._root, recursive=cfg.recursive)
        with self._observer_lock:
            if self._stopping.is_set():
                return
            try:
                observer.start()
            except OSError as exc:
                # Scans still find every file, only later; the next scan tries again.
                limit = exc.errno in (errno.ENOSPC, errno.EMFILE)
                self._log.error(
                    "file events unavailable",
                    reason=exc.strerror or str(exc),
                    hint=INOTIFY_LIMIT_HINT if limit else None,
                )
                return
            self._observer = observer

    def _stop_observer(self, timeout: float) -> None:
        with self._observer_lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(min(timeout, OBSERVER_JOIN_SECONDS))

    def _observer_healthy(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = observer.emitters
        return bool(emitters) and all(e.is_alive() for e in emitters)

    def _heal_observer(self) -> None:
        """Re-arm events after the root vanished and came back (emitters stop on its deletion)."""
        if self._stopping.is_set() or self._observer_healthy() or not os.path.isdir(self._root):
            return
        self._log.warning("restarting the file event observer")
        self._stop_observer(OBSERVER_JOIN_SECONDS)
        self._start_observer()

    # ------------------------------------------------------------- file system

    def _root_available(self) -> bool:
        available = os.path.isdir(self._root)
        if not available and not self._root_missing:
            self._log.warning("watch folder unavailable", hint="share unmounted?")
        elif available and self._root_missing:
            self._log.info("watch folder available again")
        self._root_missing = not available
        return available

    def _walk(self, top: str, errors: list[str]) -> Iterator[WalkItem]:
        """(rel_path, size, mtime) of every watched regular file under ``top``."""
        return walk(self.rules, top, accept=self._watched_name, unreadable=errors)

    def _stat_key(self, path: str) -> tuple[int, float] | None:
        st = self.rules.regular_stat(path)
        return None if st is None else (st.st_size, st.st_mtime)

    # ------------------------------------------------------------- names

    def _watched_name(self, name: str) -> bool:
        """A name that becomes a candidate: a job's, or a sidecar's when one is taken."""
        if self._on_sidecar is not None and self.rules.is_sidecar(name):
            return not self.rules.is_temporary(name)
        return self.rules.wanted_name(name)
