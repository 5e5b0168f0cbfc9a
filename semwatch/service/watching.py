"""The watch lock: one watcher per input folder, across hosts (DESIGN.md "Roles").

This daemon takes or renews its folder's lock in the database every
``WATCH_RENEW_SECONDS`` (from the heartbeat) and runs its watcher only while it holds it; a
watcher on another host takes over once the lock is ``WATCH_LOCK_SECONDS`` old (on this
host, at once when the holder's process is gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from semwatch.config import Config
from semwatch.log import get_logger
from semwatch.queue import Owner
from semwatch.service.runtime import Runtime
from semwatch.service.startup import StartupError

if TYPE_CHECKING:
    from semwatch.watcher import Watcher

log = get_logger(__name__)

WATCH_LOCK_SECONDS = 30.0
WATCH_RENEW_SECONDS = 5.0


class WatchKeeper:
    """Holds this daemon's watch lock and runs its watcher to match (``rt.watcher``)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        on_enqueued: Callable[[int], None],
        on_sidecar: Callable[[str], None],
        renewed: Callable[[float], None],
    ) -> None:
        self._rt = rt
        self._on_enqueued = on_enqueued
        self._on_sidecar = on_sidecar
        self._renewed = renewed  # tells the heartbeat when the lock is due again
        # The input folder's key in the watch lock (None: this daemon does not watch).
        self.root = None if rt.role == "worker" else str(rt.config.watch.input_dir.resolve())
        self._holder: Owner | None = None  # the other watcher we wait for

    def keep(self) -> None:
        """Take or renew this daemon's watch lock; start or stop its watcher to match."""
        if self.root is None:
            return
        rt = self._rt
        self._renewed(time.monotonic() + WATCH_RENEW_SECONDS)
        holder = rt.jobs.hold_watch(self.root, rt.owner, WATCH_LOCK_SECONDS)
        if holder is None:
            if rt.watcher is None:
                rt.watcher = self.start_watcher(rt.config)
            self._holder = None
            return
        if rt.watcher is not None:
            log.warning("watch lock lost; stopped watching", root=self.root, holder_host=holder.host)
            rt.watcher.stop()
            rt.watcher = None
        if holder != self._holder:
            log.info(
                "input folder watched by another watcher; waiting to take over",
                root=self.root,
                holder_host=holder.host,
                holder_pid=holder.pid,
            )
            self._holder = holder

    def start_watcher(self, cfg: Config) -> Watcher:
        from semwatch.watcher import Watcher, WatcherError

        rt = self._rt
        watcher = Watcher(
            cfg.watch,
            rt.jobs,
            output_dir=cfg.output.dir,
            on_enqueued=self._on_enqueued,
            sidecars=cfg.output.sidecars,
            on_sidecar=self._on_sidecar,
            # Arrival times on the queue's clock, as the finish times: latency across hosts.
            wall_clock=rt.jobs.now,
        )
        try:
            watcher.start()
        except WatcherError as exc:
            raise StartupError(str(exc)) from None
        return watcher

    def reloaded(self, new: Config, old: Config) -> None:
        """After ``rt.config`` became ``new``: follow a changed folder or watch settings."""
        rt = self._rt
        if self.root is not None and new.watch.input_dir != old.watch.input_dir:
            # Another folder, another lock: nothing watches the new folder before this daemon
            # holds its lock (another host may hold it); the next heartbeat step takes it.
            self.stop()
            rt.jobs.release_watch(self.root, rt.owner)
            self.root = str(new.watch.input_dir.resolve())
            self._holder = None
            self._renewed(0.0)
        elif new.watch != old.watch or new.output.dir != old.output.dir:
            self._restart(new, old)

    def _restart(self, new: Config, old: Config) -> None:
        rt = self._rt
        if rt.watcher is None:
            return  # a worker, or a watcher waiting for the lock: it starts with `new`
        rt.watcher.stop()
        try:
            rt.watcher = self.start_watcher(new)
        except StartupError as exc:
            log.error("new watch settings refused", reason=str(exc), kept="the previous watch settings")
            rt.watcher = self.start_watcher(old)

    def stop(self) -> None:
        if self._rt.watcher is not None:
            self._rt.watcher.stop()
            self._rt.watcher = None

    def release(self) -> None:
        """Give the lock up (a clean stop: no one waits it out)."""
        if self.root is not None:
            self._rt.jobs.release_watch(self.root, self._rt.owner)
