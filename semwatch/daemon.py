"""`semwatch run`: the service's lifecycle, signals, reload and shutdown.

The parts it ties together live in :mod:`semwatch.service`: start-up checks and the model
load (``startup``), the storage guard (``storage``), the worker cycle (``worker``, which
drives the pipeline's stages, and ``writing``, ``outcomes``), the heartbeat and the
main thread's waiting (``heartbeat``) and the watch lock (``watching``); what they share is
one :class:`~semwatch.service.runtime.Runtime`.

Shutdown (SIGTERM/SIGINT): stop claiming; finish the batch being computed and every
pending write; release the leases of claimed jobs not started; exit 0. Past
``shutdown_timeout``, release what is left and exit non-zero. SIGHUP reloads the
configuration and model between batches; a bad one keeps the running ones.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from types import FrameType

from semwatch.config import EXIT_CONFIG, Config
from semwatch.daemon_lock import DaemonLock
from semwatch.dependencies import MissingPackage
from semwatch.errors import one_line
from semwatch.imaging import sweep_temp_files
from semwatch.log import configure_logging, get_logger
from semwatch.notify import Notifier, watchdog_interval
from semwatch.queue import WORKER_ROLES, QueueError, open_queue, redacted_url, sqlite_path
from semwatch.service.heartbeat import Heartbeat, Pace, ShutdownTimeout, ping_interval
from semwatch.service.outcomes import Outcomes
from semwatch.service.runtime import Runtime
from semwatch.service.startup import (
    EXIT_FAILURE,
    StartupError,
    check_config,
    load_colorizer,
    prepare_folders,
    reloaded_config,
    serve_metrics,
)
from semwatch.service.watching import WatchKeeper
from semwatch.service.worker import IDLE_POLL_SECONDS, Worker
from semwatch.service.writing import OutputWriter

log = get_logger(__name__)

# After an unexpected error in the loop itself: a pause, not a tight crash loop.
LOOP_ERROR_SLEEP_SECONDS = 5.0


class Daemon:
    """`semwatch run`: one instance per process; `run()` returns the exit code."""

    def __init__(
        self, config: Config, *, notifier: Notifier | None = None, env: dict[str, str] | None = None
    ) -> None:
        env = dict(os.environ if env is None else env)
        self.rt = Runtime(config)
        self._notifier = notifier if notifier is not None else Notifier.from_env(env)
        self.pace = Pace()
        self._lock: DaemonLock | None = None
        self.outcomes = Outcomes(self.rt, self.pace)
        # Outputs are written by a worker; a sidecar that settles later is copied beside
        # its image's output by a watcher too (the watcher thread calls it).
        self.writer = OutputWriter(self.rt, self.outcomes)
        self.worker: Worker | None = None  # a worker role's, from start-up on
        self.watching = WatchKeeper(
            self.rt,
            on_enqueued=lambda n: self.pace.wake.set(),
            on_sidecar=self.writer.sidecar_settled,
            renewed=self._watch_due,
        )
        self.heartbeat = Heartbeat(
            self.rt, self.pace, self._notifier, self.watching.keep, ping_interval(watchdog_interval(env))
        )
        self.pace.tick = self.heartbeat.tick

    @property
    def config(self) -> Config:
        return self.rt.config

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
        except ShutdownTimeout:
            code = EXIT_FAILURE
        finally:
            code = self._shutdown(code)
        return code

    def request_stop(self, reason: str = "requested") -> None:
        pace = self.pace
        if pace.stop.is_set():
            # A second Ctrl-C/SIGTERM: do not wait for the batch any longer.
            pace.stop_deadline = time.monotonic()
            log.warning("second stop request", reason=reason, giving_up="work in flight")
        else:
            pace.stop_deadline = time.monotonic() + self.config.daemon.shutdown_timeout
            log.info(
                "stopping",
                reason=reason,
                shutdown_timeout=self.config.daemon.shutdown_timeout,
            )
            pace.stop.set()
        pace.wake.set()

    def request_reload(self) -> None:
        log.info("reload requested", when="after this batch")
        self.pace.reload.set()
        self.pace.wake.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded use (tests): the caller drives request_stop()
        signal.signal(signal.SIGTERM, lambda s, f: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda s, f: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()

    def _start(self) -> None:
        cfg, rt = self.config, self.rt
        check_config(cfg)
        prepare_folders(cfg)
        working = rt.role in WORKER_ROLES
        try:
            if sqlite_path(cfg.queue.database_url) is not None:
                # One daemon per SQLite database; a server database takes any number.
                self._lock = DaemonLock(cfg.queue, cfg.daemon.state_dir)
                self._lock.acquire()
            rt.queue = open_queue(cfg.queue)
            recovered = rt.queue.recover(rt.owner) if working else 0
            rt.queue.beat(rt.owner, rt.role)
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
            role=rt.role,
            recovered_jobs=recovered,
            temp_files_swept=swept,
            owner_pid=rt.owner.pid,
        )
        serve_metrics(rt.metrics, cfg)
        if working:
            rt.colorizer = load_colorizer(cfg)
            self.worker = Worker(rt, self.pace, self.outcomes, self.writer)
        self._notifier.ready(self.heartbeat.status_text() if self._notifier.enabled else None)
        self.heartbeat.started()
        self.watching.keep()
        log.info(
            "semwatch daemon ready",
            role=rt.role,
            input=str(cfg.watch.input_dir),
            output=str(cfg.output.dir),
            batch_size=cfg.engine.batch_size,
            watchdog_ping_s=self.heartbeat.watchdog_every,
        )

    def _watch_due(self, when: float) -> None:
        self.heartbeat.next_watch = when

    # ---- main loop

    def _loop(self) -> None:
        pace = self.pace
        while not pace.stop.is_set():
            try:
                self.heartbeat.tick()
                if pace.reload.is_set():
                    self._do_reload()
                if self.worker is None:
                    pace.sleep(IDLE_POLL_SECONDS)  # a watcher's work is on its own threads
                    continue
                pause = self.worker.run_once()
                if pause:
                    pace.sleep(pause)
            except ShutdownTimeout:
                raise
            except Exception:
                log.exception(
                    "daemon loop error",
                    pause_seconds=LOOP_ERROR_SLEEP_SECONDS,
                )
                if self.worker is not None:
                    self.worker.after_loop_error()
                pace.sleep(LOOP_ERROR_SLEEP_SECONDS)
        if self.worker is not None:
            self.worker.release_carry("shutdown: claimed, not started")

    # ---- reload

    def _do_reload(self) -> None:
        """SIGHUP, between batches: new configuration and model; a bad one keeps the old."""
        self.pace.reload.clear()
        self._notifier.reloading()
        try:
            new = reloaded_config(self.config)
            if new is not None:
                self._apply(new)
        finally:
            self._notifier.ready(self.heartbeat.status_text() if self._notifier.enabled else None)

    def _apply(self, new: Config) -> None:
        old = self.config
        if new.logging != old.logging:
            configure_logging(new.logging.level, new.logging.format)
        if self.worker is not None:  # a watcher has no model
            new = self._reload_model(new, old)
        self.rt.reconfigure(new)
        self.watching.reloaded(new, old)
        log.info("configuration reloaded", source=str(new.source))

    def _reload_model(self, new: Config, old: Config) -> Config:
        """The new model, or the old one kept: returns `new` with the engine in use."""
        rt = self.rt
        try:
            colorizer = self.worker.stages.compute("model reload", load_colorizer, new)
        except ShutdownTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - keep serving with the model we have
            log.error(
                "model reload failed",
                model=rt.colorizer.model_name,
                sha256=rt.colorizer.model_sha256,
                reason=str(exc) if isinstance(exc, StartupError) else one_line(exc),
            )
            new = dataclasses.replace(new, engine=old.engine)
        else:
            rt.colorizer = colorizer
            log.info("model reloaded", **colorizer.info.log_fields())
        return new

    # ---- shutdown

    def _shutdown(self, code: int) -> int:
        self._notifier.stopping("stopping")
        if self.rt.watcher is not None:
            self.rt.watcher.stop()
        try:
            if self.worker is not None and self.worker.stages.writing:
                self.worker.stages.drain("final writes")
        except ShutdownTimeout:
            code = EXIT_FAILURE
        leftover = self.rt.leases.snapshot()
        if leftover:
            if code != 0:
                log.error(
                    "shutdown timeout passed",
                    shutdown_timeout=self.config.daemon.shutdown_timeout,
                )
            self.outcomes.release(leftover, "shutdown")
        if code == 0 and self.worker is not None:
            self.worker.close(wait=True)
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
            self.watching.release()
            self.rt.jobs.sign_off(self.rt.owner)
        except QueueError as exc:
            log.warning("heartbeat row or watch lock not released", error=str(exc))

    def _abort_start(self) -> None:
        if self.rt.watcher is not None:
            self.rt.watcher.stop()
        if self.worker is not None:
            self.worker.close(wait=False)
        self._close()

    def _close(self) -> None:
        self.rt.metrics.close()  # first: scrapes read the queue
        if self.rt.queue is not None:
            self._say_goodbye()
            self.rt.queue.close()
            self.rt.queue = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def run_daemon(config: Config) -> int:
    """Entry point of `semwatch run` once the configuration is loaded; returns the exit code."""
    configure_logging(config.logging.level, config.logging.format)
    return Daemon(config).run()
