"""The main thread's pace: it only waits, in slices of at most ``TICK_SECONDS``, and between
slices feeds the systemd watchdog, renews leases, beats in the database, keeps its watch
lock, recovers expired jobs and publishes STATUS; it never blocks on the network or the disk.

A stage that runs longer than ``queue.lease_seconds`` is considered hung: the watchdog is
no longer fed (systemd restarts the daemon) and leases are no longer renewed (the
restarted daemon reclaims them). So is an intake that makes no progress for
``INTAKE_STALL_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from typing import Any

from semwatch.errors import one_line
from semwatch.log import get_logger
from semwatch.notify import Notifier
from semwatch.queue import HEARTBEAT_SECONDS, WORKER_ROLES, JobState, QueueError
from semwatch.service.runtime import Runtime

log = get_logger(__name__)

# Longest the main thread waits without feeding the watchdog and looking at its flags.
TICK_SECONDS = 0.5
STATUS_INTERVAL_SECONDS = 10.0
RECOVER_INTERVAL_SECONDS = 60.0
# The watcher's intake without progress for this long is stuck (a blocked open, a hung
# share): the watchdog is no longer fed, so systemd restarts the service. Progress comes with
# every folder entry walked and every MiB hashed, so a busy intake is never taken for stuck.
INTAKE_STALL_SECONDS = 120.0


class ShutdownTimeout(Exception):
    """shutdown_timeout passed while waiting for work in flight."""


class Pace:
    """How the main thread waits: stop, reload and wake flags, the stage it waits for, and
    ``tick`` (the heartbeat) between slices of at most ``TICK_SECONDS``."""

    def __init__(self, tick: Callable[[], None] = lambda: None) -> None:
        self.tick = tick
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        self.stop_deadline: float | None = None
        self.stage: tuple[str, float] | None = None  # (name, since: monotonic)
        self.stall_logged = False

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.wake.wait(min(remaining, TICK_SECONDS)):
                self.wake.clear()
                return
            self.tick()

    def wait(self, futures: Sequence[Future | None]) -> None:
        pending = {f for f in futures if f is not None}
        while pending:
            _done, pending = wait_futures(pending, timeout=TICK_SECONDS)
            self.tick()
            if pending and self.past_deadline():
                raise ShutdownTimeout

    def wait_stage(self, name: str, futures: Sequence[Future | None]) -> None:
        """``wait`` as stage ``name`` (what a hang is reported as); for the stages object."""
        with self.staged(name):
            self.wait(futures)

    def wait_result(self, future: Future) -> Any:
        self.wait([future])
        return future.result()

    def past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() > self.stop_deadline

    @contextmanager
    def staged(self, name: str) -> Iterator[None]:
        self.stage = (name, time.monotonic())
        try:
            yield
        finally:
            self.stage = None
            if self.stall_logged:
                log.warning("stalled stage finished after all", stage=name)
                self.stall_logged = False

    def stalled(self, now: float, limit: float) -> bool:
        """Whether the stage waited for has run longer than ``limit`` seconds (logged once)."""
        stage = self.stage
        if stage is None or now - stage[1] <= limit:
            return False
        if not self.stall_logged:
            # No more watchdog pings or lease renewals: systemd restarts the daemon, and the
            # jobs are recovered.
            log.error(
                "stage hung",
                stage=stage[0],
                seconds=round(now - stage[1], 1),
            )
            self.stall_logged = True
        return True


class Heartbeat:
    """Watchdog, lease renewal, STATUS, heartbeat row, watch lock and recovery, each when due;
    :meth:`tick` is called at least every ``TICK_SECONDS``."""

    def __init__(
        self,
        rt: Runtime,
        pace: Pace,
        notifier: Notifier,
        keep_watching: Callable[[], None],
        watchdog_every: float | None,
    ) -> None:
        self._rt = rt
        self._pace = pace
        self._notifier = notifier
        self._keep_watching = keep_watching
        self.watchdog_every = watchdog_every
        self.next_ping = 0.0
        self.next_renew = 0.0
        self.next_status = 0.0
        self.next_recover = 0.0
        self.next_beat = 0.0
        self.next_watch = 0.0
        self._intake_stall_logged = False
        self._problem: str | None = None
        self._state: str | None = None  # what failed() compares

    def started(self) -> None:
        """Start-up is done: the first recovery and beat are due an interval from now."""
        now = time.monotonic()
        self.next_recover = now + self.recover_interval()
        self.next_beat = now + HEARTBEAT_SECONDS

    def tick(self) -> None:
        rt = self._rt
        now = time.monotonic()
        if self._pace.stalled(now, rt.config.queue.lease_seconds):
            return
        # Whether this tick asks the database something (only such a tick tells whether an
        # outage is over).
        due = [self.next_renew, self.next_beat, self.next_watch]
        if rt.role in WORKER_ROLES:
            due.append(self.next_recover)
        asks = now >= min(due)
        try:
            if self.watchdog_every is not None and now >= self.next_ping and not self._intake_stalled():
                self._notifier.watchdog()
                self.next_ping = now + self.watchdog_every
            if now >= self.next_renew:
                self.next_renew = now + rt.config.queue.lease_seconds / 4
                held = rt.leases.snapshot()
                if held:
                    rt.jobs.renew(rt.owner, held)
            if self._notifier.enabled and now >= self.next_status:
                self.next_status = now + STATUS_INTERVAL_SECONDS
                self._notifier.status(self.status_text())
            if now >= self.next_beat:
                self.next_beat = now + HEARTBEAT_SECONDS
                rt.jobs.beat(rt.owner, rt.role)
            if now >= self.next_watch:
                self._keep_watching()
            if now >= self.next_recover and rt.role in WORKER_ROLES:
                # Jobs whose lease ran out (ours during a stall, or a dead worker's) go
                # back to pending.
                self.next_recover = now + self.recover_interval()
                held = rt.leases.snapshot()
                if held:
                    # First our own leases, which may have run out while the database was
                    # away: recovery must not take back jobs this daemon is finishing.
                    rt.jobs.renew(rt.owner, held)
                rt.jobs.recover(rt.owner)
        except QueueError as exc:
            # The database away is one state, whichever step met it (heartbeat, watch lock,
            # renewals take turns): not a line each time the failing step changes.
            self.failed(one_line(exc), state="queue database")
        except Exception as exc:  # noqa: BLE001 - the heartbeat must not break a wait
            self.failed(one_line(exc))
        else:
            if asks:
                self.failed(None)

    def failed(self, problem: str | None, state: str | None = None) -> None:
        """One log line per change of state (a database outage is not a line per tick);
        ``state``: what the problem is a case of, when its wording may vary."""
        state = state or problem
        if state == self._state:
            return
        if problem is None:
            log.info("heartbeat steps work again", was=self._problem)
        else:
            log.error("heartbeat step failed", error=problem, logged="once until it changes")
        self._problem, self._state = problem, state

    def recover_interval(self) -> float:
        # A dead worker's jobs wait at most half a lease past its expiry for another worker.
        return min(RECOVER_INTERVAL_SECONDS, self._rt.config.queue.lease_seconds / 2)

    def _intake_stalled(self) -> bool:
        """Whether the watcher's intake is stuck (then the watchdog is not fed); the change
        either way is logged once."""
        watcher = self._rt.watcher
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

    def status_text(self) -> str:
        queue = self._rt.queue
        if queue is None:
            return "starting"
        counts = queue.stats(details=False).counts
        text = ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in JobState)
        reason = self._rt.storage.paused_reason
        return f"paused ({reason}); {text}" if reason else text


def ping_interval(watchdog_s: float | None) -> float | None:
    # systemd wants a ping at least every WatchdogSec; a quarter leaves room for a slow tick.
    return None if watchdog_s is None else max(watchdog_s / 4, 0.05)
