"""The shared watch rules and walk (semwatch.walk) and the one error shortener (semwatch.errors)."""

from __future__ import annotations

import os
from pathlib import Path

from semwatch.errors import one_line
from semwatch.imaging import ImageError
from semwatch.walk import WatchRules, walk


def _files(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_walk_takes_what_the_watch_rules_take(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    _files(root, "a.png", "B.TIF", "deep/c.jpg", ".hidden.png", ".dot/d.png", "notes.txt", "x.txt")
    _files(root, "e.png.part", "~$f.tif", "out/g.tif", ".semwatch-tmp-1-h.tif")
    _files(elsewhere, "outside.png", "folder/i.png")
    os.symlink(elsewhere / "outside.png", root / "escape.png")
    os.symlink(root / "a.png", root / "alias.png")
    os.symlink(elsewhere / "folder", root / "linked")
    rules = WatchRules(
        root, ("*.png", "*.tif", "*.jpg"), output_dir=root / "out", sidecars=frozenset({".txt"})
    )
    skipped: list[str] = []
    found = sorted(rel for rel, _size, _mtime in walk(rules, skipped=skipped.append))
    assert found == ["B.TIF", "a.png", "alias.png", "deep/c.jpg"]
    assert sorted(skipped) == sorted(
        [".hidden.png", ".semwatch-tmp-1-h.tif", "e.png.part", "escape.png", "notes.txt", "x.txt", "~$f.tif"]
    )
    assert rules.is_ignored(root / "escape.png") and rules.is_ignored(root / "out" / "g.tif")
    assert not rules.is_ignored(root / "deep" / "c.jpg")
    flat = WatchRules(root, ("*.png", "*.jpg"), recursive=False)
    assert sorted(rel for rel, *_ in walk(flat)) == ["a.png", "alias.png"]
    # A walk that starts below the root still judges the whole path.
    assert list(walk(flat, str(root / "deep"))) == []


def test_one_line_flattens_bounds_and_names_foreign_errors() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 600) == "x" * 499 + "…"
    assert one_line(KeyError("ResolutionY")) == "KeyError: 'ResolutionY'"
    assert one_line(RuntimeError()) == "RuntimeError"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/a/b.tif")) == (
        "FileNotFoundError: No such file or directory: /a/b.tif"
    )
    # Our own errors are sentences already: no type name in front.
    assert one_line(ImageError("/a/b.tif", "not an image\n(truncated)", True)) == str(
        ImageError("/a/b.tif", "not an image (truncated)", True)
    )
