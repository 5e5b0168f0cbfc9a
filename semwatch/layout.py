"""Where a job's files are: its source under the watch folder, its output under the output
root, named by the one output-naming rule (:func:`semwatch.imaging.output_name`, with its
sibling rule x.png -> x.png.tif), and neither ever outside its root (:mod:`semwatch.paths`).

Used by the daemon's worker and by the web UI's queue page alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from semwatch.errors import one_line
from semwatch.imaging import output_name
from semwatch.log import get_logger
from semwatch.paths import rel_inside

if TYPE_CHECKING:
    from semwatch.config import Config

log = get_logger(__name__)


@dataclass(frozen=True)
class OutputLayout:
    """Where a job's source is read and its output written; both stay inside their roots."""

    input_root: Path
    output_root: Path
    fmt: str

    @classmethod
    def of(cls, cfg: Config) -> OutputLayout:
        return cls(cfg.watch.input_dir, cfg.output.dir, cfg.output.format)

    def source(self, rel_path: str) -> Path:
        return _inside(self.input_root, _safe_rel(rel_path), "source")

    def input_rel(self, path: Path) -> str | None:
        """A source path's rel_path under the input root (None outside it)."""
        try:
            return Path(path).relative_to(self.input_root).as_posix()
        except ValueError:
            return None

    def target(self, rel_path: str, sibling_names: Sequence[str] = ()) -> Path:
        """<output root>/<rel dir>/<output name>; raises ValueError if it would escape the root."""
        rel = _safe_rel(rel_path)
        name = output_name(rel.name, self.fmt, sibling_names=sibling_names)
        return _inside(self.output_root, rel.parent / name, "output")


def sibling_names(folder: Path, cache: dict[Path, list[str]]) -> list[str]:
    """Names in a source's folder (once per folder per batch) for output_name's x.png.tif rule."""
    if folder not in cache:
        try:
            cache[folder] = os.listdir(folder)
        except OSError as exc:
            log.debug("cannot list source folder", folder=str(folder), error=one_line(exc))
            cache[folder] = []
    return cache[folder]


def _safe_rel(rel_path: str) -> PurePosixPath:
    rel = PurePosixPath(rel_path)
    if not rel_path or rel.is_absolute() or ".." in rel.parts or rel.name in ("", "."):
        raise ValueError(f"{rel_path!r}: not a relative file path inside the watch folder")
    return rel


def _inside(root: Path, rel: PurePosixPath, what: str) -> Path:
    path = root.joinpath(*rel.parts)
    # realpath of the parent: a symlinked sub-folder must not lead out of the root.
    real = os.path.join(os.path.realpath(path.parent), path.name)
    if rel_inside(os.path.realpath(root), real) is None:
        raise ValueError(f"{path}: {what} path leads outside {root}")
    return path
