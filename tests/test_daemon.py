"""The daemon as systemd runs it: `semwatch run` in a subprocess, real folders, real SQLite.

Nothing is mocked. Each test builds a site (config.toml, inbox/, outbox/, var/) in tmp_path
with a tiny random generator and a small chroma_size, so compute is quick; the time goes
into starting Python + torch, which is why related checks share one daemon run.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon_harness import (
    Site,
    gray_image,
    huge_header_tiff,
    input_files,
    names,
    output_for,
    png_bytes,
    provenance,
    sha256_of,
    temp_files,
    tiff_bytes,
    wait_until,
    write_atomically,
    write_slowly,
)
from semwatch.model import GeneratorConfig, build_generator, save_generator
from semwatch.queue import JobState

pytestmark = pytest.mark.slow


@pytest.fixture
def make_site(tmp_path: Path, tiny_model: Path):
    sites: list[Site] = []

    def make(**kwargs) -> Site:
        site = Site(tmp_path / f"site{len(sites)}", tiny_model, **kwargs)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop_all()


def _assert_outputs_match_inputs(site: Site) -> None:
    """Exactly one output per input, made from the input's final bytes."""
    inputs = input_files(site.inbox)
    assert names(site.outputs(), site.outbox) == names((output_for(site, p) for p in inputs),
                                                       site.outbox)
    for source in inputs:
        record = provenance(output_for(site, source))
        assert record["source"]["sha256"] == sha256_of(source), source


# --------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_arrivals_are_colorized_exactly_once_also_while_stopped(make_site, polling: bool) -> None:
    site = make_site(polling=polling)
    site.write_config(watch={"settle_seconds": 1.5})
    for i in range(3):  # already there before the first start
        write_atomically(site.inbox / f"early{i}.png", png_bytes(gray_image(100 + i)))
    daemon = site.start()
    daemon.wait_ready()

    slow = [(site.inbox / "slow" / f"s{i:02d}.tif", tiff_bytes(gray_image(i, 128, 160)))
            for i in range(10)]
    writers = [threading.Thread(target=write_slowly, args=(path, data, 12, 0.25))
               for path, data in slow]
    for thread in writers:
        thread.start()
    for i in range(37):
        folder = site.inbox / ("a" if i % 2 else "b/c")
        write_atomically(folder / f"img{i:02d}.png", png_bytes(gray_image(20 + i)))
    for thread in writers:
        thread.join()

    counts = site.wait_settled(50)
    assert counts == {"pending": 0, "running": 0, "done": 50, "failed": 0}
    jobs = site.jobs()
    # One job per file and every one done at the first attempt: no partial version of a
    # slowly written file was ever queued, and none was read before it was complete
    # (the provenance hash is the hash of the bytes decoded).
    assert len(jobs) == 50 and {job.attempts for job in jobs} == {1}
    _assert_outputs_match_inputs(site)
    for path, data in slow:
        assert provenance(output_for(site, path))["source"]["sha256"] == sha256_of(path)
    assert daemon.stop() == 0
    assert not temp_files(site.outbox)

    # While stopped: new files, and new content under an old name.
    for i in range(4):
        write_atomically(site.inbox / "later" / f"l{i}.png", png_bytes(gray_image(200 + i)))
    changed = site.inbox / "a" / "img01.png"
    write_atomically(changed, png_bytes(gray_image(999)))
    daemon = site.start()
    counts = site.wait_settled(55)
    assert counts["done"] == 55 and counts["failed"] == 0
    _assert_outputs_match_inputs(site)
    assert provenance(output_for(site, changed))["source"]["sha256"] == sha256_of(changed)
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- crashes


def test_kill_9_during_batches_twice_then_restart_gives_one_output_each(make_site) -> None:
    site = make_site()
    site.write_config(engine={"chroma_size": 256, "batch_size": 4})
    for i in range(40):
        write_atomically(site.inbox / f"k{i:02d}.png", png_bytes(gray_image(i, 384, 512)))
    recovered = []
    for _ in range(2):
        daemon = site.start()
        # Killed once work is under way: these attempts count (merely claimed ones do not).
        running = wait_until(lambda: [j for j in site.jobs(JobState.RUNNING) if j.attempt_started],
                             120, "a batch in flight", interval=0.02)
        daemon.kill()
        assert running
        recovered.append(len(site.jobs(JobState.RUNNING)))
    # The killed runs left leases (and perhaps half-written temp files) behind.
    assert all(n > 0 for n in recovered)

    daemon = site.start()
    site.wait_settled(40)
    assert not temp_files(site.outbox)
    _assert_outputs_match_inputs(site)
    status = site.status()
    assert status["counts"] == {"pending": 0, "running": 0, "done": 40, "failed": 0}
    # The interrupted jobs were re-run, their crashes counted as attempts.
    assert max(job.attempts for job in site.jobs()) >= 2
    assert daemon.has_event("queue open") and any(
        e.get("recovered_jobs", 0) > 0 for e in daemon.events() if e.get("event") == "queue open")
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_with_a_reason_and_good_ones_are_done(make_site) -> None:
    site = make_site()
    good16 = (gray_image(1).astype(np.uint16) * 200 + 1000)
    bad = {
        "zero.tif": b"",
        "truncated.tif": tiff_bytes(gray_image(2, 256, 256))[:9000],
        "random.png": np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text.tif": b"this is not an image, it is a text file\n" * 20,
        "huge.tif": huge_header_tiff(),
        "volume.tif": tiff_bytes(np.zeros((2, 3, 32, 32, 3), np.uint8), photometric="rgb"),
    }
    colored = np.stack([gray_image(5), gray_image(6), np.full((96, 128), 30, np.uint8)], axis=-1)
    good = {
        "good.png": png_bytes(gray_image(4)),
        "good16.tif": tiff_bytes(good16),
        "float32.tif": tiff_bytes(gray_image(7).astype(np.float32) / 255.0 * 3.5 - 1.0),
        "rgb.png": png_bytes(colored),
    }
    for name, data in {**bad, **good}.items():
        write_atomically(site.inbox / name, data)

    daemon = site.start()
    site.wait_settled(len(bad) + len(good))
    assert daemon.alive()
    jobs = {job.rel_path: job for job in site.jobs()}
    for name in bad:
        job = jobs[name]
        assert job.state == JobState.FAILED, (name, job)
        assert job.attempts == 1, f"{name}: an undecodable file is not retried"
        assert job.error and "\n" not in job.error and len(job.error) < 300, job.error
    assert "(2, 3, 32, 32, 3)" in jobs["volume.tif"].error
    for name in good:
        assert jobs[name].state == JobState.DONE, (name, jobs[name].error)
    assert provenance(site.outbox / "float32.tif")["source"]["dtype"] == "float32"
    assert provenance(site.outbox / "float32.tif")["source"]["window"] is not None
    assert any(e.get("event") == "input warning" and e.get("path") == "rgb.png"
               for e in daemon.events())

    failures = {f["path"]: f for f in site.status()["recent_failures"]}
    assert set(failures) == set(bad)
    assert all(f["error"] and "\n" not in f["error"] for f in failures.values())
    table = site.cli("status").stdout
    assert "failed" in table and "huge.tif" in table
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- systemd


class _NotifyListener:
    """What systemd does for Type=notify: a datagram socket named by $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for _, m in self.messages if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_systemd_notify_protocol_and_sigterm_mid_batch(make_site, tmp_path: Path) -> None:
    site = make_site()
    site.write_config(engine={"chroma_size": 256, "batch_size": 2})
    listener = _NotifyListener(tmp_path / "notify.sock")
    try:
        daemon = site.start(env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"})
        wait_until(lambda: listener.with_key("READY"), 120, "READY=1")
        # READY=1 only once the model is loaded.
        assert daemon.has_event("model loaded")
        for i in range(16):
            write_atomically(site.inbox / f"t{i:02d}.png", png_bytes(gray_image(i, 384, 512)))
        wait_until(lambda: site.jobs(JobState.RUNNING), 60, "a batch in flight", interval=0.02)
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
        wait_until(lambda: listener.with_key("STOPPING"), 5, "STOPPING=1")
    finally:
        listener.close()

    assert len(listener.with_key("WATCHDOG")) >= 2
    statuses = [m["STATUS"] for m in listener.with_key("STATUS")]
    assert any("pending" in s and "done" in s for s in statuses), statuses
    # Leases released: nothing is left running, and unfinished jobs got their attempt back.
    jobs = site.jobs()
    assert not [j for j in jobs if j.state == JobState.RUNNING]
    assert all(j.attempts == 0 for j in jobs if j.state == JobState.PENDING)
    assert all((site.outbox / Path(j.rel_path).with_suffix(".tif")).is_file()
               for j in jobs if j.state == JobState.DONE)
    assert daemon.has_event("semwatch daemon stopped", exit_code=0)


def test_shutdown_timeout_exceeded_releases_leases_and_exits_non_zero(make_site) -> None:
    site = make_site()
    site.write_config(engine={"chroma_size": 512, "batch_size": 8},
                      daemon={"shutdown_timeout": 0.05})
    # Written before the start, so the start-up scan queues all 8 together and the first
    # claim is one batch of 8 full-size frames: seconds of work, far beyond 0.05 s, on any
    # machine. (Arriving live, they settle one by one and may go out in small batches that
    # finish inside the timeout.)
    for i in range(8):
        write_atomically(site.inbox / f"big{i}.png", png_bytes(gray_image(i, 2048, 2560)))
    daemon = site.start()
    daemon.wait_ready()
    wait_until(lambda: site.jobs(JobState.RUNNING), 60, "a batch in flight", interval=0.02)
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(60) != 0
    jobs = site.jobs()
    assert jobs and not [j for j in jobs if j.state == JobState.RUNNING]
    assert daemon.has_event("shutdown_timeout passed; releasing unfinished jobs")


# --------------------------------------------------------------------------- reload, storage


def test_sighup_swaps_the_model_and_a_broken_one_keeps_the_old(make_site, tmp_path: Path) -> None:
    site = make_site()
    model = tmp_path / "live.safetensors"
    config = GeneratorConfig(decoder_width=8)
    first = save_generator(model, build_generator(config), config, {"name": "first"})
    site.write_config(engine={"model": str(model)})
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "one.png", png_bytes(gray_image(1)))
    site.wait_settled(1)
    assert provenance(site.outbox / "one.tif")["model"] == {"name": "first", "sha256": first}

    # One daemon per database.
    second = site.start()
    assert second.proc.wait(120) == 1
    assert "another semwatch daemon" in second.log_path.read_text()

    retrained = save_generator(model, build_generator(config), config, {"name": "second"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("model reloaded", timeout=120)
    write_atomically(site.inbox / "two.png", png_bytes(gray_image(2)))
    site.wait_settled(2)
    assert provenance(site.outbox / "two.tif")["model"] == {"name": "second", "sha256": retrained}

    model.write_bytes(b"not a generator")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("model reload failed; keeping the current model", timeout=120)
    write_atomically(site.inbox / "three.png", png_bytes(gray_image(3)))
    site.wait_settled(3)
    assert provenance(site.outbox / "three.tif")["model"]["sha256"] == retrained
    assert daemon.alive()
    assert daemon.stop() == 0


def test_missing_output_share_pauses_without_using_attempts(make_site) -> None:
    site = make_site()
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "before.png", png_bytes(gray_image(1)))
    site.wait_settled(1)

    away = site.root / "outbox-unmounted"
    site.outbox.rename(away)  # the share goes away
    for i in range(3):
        write_atomically(site.inbox / f"during{i}.png", png_bytes(gray_image(10 + i)))
    daemon.wait_event("output paused: storage unavailable; jobs released without using attempts",
                      timeout=60)
    wait_until(lambda: site.counts()["pending"] == 3, 30, "3 jobs pending")
    time.sleep(1.0)
    counts = site.counts()
    assert counts["pending"] == 3 and counts["failed"] == 0
    assert all(j.attempts == 0 for j in site.jobs(JobState.PENDING))
    assert not site.outbox.exists(), "the daemon must not recreate an unmounted output root"

    away.rename(site.outbox)  # mounted again
    site.wait_settled(4, timeout=60)
    assert site.counts()["done"] == 4
    assert daemon.has_event("storage available again, resuming")
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- start-up errors


def test_configuration_errors_exit_78_with_one_clear_line(make_site, tmp_path: Path) -> None:
    site = make_site()
    site.write_config(engine={"model": str(tmp_path / "missing.safetensors")})
    daemon = site.start()
    assert daemon.proc.wait(60) == 78
    errors = [e for e in daemon.events() if e.get("level") == "error"]
    assert len(errors) == 1 and "missing.safetensors" in errors[0]["reason"]
    assert "engine.model" in errors[0]["reason"]

    site.config.write_text("[engine]\nbatch_size = 'four'\n")
    daemon = site.start()
    assert daemon.proc.wait(60) == 78
    assert "engine.batch_size" in daemon.log_path.read_text()
