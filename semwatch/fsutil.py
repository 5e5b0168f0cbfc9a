"""Atomic file replacement: the one temp-file + fsync + rename + folder-fsync path.

Every writer of a file that someone else may read while it is written goes through
`atomic_path`: colorized outputs (semwatch.imaging), generator files, TensorRT engines,
training checkpoints and run files, sidecar copies. The temporary name starts with
`TEMP_PREFIX`, which the watcher ignores and the daemon's start-up sweep (`sweep_temp_files`)
removes; no other place spells it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from semwatch.log import get_logger

log = get_logger(__name__)

# A dot keeps temporaries out of watchers and scans (which skip hidden files); our own marker
# keeps the sweep away from anyone else's.
TEMP_PREFIX = ".semwatch-tmp-"

# File mode policy: a temporary file is created as a plain open() would create the final file
# (0o666, less the process umask, and any default ACL of the folder, applied by the kernel), so
# the service's UMask= decides who may read outputs, models and checkpoints; nothing chmods.
_CREATE_MODE = 0o666
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_NAME_MAX = 255
_NAME_ATTEMPTS = 100

# Errno policy for the folder fsync that makes the rename durable: these say "this filesystem
# does not fsync folders" (some network filesystems); the rename is done and stays atomic, so
# they are logged and passed over. Any other errno (EIO, ...) raises: the write may not last.
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path``; once the body has written it, it is
    fsynced and renamed onto ``path``, and the folder is fsynced.

    On any error the temporary file is removed and the error propagates (an OSError keeps its
    errno: ENOSPC is a full disk), so a reader sees the old file or the complete new one,
    never a part. ``suffix``: appended to the temporary name unless the target's name already
    ends in it, for writers that insist on an extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp(path, suffix)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        _remove_temp(temp)
        raise
    fsync_directory(path.parent)


def _create_temp(path: Path, suffix: str) -> Path:
    name = path.name if path.name.endswith(suffix) else path.name + suffix
    for _attempt in range(_NAME_ATTEMPTS):
        temp = path.parent / temp_name(name)
        try:
            os.close(os.open(temp, _CREATE_FLAGS, _CREATE_MODE))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def temp_name(name: str) -> str:
    """A fresh temporary name for a file called ``name``: the prefix, a random token, and as
    much of the name as fits in NAME_MAX (255 bytes), so an operator can tell what it was."""
    prefix = f"{TEMP_PREFIX}{secrets.token_hex(6)}-"
    room = _NAME_MAX - len(prefix.encode())
    encoded = name.encode("utf-8", errors="surrogateescape")[:room]
    return prefix + encoded.decode("utf-8", errors="ignore")


def _fsync_file(temp: Path) -> None:
    # The body may have written through any handle of its own; fsync flushes the file's data
    # whichever descriptor it is called on.
    fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temp(temp: Path) -> None:
    try:
        temp.unlink(missing_ok=True)
    except OSError as exc:
        # The original error is the one that matters; this one must not hide it.
        log.error("temp file not removed", path=str(temp), error=str(exc))


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (errno policy: see `_FSYNC_UNSUPPORTED`)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        # A folder we may write but not read (mode -wx): the rename is done all the same.
        log.warning("directory fsync skipped", path=str(folder), error=str(exc))
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_UNSUPPORTED:
            raise
        log.debug("directory fsync unsupported", path=str(folder), error=str(exc))
    finally:
        os.close(fd)


def sweep_temp_files(root: Path, *, older_than: float = 0.0) -> int:
    """Remove our temporaries (``TEMP_PREFIX``) left under ``root`` by a crash; returns how many.

    ``older_than`` (seconds since last modified): 0 when nobody else writes under ``root``;
    where other processes may be writing there (workers on other hosts sharing the output
    folder), only files untouched for that long, so a live write is never cut off.
    """
    removed = 0
    cutoff = time.time() - older_than
    for folder, _dirs, files in os.walk(Path(root), onerror=_log_walk_error):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            temp = Path(folder, name)
            try:
                if older_than > 0 and temp.stat().st_mtime > cutoff:
                    continue
                temp.unlink()
            except FileNotFoundError:
                continue  # gone already: nothing to sweep
            except OSError as exc:
                log.warning("temp file not swept", path=str(temp), error=str(exc))
                continue
            removed += 1
            log.info("temp file swept", path=str(temp))
    return removed


def _log_walk_error(exc: OSError) -> None:
    if not isinstance(exc, FileNotFoundError):
        log.warning("temp sweep cannot list a folder", path=str(exc.filename), error=str(exc))
