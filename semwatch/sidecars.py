"""Sidecar metadata files: Hitachi and JEOL SEMs write `x.txt` beside `x.tif`, TESCAN `x.hdr`.

A sidecar is the acquisition record of the image with its stem, so it is copied beside that
image's output under the output's stem: `x.tif` + `x.txt` -> `x.tif` + `x.txt`; an `x.png`
whose output is `x.png.tif` (it shares its stem with `x.tif`) gets `x.png.txt`. Copies are
atomic (semwatch.fsutil) and keep the sidecar's modification time, so a copy that is already
there is recognised without reading it. A sidecar is never a job of its own, and the watched
folder is only read. Which suffixes are sidecars: `[output] sidecars`.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath

from semwatch.fsutil import atomic_path
from semwatch.imaging import SUPPORTED_SUFFIXES
from semwatch.log import get_logger

log = get_logger(__name__)


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


def copy_sidecar(source: Path, target: Path) -> bool:
    """Copy one sidecar atomically, keeping its modification time; False when the target
    already has its size and modification time, or when the source is not a regular file
    (a symlink could lead anywhere; the watched folder's own files are what is copied)."""
    source, target = Path(source), Path(target)
    st = os.lstat(source)
    if not stat.S_ISREG(st.st_mode):
        log.debug("sidecar skipped: not a regular file", path=str(source))
        return False
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and (existing.st_size, existing.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
        return False
    with atomic_path(target) as temp:
        shutil.copyfile(source, temp)
        os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def copy_sidecars(image: Path, output: Path, suffixes: Sequence[str]) -> int:
    """Copy the sidecars found beside `image` to beside its `output`; returns how many were
    copied. The folder is listed now, after the output was written, so a sidecar that
    arrived while the image was being colorized is included. OSError propagates."""
    if not suffixes:
        return 0
    image = Path(image)
    copied = 0
    for name in sidecar_names(image.name, os.listdir(image.parent), suffixes):
        source = image.parent / name
        try:
            copied += copy_sidecar(source, sidecar_target(output, name))
        except FileNotFoundError as exc:
            if exc.filename is None or Path(exc.filename) != source:
                raise  # the output side is missing: not a vanished sidecar
            log.debug("sidecar vanished before it was copied", path=str(source))
    return copied
