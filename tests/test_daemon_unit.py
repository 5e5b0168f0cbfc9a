"""The daemon's decisions that do not need a running daemon: paths, storage, start-up checks."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest

from semwatch.config import Config, DaemonConfig, EngineConfig, OutputConfig, WatchConfig
from semwatch.daemon import (
    EXIT_CONFIG,
    OutputLayout,
    StartupError,
    StorageGuard,
    _ping_interval,
    check_config,
    prepare_folders,
)
from semwatch.model import default_model_path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    return inbox, outbox


def test_output_path_mirrors_the_source_path(roots) -> None:
    inbox, outbox = roots
    layout = OutputLayout(inbox, outbox, "tiff")
    assert layout.source("a/b/x.png") == inbox / "a" / "b" / "x.png"
    assert layout.target("a/b/x.png") == outbox / "a" / "b" / "x.tif"
    # A second source with the same stem keeps its extension (DESIGN.md).
    assert layout.target("x.png", ["x.png", "x.tif"]) == outbox / "x.png.tif"
    assert layout.target("x.tif", ["x.png", "x.tif"]) == outbox / "x.tif"
    assert OutputLayout(inbox, outbox, "png").target("d/y.tif") == outbox / "d" / "y.png"


@pytest.mark.parametrize("rel", ["../escape.png", "a/../../escape.png", "/etc/passwd.png", "", "."])
def test_paths_that_would_leave_the_roots_are_refused(roots, rel: str) -> None:
    layout = OutputLayout(*roots, "tiff")
    with pytest.raises(ValueError):
        layout.target(rel)
    with pytest.raises(ValueError):
        layout.source(rel)


def test_a_symlinked_output_subfolder_leading_outside_is_refused(roots, tmp_path: Path) -> None:
    inbox, outbox = roots
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (outbox / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        OutputLayout(inbox, outbox, "tiff").target("link/x.png")


class FakeClock:
    """Stands in for time.monotonic so the 10-second re-check needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_storage_guard_pauses_until_the_output_share_is_back(roots) -> None:
    inbox, outbox = roots
    clock = FakeClock()
    guard = StorageGuard(inbox, outbox, min_free_bytes=0, recheck_seconds=10, clock=clock)
    assert guard.problem() is None and guard.ready()

    away = outbox.with_name("unmounted")
    outbox.rename(away)
    assert "output folder missing" in guard.problem()
    assert not guard.ready()
    assert "output folder missing" in guard.paused_reason
    away.rename(outbox)
    clock.now += 5
    assert not guard.ready(), "looks again only every recheck_seconds"
    clock.now += 5
    assert guard.ready() and guard.paused_reason is None


def test_storage_guard_reasons(roots) -> None:
    inbox, outbox = roots
    assert "nearly full" in StorageGuard(inbox, outbox, min_free_bytes=2**62).problem()
    inbox.rmdir()
    assert "watch folder unavailable" in StorageGuard(inbox, outbox, min_free_bytes=0).problem()


def test_which_write_errors_mean_storage_unavailable(roots) -> None:
    inbox, outbox = roots
    guard = StorageGuard(inbox, outbox, min_free_bytes=0)
    assert guard.is_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert guard.is_storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # Any other I/O error is the job's, while the storage itself looks fine...
    assert not guard.is_storage_error(OSError(errno.EACCES, "Permission denied"))
    assert not guard.is_storage_error(ValueError("bad image"))
    # ...and the storage's when the output root has gone with it.
    outbox.rmdir()
    assert guard.is_storage_error(OSError(errno.EIO, "Input/output error"))


def _config(tmp_path: Path, **engine) -> Config:
    return Config(
        watch=WatchConfig(input_dir=tmp_path / "in"),
        output=OutputConfig(dir=tmp_path / "out"),
        engine=EngineConfig(**engine),
        daemon=DaemonConfig(state_dir=tmp_path / "var"),
        source=tmp_path / "config.toml",
    )


def test_start_up_checks_name_the_key_and_exit_78(tmp_path: Path, tiny_model: Path) -> None:
    check_config(_config(tmp_path, model=tiny_model))
    with pytest.raises(StartupError) as info:
        check_config(_config(tmp_path, model=tmp_path / "nope.safetensors"))
    assert info.value.exit_code == EXIT_CONFIG
    assert "nope.safetensors" in str(info.value) and "engine.model" in str(info.value)

    same = dataclasses.replace(_config(tmp_path, model=tiny_model),
                               output=OutputConfig(dir=tmp_path / "in"))
    with pytest.raises(StartupError, match="same folder") as info:
        check_config(same)
    assert info.value.exit_code == EXIT_CONFIG


def test_the_bundled_model_needs_no_engine_model(tmp_path: Path) -> None:
    assert default_model_path().is_file()
    check_config(_config(tmp_path))


def test_without_a_bundled_model_engine_model_must_be_set(tmp_path: Path, monkeypatch) -> None:
    # An install that lost its package data (e.g. a wheel built without it).
    import semwatch.model

    monkeypatch.setattr(semwatch.model, "default_model_path", lambda: tmp_path / "absent.safetensors")
    with pytest.raises(StartupError) as info:
        check_config(_config(tmp_path))
    message = str(info.value)
    assert "engine.model" in message and "bundled default model" in message
    assert str(tmp_path / "config.toml") in message
    assert info.value.exit_code == EXIT_CONFIG


def test_prepare_folders_creates_what_a_first_run_needs(tmp_path: Path, tiny_model: Path) -> None:
    config = _config(tmp_path, model=tiny_model)
    prepare_folders(config)
    assert all(p.is_dir() for p in (tmp_path / "in", tmp_path / "out", tmp_path / "var"))


def test_watchdog_is_fed_well_within_its_interval() -> None:
    assert _ping_interval(None) is None
    assert _ping_interval(120.0) == 30.0
    assert 0 < _ping_interval(0.01) <= 0.05
