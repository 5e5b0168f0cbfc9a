"""Which files under a folder are images to colorize, and the one walk that finds them.

The rules (DESIGN.md "Arrival detection"): names matching the patterns (case-insensitive),
no hidden or temporary names, nothing inside the output folder, no sidecar metadata files,
sub-folders only when recursive; a symlinked folder is never entered (no loops, no second
name for files already under the root) and a symlinked file counts only when its target
stays inside the root and outside the output folder. The watcher, `semwatch enqueue` and
`semwatch colorize` all judge files by one :class:`WatchRules`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from semwatch.fsutil import TEMP_PREFIX
from semwatch.log import get_logger
from semwatch.paths import rel_inside

log = get_logger(__name__)

# Names that writers use while a file is incomplete (Office, browsers, rsync/curl, vim,
# LibreOffice) and our own atomic-write temporaries.
TEMPORARY_PATTERNS: tuple[str, ...] = (
    "~$*",
    "*.tmp",
    "*.part",
    "*.crdownload",
    "*.partial",
    ".~lock*",
    "*.swp",
    f"{TEMP_PREFIX}*",
)

WalkItem = tuple[str, int, float]  # rel_path (POSIX), size, mtime


def _compile_globs(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


_TEMPORARY = _compile_globs(TEMPORARY_PATTERNS)


@dataclass(frozen=True)
class WatchRules:
    """What counts as an image under ``root`` (resolved at construction)."""

    root: Path
    patterns: tuple[str, ...]
    recursive: bool = True
    output_dir: Path | None = None
    sidecars: frozenset[str] = frozenset()  # lower-case suffixes: never jobs
    _output_rel: str | None = field(init=False, repr=False, compare=False)
    _wanted: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        root = Path(self.root).resolve()
        output = None if self.output_dir is None else Path(self.output_dir).resolve()
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "root", root)
        set_(self, "output_dir", output)
        set_(self, "patterns", tuple(self.patterns))
        set_(self, "sidecars", frozenset(s.lower() for s in self.sidecars))
        set_(self, "_wanted", _compile_globs(self.patterns))
        set_(self, "_output_rel", None if output is None else self.rel_of(str(output)))

    @classmethod
    def for_images(cls, folder: Path, *, output_dir: Path | None = None) -> WatchRules:
        """Every image format semwatch reads (`semwatch colorize FOLDER`)."""
        from semwatch.imaging import SUPPORTED_SUFFIXES

        return cls(
            folder, tuple(f"*{suffix}" for suffix in sorted(SUPPORTED_SUFFIXES)), output_dir=output_dir
        )

    # ---- names

    def rel_of(self, absolute: str) -> str | None:
        """POSIX path of an absolute, already resolved path relative to the root, or None."""
        return rel_inside(str(self.root), absolute) or None

    def relpath(self, path: str | os.PathLike[str]) -> str | None:
        """POSIX path relative to the root, or None outside it.

        Symlinked folders on the way are resolved; the file's own name is kept (a symlinked
        file is known by its link's name; `is_ignored` judges its target).
        """
        absolute = os.path.abspath(path)
        parent = os.path.realpath(os.path.dirname(absolute))
        return self.rel_of(os.path.join(parent, os.path.basename(absolute)))

    def abspath(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def in_output(self, rel: str) -> bool:
        out = self._output_rel
        return out is not None and (rel == out or rel.startswith(out + "/"))

    def is_temporary(self, name: str) -> bool:
        return _TEMPORARY.match(name) is not None

    def is_sidecar(self, rel: str) -> bool:
        return os.path.splitext(rel)[1].lower() in self.sidecars

    def wanted_name(self, name: str) -> bool:
        """A file name that becomes a job."""
        return (
            not self.is_temporary(name) and self._wanted.match(name) is not None and not self.is_sidecar(name)
        )

    def ignored_dir(self, rel: str) -> bool:
        return any(part.startswith(".") for part in rel.split("/")) or self.in_output(rel)

    def ignored_name(self, rel: str, accept: Callable[[str], bool] | None = None) -> bool:
        """By its path alone: outside the rules (``accept`` judges the file name)."""
        parts = rel.split("/")
        if not self.recursive and len(parts) > 1:
            return True
        return self.ignored_dir(rel) or not (accept or self.wanted_name)(parts[-1])

    def is_ignored(self, path: str | os.PathLike[str]) -> bool:
        """True for anything that must never become a job."""
        rel = self.relpath(path)
        if rel is None or self.ignored_name(rel):
            return True
        return self.regular_stat(os.path.abspath(path)) is None

    # ---- the file system

    def regular_stat(self, path: str, lst: os.stat_result | None = None) -> os.stat_result | None:
        """stat of a regular file (through a symlink that stays inside the root), else None."""
        try:
            if lst is None:
                lst = os.lstat(path)
            st = lst
            if stat.S_ISLNK(lst.st_mode):
                target = self.rel_of(os.path.realpath(path))
                if target is None or self.in_output(target):
                    return None
                st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("cannot stat", path=path, reason=exc.strerror or str(exc))
            return None
        return st if stat.S_ISREG(st.st_mode) else None


def walk(
    rules: WatchRules,
    top: str | None = None,
    *,
    accept: Callable[[str], bool] | None = None,
    unreadable: list[str] | None = None,
    skipped: Callable[[str], None] | None = None,
) -> Iterator[WalkItem]:
    """(rel_path, size, mtime) of every file under ``top`` (default: the root) that the rules
    take, in no particular order, holding no object per file.

    ``accept``: judges file names instead of ``rules.wanted_name``; ``unreadable`` collects
    the folders that could not be listed; ``skipped`` is told each file left out.
    """
    accept = accept or rules.wanted_name
    start = str(rules.root) if top is None else os.path.abspath(top)
    stack = [(start, rules.rel_of(start) or "")]
    while stack:
        folder, folder_rel = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    item = _entry(rules, entry, folder_rel, stack, accept)
                    if item is not None:
                        yield item
                    elif skipped is not None and not entry.is_dir():  # a linked folder is no file
                        skipped(f"{folder_rel}/{entry.name}" if folder_rel else entry.name)
        except FileNotFoundError:
            log.debug("folder vanished during the walk", path=folder_rel or ".", root=str(rules.root))
        except OSError as exc:
            if unreadable is not None:
                unreadable.append(folder_rel)
            log.warning(
                "cannot list folder", path=folder_rel or ".", root=str(rules.root), reason=exc.strerror
            )


def _entry(
    rules: WatchRules,
    entry: os.DirEntry[str],
    folder_rel: str,
    stack: list[tuple[str, str]],
    accept: Callable[[str], bool],
) -> WalkItem | None:
    name = entry.name
    if name.startswith("."):
        return None
    rel = f"{folder_rel}/{name}" if folder_rel else name
    try:
        # follow_symlinks=False: a symlinked folder is never entered.
        if entry.is_dir(follow_symlinks=False):
            if rules.recursive and not rules.in_output(rel):
                stack.append((entry.path, rel))
            return None
        # By the whole path: a walk may start below the root (in a hidden or output folder,
        # or deeper than a non-recursive watch looks).
        if rules.ignored_name(rel, accept):
            return None
        st = rules.regular_stat(entry.path, entry.stat(follow_symlinks=False))
    except OSError:
        return None  # vanished between listing and stat
    return None if st is None else (rel, st.st_size, st.st_mtime)
