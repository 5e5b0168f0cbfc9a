"""The daemon's Prometheus metrics without a daemon: the scrape-time collector on a real
SQLite queue, the counters and histograms, the HTTP server on a real socket, the config key.

Scrapes are parsed by prometheus_client's own text parser, as Prometheus would read them.
Time in the queue is moved by an injected clock, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from semwatch import __version__
from semwatch.config import ConfigError, MetricsConfig, load_config_file, parse_listen
from semwatch.metrics import DaemonMetrics, MetricsError, MetricSources, ModelInfo
from semwatch.queue import JobState, Owner, QueueStats, SqlJobQueue

T0 = 1_700_000_000.0
SHA = [c * 64 for c in "abcdef"]
MODEL = ModelInfo("tiny-random", "0123456789abcdef" * 4, "eager", "fp32", "cpu")


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[SqlJobQueue]:
    q = SqlJobQueue(
        f"sqlite:///{tmp_path / 'q.db'}", lease_seconds=60, max_attempts=2, retry_backoff=10, clock=clock
    )
    yield q
    q.close()


def metrics_on(queue: SqlJobQueue, workers: int = 1, model: ModelInfo | None = MODEL) -> DaemonMetrics:
    return DaemonMetrics(
        MetricSources(queue_stats=queue.stats, workers_alive=lambda: workers, model=lambda: model)
    )


# --------------------------------------------------------------------------- the collector


def test_jobs_by_state_and_oldest_pending_age_are_read_at_scrape_time(queue, clock) -> None:
    metrics = metrics_on(queue)
    empty = samples(metrics.exposition())
    assert [value(empty, "semwatch_jobs", state=s.value) for s in JobState] == [0, 0, 0, 0]
    assert value(empty, "semwatch_oldest_pending_age_seconds") == 0

    owner = Owner("here", 1, "t")
    for i in range(4):
        queue.enqueue(f"x{i}.png", SHA[i], 10, 1.0, arrived_at=T0 + i)
    clock.now = T0 + 10
    jobs = queue.claim(owner, 3)  # oldest first: x0, x1, x2
    queue.start(owner, [j.id for j in jobs])
    queue.complete(owner, jobs[0].id, "out/x0.tif")
    queue.fail(owner, jobs[1].id, "not an image", permanent=True)
    clock.now = T0 + 100

    scrape = samples(metrics.exposition())
    assert {s.value: value(scrape, "semwatch_jobs", state=s.value) for s in JobState} == {
        "pending": 1,
        "running": 1,
        "done": 1,
        "failed": 1,
    }
    # x3, the only pending job, arrived at T0 + 3.
    assert value(scrape, "semwatch_oldest_pending_age_seconds") == pytest.approx(97.0)
    # The same numbers as `semwatch status` (one source of truth).
    assert queue.stats().counts == {s.value: value(scrape, "semwatch_jobs", state=s.value) for s in JobState}

    # Not a cached copy: the next scrape sees the queue as it is then.
    queue.complete(owner, jobs[2].id, "out/x2.tif")
    clock.now = T0 + 200
    later = samples(metrics.exposition())
    assert value(later, "semwatch_jobs", state="done") == 2
    assert value(later, "semwatch_jobs", state="running") == 0
    assert value(later, "semwatch_oldest_pending_age_seconds") == pytest.approx(197.0)


def test_workers_alive_and_the_model_info(queue) -> None:
    scrape = samples(metrics_on(queue, workers=1).exposition())
    assert value(scrape, "semwatch_workers_alive") == 1
    labels = {
        "model": "tiny-random",
        "sha256": "0123456789ab",
        "backend": "eager",
        "precision": "fp32",
        "device": "cpu",
        "version": __version__,
    }
    assert value(scrape, "semwatch_model_info", **labels) == 1

    idle = samples(metrics_on(queue, workers=0, model=None).exposition())
    assert value(idle, "semwatch_workers_alive") == 0
    assert not [key for key in idle if key[0] == "semwatch_model_info"]


def test_an_unreadable_queue_leaves_its_metrics_out_and_says_why(queue) -> None:
    def broken() -> QueueStats:
        raise RuntimeError("database is locked")

    metrics = DaemonMetrics(MetricSources(queue_stats=broken, workers_alive=lambda: 1, model=lambda: MODEL))
    with capture_logs() as logs:
        scrape = samples(metrics.exposition())
    assert not [key for key in scrape if key[0] in ("semwatch_jobs", "semwatch_oldest_pending_age_seconds")]
    assert value(scrape, "semwatch_workers_alive") == 1  # the other sources still answer
    assert value(scrape, "semwatch_jobs_done_total") == 0
    [line] = [e for e in logs if e["event"] == "metrics source failed; left out of this scrape"]
    assert line["log_level"] == "warning"
    assert line["source"] == "queue_stats" and "database is locked" in line["error"]


# --------------------------------------------------------------------------- observations


def test_done_failed_latency_and_batches_are_counted(queue) -> None:
    metrics = metrics_on(queue)
    before = samples(metrics.exposition())
    for name in ("semwatch_jobs_done_total", "semwatch_jobs_failed_total", "semwatch_job_retries_total"):
        assert value(before, name) == 0
    assert value(before, "semwatch_job_latency_seconds_count") == 0
    assert value(before, "semwatch_batch_images_count") == 0

    for latency in (3.0, 7.0, 4000.0):
        metrics.job_done(latency)
    metrics.job_done(-2.0)  # the wall clock stepped back: counted, not negative
    metrics.job_failed(JobState.FAILED)
    metrics.job_failed(JobState.PENDING)  # a retry is not a failed job
    metrics.job_failed(JobState.PENDING)
    metrics.batch(4, 0.8)
    metrics.batch(1, 0.2)

    after = samples(metrics.exposition())
    assert value(after, "semwatch_jobs_done_total") == 4
    assert value(after, "semwatch_jobs_failed_total") == 1
    assert value(after, "semwatch_job_retries_total") == 2
    assert value(after, "semwatch_job_latency_seconds_count") == 4
    assert value(after, "semwatch_job_latency_seconds_sum") == pytest.approx(4010.0)
    assert value(after, "semwatch_job_latency_seconds_bucket", le="5.0") == 2  # -2 -> 0, and 3
    assert value(after, "semwatch_job_latency_seconds_bucket", le="3600.0") == 3
    assert value(after, "semwatch_job_latency_seconds_bucket", le="+Inf") == 4
    assert value(after, "semwatch_batch_images_count") == 2
    assert value(after, "semwatch_batch_images_sum") == 5
    assert value(after, "semwatch_batch_images_bucket", le="1.0") == 1
    assert value(after, "semwatch_batch_seconds_sum") == pytest.approx(1.0)


def test_two_daemons_in_one_process_keep_their_own_numbers(queue) -> None:
    first, second = metrics_on(queue), metrics_on(queue)
    first.job_done(1.0)
    first.job_done(1.0)
    second.job_done(1.0)
    assert value(samples(first.exposition()), "semwatch_jobs_done_total") == 2
    assert value(samples(second.exposition()), "semwatch_jobs_done_total") == 1


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_serves_the_registry_and_stops(queue) -> None:
    metrics = metrics_on(queue)
    host, port = metrics.serve(("127.0.0.1", free_port()))
    try:
        metrics.job_done(2.0)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as response:
            assert response.status == 200
            scrape = samples(response.read())
        assert value(scrape, "semwatch_jobs_done_total") == 1
        assert value(scrape, "semwatch_jobs", state="pending") == 0
    finally:
        metrics.close()
    metrics.close()  # a second close is harmless (start-up abort, then shutdown)
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30)
    assert isinstance(err.value.reason, ConnectionRefusedError)


def test_a_port_in_use_is_one_clear_error(queue) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as err:
            metrics_on(queue).serve(("127.0.0.1", port))
    assert str(err.value) == f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert not err.value.config_error  # the other program may go away: a restart can help


def test_an_address_of_another_host_is_a_configuration_error(queue) -> None:
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is never an address of this machine.
    with pytest.raises(MetricsError) as err:
        metrics_on(queue).serve(("192.0.2.1", free_port()))
    assert err.value.config_error
    assert str(err.value).startswith("cannot serve metrics on 192.0.2.1:") and "\n" not in str(err.value)


# --------------------------------------------------------------------------- configuration


def test_metrics_are_off_by_default() -> None:
    assert MetricsConfig().listen is None and MetricsConfig().address is None


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("metrics.example.org:65535", ("metrics.example.org", 65535)),
    ],
)
def test_listen_addresses(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address
    assert dataclasses.replace(MetricsConfig(), listen=listen).address == address


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("9464", 'expected "host:port"'),
        (":9464", 'expected "host:port"'),
        ("[]:9464", "the host is empty"),
        ("::1:9464", "in brackets"),
        ("127.0.0.1:0", "1 to 65535"),
        ("127.0.0.1:65536", "1 to 65535"),
        ("127.0.0.1:http", "1 to 65535"),
        ("127.0.0.1:", "1 to 65535"),
    ],
)
def test_a_bad_listen_value_names_key_value_and_file(tmp_path: Path, listen: str, reason: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    message = str(err.value)
    assert str(path) in message and f"metrics.listen = {listen!r}" in message and reason in message


def test_an_empty_listen_turns_metrics_off(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[metrics]\nlisten = ""\n')
    assert load_config_file(path).metrics.address is None


def test_every_metric_the_readme_names_is_served(queue) -> None:
    """The table, scrape set-up and alert rules an admin pastes name metrics that exist."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Monitoring with Prometheus") :]
    section = section[: section.index("\n## ")]
    named = set(re.findall(r"\bsemwatch_[a-z_]+", section))
    metrics = metrics_on(queue)
    metrics.job_done(1.0)
    families = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    served = families | {f"{name}_total" for name in families} | {f"{name}_info" for name in families}
    assert len(named) >= 9 and named <= served, named - served


def test_a_reload_keeps_the_served_address_until_the_next_restart(tmp_path: Path, tiny_model: Path) -> None:
    from semwatch.service.startup import reloaded_config

    (tmp_path / "in").mkdir()  # a reload never creates the watch or output folder
    (tmp_path / "out").mkdir()
    path = tmp_path / "config.toml"
    settings = f'[engine]\nmodel = "{tiny_model}"\n[watch]\ninput_dir = "in"\n[output]\ndir = "out"\n'
    path.write_text(settings + '[metrics]\nlisten = "127.0.0.1:9464"\n')
    running = load_config_file(path)
    path.write_text(settings + '[metrics]\nlisten = "127.0.0.1:9465"\n[logging]\nlevel = "debug"\n')
    with capture_logs() as logs:
        new = reloaded_config(running)
    assert new is not None and new.logging.level == "debug"  # the rest is reloaded
    assert new.metrics.listen == "127.0.0.1:9464"
    [line] = [e for e in logs if e["event"] == "sections need a restart"]
    assert line["sections"] == ["metrics"]
