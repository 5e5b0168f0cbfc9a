"""semwatch.fsutil.atomic_path, the one atomic writer, on real files in tmp_path.

Nothing is mocked: failures are real exceptions raised by the writing code, a crash is a
real process that dies inside the writer, and modes are read back with stat.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semwatch.fsutil import TEMP_PREFIX, atomic_path, sweep_temp_files
from semwatch.imaging import SourceMetadata, write_image
from semwatch.walk import TEMPORARY_PATTERNS

REPO = Path(__file__).resolve().parents[1]


class WriterFailed(Exception):
    pass


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask that a test sets."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failure_mid_write_leaves_no_output_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(WriterFailed), atomic_path(target) as temp:
        temp.write_bytes(b"half of a file")
        assert temp.parent == target.parent and temp.name.startswith(TEMP_PREFIX)
        raise WriterFailed
    assert list(target.parent.iterdir()) == []


def test_a_failure_mid_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "run.toml"
    target.write_bytes(b"complete old version")
    with pytest.raises(WriterFailed), atomic_path(target) as temp:
        with temp.open("wb") as fh:
            fh.write(b"new version, cut short")
        raise WriterFailed
    assert target.read_bytes() == b"complete old version"
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


def test_write_image_failing_in_the_encoder_leaves_nothing(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    broken = SourceMetadata(extratags=((65001, 99, 1, 1, True),))  # unknown field type: tifffile raises
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.tif", rgb, fmt="tiff", metadata=broken, provenance={})
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as temp:
        assert temp.read_bytes() == b""  # created empty, for the body to fill
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_mode_is_what_a_plain_open_creates_under_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with atomic_path(tmp_path / "model.safetensors") as temp:
        temp.write_bytes(b"weights")
    write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), fmt="png", metadata=None, provenance={})
    assert mode(plain) == 0o666 & ~mask
    assert mode(tmp_path / "model.safetensors") == 0o666 & ~mask
    assert mode(tmp_path / "x.png") == 0o666 & ~mask


def test_temp_name_keeps_the_target_name_within_name_max(tmp_path: Path) -> None:
    long_name = "é" * 120 + ".tif"  # 244 bytes: the prefix cannot fit in front of all of it
    with atomic_path(tmp_path / long_name) as temp:
        assert len(temp.name.encode()) <= 255
        assert temp.name.startswith(TEMP_PREFIX) and "é" in temp.name
        temp.write_bytes(b"x")
    with atomic_path(tmp_path / "engine", ".ts") as temp:
        assert temp.name.endswith("-engine.ts")  # a suffix for writers that insist on one
        temp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long_name, "engine"])


def test_a_writer_killed_mid_write_leaves_a_temp_that_the_watcher_ignores_and_the_sweep_removes(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out" / "x.tif"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from semwatch.fsutil import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as temp:\n"
        "    temp.write_bytes(b'partial')\n"
        "    os._exit(3)\n"  # dies inside the writer: no cleanup runs, as in a crash
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(target)], env=env, check=False)
    assert done.returncode == 3
    leftovers = list(target.parent.iterdir())
    assert len(leftovers) == 1 and not target.exists()
    name = leftovers[0].name
    assert any(fnmatch.fnmatch(name, pattern) for pattern in TEMPORARY_PATTERNS)
    assert sweep_temp_files(tmp_path) == 1
    assert list(target.parent.iterdir()) == []


def test_the_sweep_on_a_shared_output_folder_spares_temporaries_still_being_written(tmp_path: Path) -> None:
    """Workers on several hosts share an output folder: a starting worker removes only a
    crash's leftovers (untouched for `older_than` seconds), never another's live write."""
    stale = tmp_path / "a" / f"{TEMP_PREFIX}0001-x.tif"
    live = tmp_path / "b" / f"{TEMP_PREFIX}0002-y.tif"
    for temp in (stale, live):
        temp.parent.mkdir()
        temp.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    assert sweep_temp_files(tmp_path, older_than=240.0) == 1
    assert not stale.exists() and live.exists()
    assert sweep_temp_files(tmp_path) == 1  # alone on the folder (SQLite's lock): all of them
    assert not live.exists()
