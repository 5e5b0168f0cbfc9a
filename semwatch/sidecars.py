"""Sidecar metadata files: Hitachi and JEOL SEMs write `x.txt` beside `x.tif`, TESCAN `x.hdr`.

A sidecar is the acquisition record of the image with its stem, so it is copied beside that
image's output under the output's stem: `x.tif` + `x.txt` -> `x.tif` + `x.txt`; an `x.png`
whose output is `x.png.tif` (it shares its stem with `x.tif`) gets `x.png.txt`. Copies are
atomic (semwatch.fsutil) and keep the sidecar's modification time, so a copy that is already
there is recognised without reading it. A sidecar is never a job of its own, and the watched
folder is only read. Which suffixes are sidecars: `[output] sidecars`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from semwatch.errors import one_line
from semwatch.fsutil import atomic_path
from semwatch.imaging import SUPPORTED_SUFFIXES, ImageError
from semwatch.imaging.source import open_regular
from semwatch.log import get_logger

log = get_logger(__name__)

# O_NONBLOCK: a FIFO swapped in is opened, seen by fstat and left unread, never waited on.
_NO_FOLLOW_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


def is_sidecar(name: str, suffixes: Iterable[str]) -> bool:
    """Whether a file name has one of the sidecar suffixes (case-insensitively)."""
    suffix = PurePath(name).suffix.lower()
    return bool(suffix) and suffix in {s.lower() for s in suffixes}


def sidecar_names(image_name: str, names: Iterable[str], suffixes: Sequence[str]) -> list[str]:
    """The sidecars of an image among the names of its folder (stems compared ignoring case,
    as SMB shares do)."""
    stem = PurePath(image_name).stem.lower()
    return sorted(
        name for name in names if is_sidecar(name, suffixes) and PurePath(name).stem.lower() == stem
    )


def image_names(sidecar_name: str, names: Iterable[str]) -> list[str]:
    """The images among a folder's names that a sidecar belongs to (same stem)."""
    stem = PurePath(sidecar_name).stem.lower()
    return sorted(
        name
        for name in names
        if PurePath(name).suffix.lower() in SUPPORTED_SUFFIXES and PurePath(name).stem.lower() == stem
    )


def sidecar_target(output: Path, sidecar_name: str) -> Path:
    """Where a sidecar goes: beside `output`, under the output's stem, with its own suffix."""
    output = Path(output)
    return output.with_name(PurePath(output.name).stem + PurePath(sidecar_name).suffix)


@dataclass(frozen=True)
class SidecarFailure:
    """A sidecar that could not be copied, and why (the image's output is not affected)."""

    source: Path
    error: OSError

    @property
    def reason(self) -> str:
        return one_line(self.error)


@dataclass(frozen=True)
class SidecarCopies:
    """What became of an image's sidecars: how many were copied, which were not."""

    copied: int = 0
    failures: tuple[SidecarFailure, ...] = ()


def copy_sidecar(source: Path, target: Path, *, inside: Path | None = None) -> bool:
    """Copy one sidecar atomically, keeping its modification time; False when the target
    already has its size and modification time, or when the source is not a regular file.

    Checked and copied through one descriptor, opened without blocking (a FIFO cannot hang
    the copy) and without following a symlink (one swapped in after a check is never read;
    with ``inside``, no folder on the way may lead out of that root either).
    """
    source, target = Path(source), Path(target)
    try:
        fd = open_regular(source, inside) if inside is not None else os.open(source, _NO_FOLLOW_READ)
    except ImageError as exc:  # a symlink that leads out of the root
        log.warning("sidecar not copied", path=str(source), reason=exc.reason)
        return False
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        log.debug("sidecar skipped: a symbolic link", path=str(source))
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("sidecar not copied", path=str(source), reason="not a regular file")
            return False
        if _same_copy(target, st):
            return False
        _check_room(target, st.st_size)
        with atomic_path(target) as temp, open(temp, "wb") as out:
            _copy_from(fd, out)
            out.flush()
            os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)
    return True


def _check_room(target: Path, size: int) -> None:
    """ENOSPC before a copy that cannot fit: a sidecar bigger than the free space is not
    written up to the last byte of the disk at every retry."""
    try:
        vfs = os.statvfs(target.parent)
    except OSError:
        return  # the copy itself will say what is wrong
    free = vfs.f_bavail * vfs.f_frsize
    if size > free:
        raise OSError(errno.ENOSPC, f"no room for a {size}-byte sidecar ({free} bytes free)", str(target))


def _same_copy(target: Path, st: os.stat_result) -> bool:
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        return False
    return (existing.st_size, existing.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _copy_from(fd: int, out: BinaryIO) -> None:
    offset = 0
    while chunk := os.pread(fd, _COPY_CHUNK, offset):
        out.write(chunk)
        offset += len(chunk)


def copy_sidecars(
    image: Path, output: Path, suffixes: Sequence[str], *, inside: Path | None = None
) -> SidecarCopies:
    """Copy the sidecars found beside `image` to beside its `output`. The folder is listed
    now, after the output was written, so a sidecar that arrived while the image was being
    colorized is included. One sidecar that cannot be copied is reported in the result and
    the others are still copied: a sidecar never undoes its image's output. OSError only
    when the image's folder cannot be listed."""
    if not suffixes:
        return SidecarCopies()
    image = Path(image)
    copied = 0
    failures: list[SidecarFailure] = []
    for name in sidecar_names(image.name, os.listdir(image.parent), suffixes):
        source = image.parent / name
        try:
            copied += copy_sidecar(source, sidecar_target(output, name), inside=inside)
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == source:
                log.debug("sidecar vanished before it was copied", path=str(source))
                continue
            failures.append(SidecarFailure(source, exc))
        except OSError as exc:
            failures.append(SidecarFailure(source, exc))
    return SidecarCopies(copied, tuple(failures))
