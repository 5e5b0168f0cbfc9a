"""The storage guard: claiming pauses while the output (or input) storage cannot take work.

A full disk, an unmounted share or a folder that went read-only is not the images' fault:
their jobs are released with their attempts given back, and work resumes by itself once
the storage is usable again (DESIGN.md "Queue").
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from semwatch.errors import one_line
from semwatch.log import get_logger

log = get_logger(__name__)

# While output (or input) storage is unavailable, how often it is looked at again.
STORAGE_RECHECK_SECONDS = 10.0
# Writing needs headroom; below this much free space on the output filesystem we pause
# rather than fill the disk to the last byte (other programs on the host need it too).
MIN_FREE_BYTES = 200 * 2**20
# Write errors that mean "the output storage is unavailable", not "this image is bad".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


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
