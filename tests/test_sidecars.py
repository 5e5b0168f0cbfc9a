"""Sidecar metadata files (Hitachi/JEOL x.txt, TESCAN x.hdr beside x.tif).

The naming and copy rules on real folders; the watcher handing settled sidecars over
instead of queueing them; `semwatch colorize` and `semwatch run` (real subprocesses) putting
them beside the outputs, also when the sidecar arrives after its image was colorized.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile
from daemon_harness import Site, gray_image, tiff_bytes, wait_until, write_atomically

from semwatch.config import ConfigError, WatchConfig, parse_config
from semwatch.fsutil import TEMP_PREFIX
from semwatch.queue import SqlJobQueue
from semwatch.sidecars import (
    copy_sidecar,
    copy_sidecars,
    image_names,
    is_sidecar,
    sidecar_names,
    sidecar_target,
)
from semwatch.watcher import Watcher

SUFFIXES = (".txt", ".hdr")
HITACHI_TXT = (
    b"[SemImageFile]\r\nInstructName=SU8230\r\nSerialNumber=1234\r\n"
    b"Date=05/06/2024\r\nAcceleratingVoltage=5000 Volt\r\nPixelSize=2.480469\r\n"
)
TESCAN_HDR = b"[MAIN]\r\nDevice=MIRA3\r\nPixelSizeX=4.96e-09\r\n"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- rules


def test_names_follow_the_output_name() -> None:
    names = ["x.tif", "x.txt", "X.HDR", "x.png", "y.tif", "xy.txt", "x.txt.part"]
    assert sidecar_names("x.tif", names, SUFFIXES) == ["X.HDR", "x.txt"]
    assert sidecar_names("y.tif", names, SUFFIXES) == []
    assert image_names("x.txt", names) == ["x.png", "x.tif"]
    assert is_sidecar("a.TXT", SUFFIXES) and not is_sidecar("a.tif", SUFFIXES)
    assert not is_sidecar("txt", SUFFIXES)
    out = Path("/out/day1")
    assert sidecar_target(out / "x.tif", "x.txt") == out / "x.txt"
    assert sidecar_target(out / "x.png.tif", "x.txt") == out / "x.png.txt"  # x.png beside x.tif
    assert sidecar_target(out / "x.jpg", "X.HDR") == out / "x.HDR"


def test_copy_is_atomic_keeps_the_time_and_skips_an_identical_copy(tmp_path: Path) -> None:
    source = write(tmp_path / "in" / "x.txt", HITACHI_TXT)
    os.utime(source, (1_700_000_000, 1_700_000_000))
    before = source.stat()
    target = tmp_path / "out" / "x.txt"
    assert copy_sidecar(source, target)
    assert target.read_bytes() == HITACHI_TXT
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert not copy_sidecar(source, target)  # same size and time: nothing to do
    write(source, HITACHI_TXT + b"Comment=again\r\n")
    assert copy_sidecar(source, target) and target.read_bytes().endswith(b"again\r\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]  # no temp file left
    assert sorted(p.name for p in source.parent.iterdir()) == ["x.txt"]  # only read


def test_copy_sidecars_of_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write(folder / "x.tif", b"image")
    write(folder / "x.txt", HITACHI_TXT)
    write(folder / "x.hdr", TESCAN_HDR)
    write(folder / "other.txt", b"not x's")
    output = tmp_path / "out" / "x.png.tif"
    write(output, b"colorized")
    assert copy_sidecars(folder / "x.tif", output, SUFFIXES) == 2
    assert (tmp_path / "out" / "x.png.txt").read_bytes() == HITACHI_TXT
    assert (tmp_path / "out" / "x.png.hdr").read_bytes() == TESCAN_HDR
    assert copy_sidecars(folder / "x.tif", output, ()) == 0


def test_a_symlinked_sidecar_is_not_followed(tmp_path: Path) -> None:
    secret = write(tmp_path / "elsewhere" / "secret", b"not for the output share")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").symlink_to(secret)
    assert not copy_sidecar(tmp_path / "in" / "x.txt", tmp_path / "out" / "x.txt")
    assert not (tmp_path / "out" / "x.txt").exists()


def test_config_refuses_image_suffixes_and_non_suffixes(tmp_path: Path) -> None:
    assert parse_config({"output": {"sidecars": [".TXT"]}}).output.sidecars == (".TXT",)
    assert parse_config({}).output.sidecars == SUFFIXES
    for bad in ([".tif"], [".PNG"], ["txt"], [".a/b"]):
        with pytest.raises(ConfigError, match="output.sidecars"):
            parse_config({"output": {"sidecars": bad}}, tmp_path / "c.toml")


# --------------------------------------------------------------------------- the watcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watcher_hands_settled_sidecars_over_and_never_queues_them(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    write(root / "x.tif", b"image")
    write(root / "x.txt", HITACHI_TXT)
    write(root / "d" / "y.HDR", TESCAN_HDR)
    queue = SqlJobQueue(
        f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60.0, max_attempts=3, retry_backoff=1.0
    )
    try:
        # Even patterns that name .txt do not make a sidecar a job.
        cfg = WatchConfig(
            input_dir=root, settle_seconds=1.0, scan_interval=3600.0, patterns=("*.tif", "*.txt")
        )
        clock = FakeClock()
        handed: list[str] = []
        watcher = Watcher(cfg, queue, clock=clock, sidecars=SUFFIXES, on_sidecar=handed.append)
        assert watcher.scan().candidates == 3
        assert watcher.process_ready() == 0 and handed == []  # nothing has settled yet
        clock.now += 1.0
        assert watcher.process_ready() == 1
        assert [job.rel_path for job in queue.jobs(limit=10)] == ["x.tif"]
        assert sorted(handed) == ["d/y.HDR", "x.txt"]
        assert watcher.scan().candidates == 0  # handled: not handed over again

        write(root / "x.txt", HITACHI_TXT + b"Comment=edited\r\n")  # a changed sidecar
        os.utime(root / "x.txt", (time.time() + 60, time.time() + 60))
        assert watcher.scan().candidates == 1
        clock.now += 1.0
        watcher.process_ready()
        assert sorted(handed) == ["d/y.HDR", "x.txt", "x.txt"]

        def unavailable(rel: str) -> None:
            raise OSError(f"{rel}: output share gone")

        failing = Watcher(cfg, queue, clock=clock, sidecars=SUFFIXES, on_sidecar=unavailable)
        failing.scan()
        clock.now += 1.0
        failing.process_ready()  # logged, not raised
        assert failing.scan().candidates == 2  # retried at the next scan

        plain = Watcher(cfg, queue, clock=clock, sidecars=SUFFIXES)  # `semwatch enqueue`
        assert plain.is_ignored(root / "x.txt") and not plain.is_ignored(root / "x.tif")
        assert plain.scan().files_seen == 1
    finally:
        queue.close()


# --------------------------------------------------------------------------- end to end


def hitachi_tiff(seed: int) -> bytes:
    return tiff_bytes(
        gray_image(seed, 96, 128),
        metadata=None,
        extratags=[(271, "s", 0, "Hitachi", True), (272, "s", 0, "SU8230", True)],
    )


def test_colorize_copies_sidecars(tmp_path: Path, tiny_model: Path) -> None:
    src = tmp_path / "src"
    write(src / "day1" / "x.tif", hitachi_tiff(1))
    write(src / "day1" / "x.txt", HITACHI_TXT)
    write(src / "day1" / "x.hdr", TESCAN_HDR)
    write(src / "lone.txt", b"no image")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "semwatch",
            "colorize",
            str(src),
            "--output-dir",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model),
            "--chroma-size",
            "64",
            "--device",
            "cpu",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "day1",
        "day1/x.hdr",
        "day1/x.tif",
        "day1/x.txt",
    ]
    assert (out / "day1" / "x.txt").read_bytes() == HITACHI_TXT
    assert (out / "day1" / "x.hdr").read_bytes() == TESCAN_HDR


@pytest.mark.slow
def test_daemon_puts_sidecars_beside_outputs_also_when_they_come_late(
    tmp_path: Path, tiny_model: Path
) -> None:
    site = Site(tmp_path / "site", tiny_model)
    # Patterns that name .txt too: a sidecar still never becomes a job.
    site.write_config(watch={"patterns": ["*.tif", "*.txt"]})
    try:
        daemon = site.start()
        daemon.wait_ready()
        # A Hitachi pair as the microscope writes it: image and text file together.
        write_atomically(site.inbox / "x.tif", hitachi_tiff(1))
        write_atomically(site.inbox / "x.txt", HITACHI_TXT)
        # The text file arrives 5 s after its image, once the image is colorized.
        late_image = site.inbox / "day1" / "y.tif"
        write_atomically(late_image, hitachi_tiff(2))
        written_at = time.monotonic()
        write_atomically(site.inbox / "stray.txt", b"no image of that name")
        wait_until(lambda: (site.outbox / "day1" / "y.tif").is_file(), 120, "y.tif colorized")
        time.sleep(max(0.0, written_at + 5.0 - time.monotonic()))
        write_atomically(site.inbox / "day1" / "y.txt", HITACHI_TXT + b"Index=2\r\n")
        wait_until(lambda: (site.outbox / "day1" / "y.txt").is_file(), 120, "late y.txt copied")

        assert (site.outbox / "day1" / "y.txt").read_bytes() == HITACHI_TXT + b"Index=2\r\n"
        wait_until(lambda: (site.outbox / "x.txt").is_file(), 120, "x.txt copied")
        assert (site.outbox / "x.txt").read_bytes() == HITACHI_TXT
        # A sidecar edited after the fact is copied again.
        write_atomically(site.inbox / "x.txt", HITACHI_TXT + b"Comment=edited\r\n")
        wait_until(
            lambda: (site.outbox / "x.txt").read_bytes().endswith(b"edited\r\n"), 120, "edited x.txt copied"
        )

        assert sorted(p.relative_to(site.outbox).as_posix() for p in site.outputs()) == [
            "day1/y.tif",
            "day1/y.txt",
            "x.tif",
            "x.txt",
        ]
        assert sorted(job.rel_path for job in site.jobs()) == ["day1/y.tif", "x.tif"]
        assert site.counts()["done"] == 2
        with tifffile.TiffFile(site.outbox / "x.tif") as tf:
            assert tf.pages[0].tags[271].value == "Hitachi"
        assert not [p for p in site.outbox.rglob("*") if p.name.startswith(TEMP_PREFIX)]
        assert daemon.stop() == 0
        assert daemon.has_event("sidecar copied", path="day1/y.txt")
    finally:
        site.stop_all()
