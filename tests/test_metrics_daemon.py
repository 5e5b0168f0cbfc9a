"""The metrics endpoint of a real `semwatch run` subprocess, scraped over HTTP while it works.

Nothing is mocked: real folders, real SQLite, the real watchdog observer, a tiny random
generator on the CPU. Which TCP ports the daemon listens on is read from /proc (its socket
descriptors against the kernel's table of listening sockets), so "no endpoint" is checked
for every port, not just the one a test happens to try.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import pytest
from daemon_harness import Site, gray_image, png_bytes, provenance, wait_until, write_atomically
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

IMAGES = 3


@pytest.fixture
def site(tmp_path: Path, tiny_model: Path):
    site = Site(tmp_path / "site", tiny_model)
    yield site
    site.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)  # header
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_a_scrape_during_a_run_sees_the_work_counted(site: Site) -> None:
    port = free_port()
    # precision set, not "auto": the label must show what was configured on any CPU.
    site.write_config(metrics={"listen": f"127.0.0.1:{port}"}, engine={"precision": "fp32"})
    daemon = site.start()
    daemon.wait_ready()
    assert port in listening_ports(daemon.pid)
    assert daemon.has_event("metrics served", url=f"http://127.0.0.1:{port}/metrics")

    before = scrape(port)
    assert value(before, "semwatch_jobs_done_total") == 0
    assert value(before, "semwatch_jobs", state="done") == 0
    assert value(before, "semwatch_job_latency_seconds_count") == 0
    assert value(before, "semwatch_workers_alive") == 1
    info = [labels for (name, labels) in before if name == "semwatch_model_info"]
    assert len(info) == 1
    model = dict(info[0])
    assert (model["model"], model["backend"], model["precision"], model["device"]) == (
        "tiny-random",
        "eager",
        "fp32",
        "cpu",
    )

    for i in range(IMAGES):
        write_atomically(site.inbox / f"img{i}.png", png_bytes(gray_image(i)))
    assert site.wait_settled(IMAGES)["done"] == IMAGES

    # The counter moves just after the job is recorded done: wait for that, not a fixed time.
    def all_counted() -> dict | None:
        samples = scrape(port)
        return samples if value(samples, "semwatch_jobs_done_total") == IMAGES else None

    after = wait_until(all_counted, 60, f"semwatch_jobs_done_total == {IMAGES}")
    assert value(after, "semwatch_jobs", state="done") == IMAGES
    assert value(after, "semwatch_jobs", state="pending") == 0
    assert value(after, "semwatch_jobs_failed_total") == 0
    assert value(after, "semwatch_oldest_pending_age_seconds") == 0
    assert value(after, "semwatch_job_latency_seconds_count") == IMAGES
    # Arrival is when the file was found settled, so every latency is a real, positive span.
    assert value(after, "semwatch_job_latency_seconds_sum") > 0
    batches = value(after, "semwatch_batch_images_count")
    assert 1 <= batches <= IMAGES
    assert value(after, "semwatch_batch_images_sum") == IMAGES
    assert value(after, "semwatch_batch_seconds_count") == batches
    assert value(after, "semwatch_batch_seconds_sum") > 0
    # The model label is the one the outputs' provenance names.
    written = provenance(site.outputs()[0])["model"]["sha256"]
    assert model["sha256"] == written[:12]

    assert daemon.stop() == 0
    assert not daemon.has_event("metrics source failed; left out of this scrape")


def test_no_endpoint_when_metrics_are_not_configured(site: Site) -> None:
    daemon = site.start()
    daemon.wait_ready()
    write_atomically(site.inbox / "one.png", png_bytes(gray_image(7)))
    site.wait_settled(1)
    assert listening_ports(daemon.pid) == set()
    assert not daemon.has_event("metrics served")
    assert daemon.stop() == 0


def test_a_port_in_use_stops_the_start_with_one_line_naming_the_key(site: Site) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site.write_config(metrics={"listen": f"127.0.0.1:{port}"})
        daemon = site.start()
        assert daemon.proc.wait(120) == 1  # not 78: the port may be free at the next restart
    [event] = [e for e in daemon.events() if e.get("event") == "semwatch daemon cannot start"]
    assert event["reason"] == (
        f"cannot serve metrics on 127.0.0.1:{port}: Address already in use (metrics.listen in {site.config})"
    )
    assert not daemon.has_event("model loaded")  # refused before the slow part
