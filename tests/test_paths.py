"""The one containment rule (semwatch.paths) and the one "output folder is the watch folder" rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from semwatch.layout import OutputLayout
from semwatch.paths import rel_inside, same_folder


def test_rel_inside_compares_resolved_names() -> None:
    assert rel_inside("/data/in", "/data/in") == ""
    assert rel_inside("/data/in", "/data/in/a/b.tif") == "a/b.tif"
    assert rel_inside("/data/in/", "/data/in/a") == "a"
    assert rel_inside("/", "/etc") == "etc"
    # A sibling whose name starts like the root is not inside it.
    assert rel_inside("/data/in", "/data/inbox/x.tif") is None
    assert rel_inside("/data/in", "/data") is None


def test_a_symlinked_folder_leading_out_is_refused_by_the_layout(tmp_path: Path) -> None:
    inbox, outbox, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (inbox, outbox, elsewhere):
        folder.mkdir()
    os.symlink(elsewhere, inbox / "link")
    layout = OutputLayout(inbox, outbox, "tiff")
    assert layout.source("a/x.png") == inbox / "a" / "x.png"
    with pytest.raises(ValueError, match="leads outside"):
        layout.source("link/x.png")


def test_the_output_folder_may_not_be_the_watch_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "alias")
    assert same_folder(tmp_path / "in", tmp_path / "out") is None
    problem = same_folder(tmp_path / "in", tmp_path / "alias")
    assert problem is not None and "colorized again" in problem and "watch.input_dir" in problem
