"""One daemon per database: the lock file the daemon holds while it runs."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType

from semwatch.config import QueueConfig
from semwatch.log import get_logger
from semwatch.queue import QueueError, redacted_url, sqlite_path

log = get_logger(__name__)


class DaemonLock:
    """One daemon per database: an flock on a file next to the SQLite database (or, for a
    server database, in the state folder). The kernel drops the lock when the holder dies."""

    def __init__(self, cfg: QueueConfig, state_dir: Path) -> None:
        self.path = lock_path(cfg.database_url, state_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise QueueError(f"{self.path}: cannot open the daemon lock file: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise QueueError(f"another semwatch daemon (pid {holder}) holds {self.path}") from None
        except OSError as exc:
            os.close(fd)
            raise QueueError(f"{self.path}: cannot lock: {exc.strerror}") from exc
        # The pid is only for the message above; the flock is what excludes.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_path(database_url: str, state_dir: Path) -> Path:
    path = sqlite_path(database_url)
    if path is not None:
        return path.with_name(path.name + ".lock")
    digest = hashlib.sha256(redacted_url(database_url).encode()).hexdigest()[:16]
    return Path(state_dir) / f"daemon-{digest}.lock"


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError as exc:
        log.warning("cannot read the daemon lock file", error=exc.strerror)
        return "unknown"
    return text if text.isdigit() else "unknown"


# --------------------------------------------------------------------------- filesystems
