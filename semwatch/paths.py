"""Path containment: the one rule for "this path stays inside that folder".

Every place that must not follow a path out of its root (the daemon's sources and outputs,
the safe open of a watched file, the walk of a watch folder, the web UI's job files) asks
:func:`rel_inside` with paths it has resolved as its own case needs (a symlinked file may
be known by its link's name, or by its target).
"""

from __future__ import annotations

import os


def rel_inside(real_root: str, real_path: str) -> str | None:
    """``real_path`` relative to ``real_root`` (POSIX separators; "" for the root itself),
    or None when it lies outside. Both are absolute paths whose symlinks the caller has
    resolved: this compares names, it does not touch the file system."""
    root = real_root.rstrip(os.sep) or os.sep
    if real_path == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not real_path.startswith(prefix):
        return None
    return real_path[len(prefix) :].replace(os.sep, "/")


def same_folder(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> str | None:
    """Why an output folder cannot be the watched folder (None when they differ, symlinks
    resolved): the one wording for the daemon's start-up check and the watcher's."""
    resolved = os.path.realpath(input_dir)
    if resolved != os.path.realpath(output_dir):
        return None
    return (
        f"watch.input_dir and output.dir are the same folder {resolved}: the output folder is "
        "the watched folder; colorized files would be colorized again"
    )
