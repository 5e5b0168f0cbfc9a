"""Reading a source file's bytes safely, and telling its format by its signature.

Only a regular file is read (opened without blocking, so a FIFO cannot hang the reader; a
device is never read), its signature is checked before the rest is read, and the read is
bounded by what `max_pixels` can need. Given `inside`, the file must also lie inside that
folder, reached without following a symlink out of it. The bytes are read once: the decoder
works on them and the SHA-256 in the provenance is theirs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from semwatch.imaging.errors import ImageError, describe
from semwatch.imaging.tiff_structure import check_tiff_structure
from semwatch.paths import rel_inside

SUPPORTED_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})
KIND_NAMES: Mapping[str, str] = MappingProxyType({"tiff": "TIFF", "png": "PNG", "jpeg": "JPEG", "bmp": "BMP"})
_SUFFIX_KIND = MappingProxyType(
    {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp"}
)


def read_source(
    path: Path, max_pixels: int, inside: Path | None, page: int = 0, max_memory: int | None = None
) -> tuple[bytes, str]:
    """The file's bytes and format ("tiff", "png", "jpeg", "bmp"): a regular file's,
    signature first (a TIFF's structure up to ``page`` too, its size against ``max_pixels``
    and ``max_memory``), bounded. Raises ImageError."""
    # Even 16 bytes per pixel (RGBA float32) plus generous metadata cannot need more; a larger
    # file is refused before it is pulled into memory.
    max_bytes = max_pixels * 16 + (64 << 20)
    try:
        with open(
            path, "rb", buffering=0, opener=lambda name, _flags: open_regular(Path(name), inside)
        ) as fh:
            fd = fh.fileno()
            size = regular_size(path, os.fstat(fd))
            if size > max_bytes:
                raise ImageError(path, f"file is {size} bytes, too large for max_pixels={max_pixels}", True)
            # A gigabyte of garbage is refused on its first bytes, not after reading it all.
            kind = sniff(path, os.pread(fd, 16, 0))
            if kind == "tiff":
                # ... and a gigabyte behind a TIFF signature on its IFDs and strip offsets.
                check_tiff_structure(path, fd, size, max_pixels, page, max_memory)
            data = _read_at_most(fh, size, max_bytes)
    except OSError as exc:
        raise io_error(path, exc) from exc
    if len(data) > max_bytes:
        raise ImageError(
            path,
            f"file grew beyond {max_bytes} bytes while it was read (max_pixels={max_pixels})",
            permanent=False,
        )
    return data, kind


def open_regular(path: Path, inside: Path | None) -> int:
    """A descriptor for reading ``path`` (inside ``inside`` when given); the caller checks
    with fstat that it is a regular file."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
    # (it changes nothing for regular files).
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if inside is None:
        return os.open(path, flags)  # a path named by the user: its symlinks are followed
    return _open_beneath(path, Path(inside), flags)


def _open_beneath(path: Path, root: Path, flags: int) -> int:
    """Open `path` only as a file inside `root`: its symlinks are resolved first and must
    stay inside; the resolved path is then walked from the root with O_NOFOLLOW, so a
    symlink swapped in meanwhile makes the open fail instead of leading out."""
    real_root = os.path.realpath(root)
    rel = rel_inside(real_root, os.path.realpath(path))
    if not rel:
        raise ImageError(
            path,
            f"leads outside the watched folder {root} (symbolic link to {os.path.realpath(path)})",
            permanent=True,
        )
    *folders, name = rel.split("/")
    dir_fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            parent_fd = dir_fd
            dir_fd = os.open(
                folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
            )
            os.close(parent_fd)
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def regular_size(path: Path, st: os.stat_result) -> int:
    """The size of a regular file; ImageError naming what else it is."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a directory, not an image file", permanent=True)
    kind = (
        "a FIFO"
        if stat.S_ISFIFO(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "a special file"
    )
    raise ImageError(path, f"not a regular file ({kind}); not read", permanent=True)


def _read_at_most(fh: Any, expected: int, limit: int) -> bytes:
    """Up to limit + 1 bytes (one more tells the caller it was exceeded)."""
    data = fh.read(min(expected, limit) + 1)  # the whole file in one read, as a rule
    if len(data) <= expected or len(data) > limit:
        return data
    chunks = [data]
    total = len(data)
    while total <= limit:  # it grew since fstat: read on, but never past the bound
        chunk = fh.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def io_error(path: Path, exc: OSError) -> ImageError:
    """The ImageError for an OSError met while opening or reading ``path``."""
    if isinstance(exc, IsADirectoryError):
        return ImageError(path, "is a directory, not an image file", permanent=True)
    if isinstance(exc, FileNotFoundError):
        return ImageError(path, "file not found (it may have been moved or deleted)", False)
    if exc.errno == errno.ELOOP:
        # O_NOFOLLOW met a symlink that appeared after the path was resolved.
        return ImageError(path, "a symbolic link was swapped in while opening; not followed", permanent=True)
    reason = exc.strerror or describe(exc)
    return ImageError(path, f"cannot read: {reason}", permanent=False)


def sniff(path: Path, head: bytes) -> str:
    """The format of a file from its first 16 bytes; ImageError for anything else."""
    if not head:
        raise ImageError(path, "empty file (0 bytes)", permanent=True)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    # Its bytes are not quoted: a file that is no image may be anything (a link swapped in
    # to /etc/shadow), and the reason is shown in logs, `status` and the web UI.
    raise ImageError(
        path, "not a TIFF, PNG, JPEG or BMP image (no image signature at its start)", permanent=True
    )


def name_warnings(path: Path, kind: str) -> tuple[str, ...]:
    """A warning when the name's extension says another format than the content."""
    named = _SUFFIX_KIND.get(path.suffix.lower())
    if named is not None and named != kind:
        return (f"content is {KIND_NAMES[kind]} although the name ends in {path.suffix}",)
    return ()
