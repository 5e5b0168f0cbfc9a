"""Sidecar metadata files (Hitachi/JEOL x.txt, TESCAN x.hdr beside x.tif).

The naming and copy rules on real folders; the watcher handing settled sidecars over
instead of queueing them; `semwatch colorize` and `semwatch run` (real subprocesses) putting
them beside the outputs, also when the sidecar arrives after its image was colorized.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cli_runs
import pytest
import tifffile
from daemon_harness import CLI, Site, gray_image, tiff_bytes, wait_until, write_atomically

from semwatch.cli import main
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
    assert copy_sidecars(folder / "x.tif", output, SUFFIXES).copied == 2
    assert (tmp_path / "out" / "x.png.txt").read_bytes() == HITACHI_TXT
    assert (tmp_path / "out" / "x.png.hdr").read_bytes() == TESCAN_HDR
    assert copy_sidecars(folder / "x.tif", output, ()).copied == 0


def test_a_symlinked_sidecar_is_not_followed(tmp_path: Path) -> None:
    secret = write(tmp_path / "elsewhere" / "secret", b"not for the output share")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").symlink_to(secret)
    assert not copy_sidecar(tmp_path / "in" / "x.txt", tmp_path / "out" / "x.txt")
    assert not (tmp_path / "out" / "x.txt").exists()


def test_a_sidecar_swapped_for_a_symlink_after_it_was_opened_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy opened the name again after its check: an outside file swapped in between
    landed in the output folder. Check and copy now go through one no-follow descriptor."""
    import semwatch.sidecars as sidecars_mod

    secret = write(tmp_path / "elsewhere" / "secret", b"root:x:0:0 not for the output share")
    source = write(tmp_path / "in" / "x.txt", HITACHI_TXT)
    real_atomic_path = sidecars_mod.atomic_path

    def swap_then_write(path: Path, suffix: str = ""):
        # The swap, forced into the window between the check and the copy of the old code.
        source.unlink()
        source.symlink_to(secret)
        return real_atomic_path(path, suffix)

    monkeypatch.setattr(sidecars_mod, "atomic_path", swap_then_write)
    target = tmp_path / "out" / "x.txt"
    copy_sidecar(source, target)
    assert not target.exists() or target.read_bytes() == HITACHI_TXT


def test_a_fifo_or_a_link_leading_out_is_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "x.txt")  # opened without blocking, refused by fstat
    secret = write(tmp_path / "elsewhere" / "y.txt", b"secret")
    (folder / "y.txt").symlink_to(secret)
    for name in ("x.txt", "y.txt"):
        assert not copy_sidecar(folder / name, tmp_path / "out" / name, inside=folder)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


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
    result = cli_runs.in_process(
        main,
        [
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


# A service that is not root: root reads a mode-000 file whatever its mode, so the daemon
# runs without that override (its capabilities' bounding set) when the tests run as root.
NO_ROOT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow
def test_an_unreadable_sidecar_does_not_fail_its_image(tmp_path: Path, tiny_model: Path) -> None:
    """x.txt with mode 000 failed x.tif three times (`cannot write x.tif: PermissionError …
    x.txt`) although x.tif was written each time."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: root reads a mode-000 file")
    site = Site(tmp_path / "site", tiny_model)
    site.write_config(queue={"max_attempts": 3})
    cli = [*NO_ROOT_OVERRIDE, *CLI] if os.geteuid() == 0 else CLI
    try:
        daemon = site.start(cli=cli)
        daemon.wait_ready()
        write_atomically(site.inbox / "x.txt", HITACHI_TXT)
        (site.inbox / "x.txt").chmod(0)
        write_atomically(site.inbox / "x.tif", hitachi_tiff(3))
        site.wait_settled(1)
        (job,) = site.jobs()
        assert (job.state.value, job.attempts, job.error) == ("done", 1, None), job
        assert [p.name for p in site.outputs()] == ["x.tif"]
        assert daemon.has_event("sidecar not copied", job_id=job.id)
        # Recorded on the job, not only in the log: `status` shows it for that job.
        assert job.sidecar_error is not None and "x.txt not copied" in job.sidecar_error, job
        assert "Permission denied" in job.sidecar_error
        (problem,) = site.status()["sidecar_problems"]
        assert (problem["id"], problem["path"]) == (job.id, "x.tif") and "x.txt" in problem["error"]
        text = site.cli("status").stdout
        assert f"{job.id}  x.tif: x.txt not copied" in text, text
        # Readable again and touched: the watcher copies it alone and the note is cleared.
        (site.inbox / "x.txt").chmod(0o644)
        os.utime(site.inbox / "x.txt")
        wait_until(lambda: (site.outbox / "x.txt").is_file(), 120, "x.txt copied once readable")
        wait_until(lambda: site.jobs()[0].sidecar_error is None, 60, "the job's sidecar note cleared")
        assert "sidecar missing" not in site.cli("status").stdout
        assert daemon.stop() == 0
    finally:
        site.stop_all()


@pytest.mark.slow
def test_a_new_sidecar_is_not_copied_beside_an_older_images_output(tmp_path: Path, tiny_model: Path) -> None:
    """x.tif + x.txt done; a new, undecodable x.tif and a new x.txt: the job failed, yet the
    new x.txt landed beside the old colorization."""
    site = Site(tmp_path / "site", tiny_model)
    try:
        daemon = site.start()
        daemon.wait_ready()
        write_atomically(site.inbox / "x.tif", hitachi_tiff(4))
        write_atomically(site.inbox / "x.txt", HITACHI_TXT)
        site.wait_settled(1)
        wait_until(lambda: (site.outbox / "x.txt").is_file(), 120, "x.txt copied")
        write_atomically(site.inbox / "x.tif", b"II*\x00" + b"not a TIFF after all" * 50)
        write_atomically(site.inbox / "x.txt", HITACHI_TXT + b"Index=2\r\n")
        site.wait_settled(2)
        wait_until(
            lambda: (
                daemon.has_event("sidecar waits for its image's new output", path="x.txt")
                or (site.outbox / "x.txt").read_bytes() != HITACHI_TXT
            ),
            120,
            "the new x.txt handled",
        )
        assert (site.outbox / "x.txt").read_bytes() == HITACHI_TXT  # the old image's own record
        assert site.counts()["failed"] == 1
        assert daemon.stop() == 0
    finally:
        site.stop_all()
