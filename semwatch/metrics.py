"""Prometheus metrics of the daemon, served on ``[metrics] listen`` (off when it is not set).

Each daemon owns its registry (never prometheus_client's global one), so two daemons in
one process keep apart. Two kinds of numbers:

- What this daemon did since it started, observed as it happens: jobs done and failed
  (counters), arrival-to-done latency, images per batch and seconds per batch
  (histograms).
- What the database says now, read at every scrape by ``QueueCollector`` through the
  callables in ``MetricSources``: jobs by state, the age of the oldest pending job,
  workers alive, and the model in use. Never a cached copy, so they agree with
  ``semwatch status`` and with every other daemon on the same queue.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from semwatch import __version__
from semwatch.log import get_logger
from semwatch.queue import JobState, QueueStats

if TYPE_CHECKING:
    from semwatch.engine import Colorizer

log = get_logger(__name__)

# Arrival (the file seen settled and queued) to output written: at least settle_seconds,
# minutes while a backlog drains, hours when the service was down.
LATENCY_BUCKETS = (
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
)
# engine.batch_size is 4 by default; larger GPUs take 16-64.
BATCH_IMAGES_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# One forward pass: tens of milliseconds on a GPU, seconds to a minute on a CPU.
BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SHA256_PREFIX = 12
# Bind errors a restart cannot fix: the address is not this host's, or not a host at all.
_CONFIG_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


class MetricsError(RuntimeError):
    """The metrics server cannot start; one line naming the address and the reason."""

    def __init__(self, message: str, *, config_error: bool) -> None:
        super().__init__(message)
        # True: the configured address can never work here (a restart does not help).
        self.config_error = config_error


@dataclass(frozen=True)
class ModelInfo:
    """The model labels of ``semwatch_model_info``."""

    name: str
    sha256: str
    backend: str
    precision: str
    device: str

    @classmethod
    def of(cls, colorizer: Colorizer) -> ModelInfo:
        info = colorizer.info  # the engine's one description of itself, as provenance reads it
        return cls(info.model_name, info.model_sha256, info.backend, info.precision, info.device)


@dataclass(frozen=True)
class MetricSources:
    """What a scrape reads, passed in by the daemon; each is called once per scrape, from
    the metrics server's thread. A source that raises is logged and its metrics left out
    of that scrape; the others are still served."""

    queue_stats: Callable[[], QueueStats]  # counts by state and the oldest pending age
    workers_alive: Callable[[], int]
    model: Callable[[], ModelInfo | None]  # None: no model loaded (yet)


class QueueCollector(Collector):
    """Jobs by state, oldest pending age, workers alive and model info, read at scrape time."""

    def __init__(self, sources: MetricSources) -> None:
        self._sources = sources

    def describe(self) -> Iterator[Metric]:
        # The names only (the registry checks them for clashes); no database read.
        yield _jobs_family()
        yield _oldest_family()
        yield _workers_family()
        yield _model_family()

    def collect(self) -> Iterator[Metric]:
        stats = self._read("queue_stats", self._sources.queue_stats)
        if stats is not None:
            jobs = _jobs_family()
            for state in JobState:
                jobs.add_metric([state.value], stats.counts.get(state.value, 0))
            yield jobs
            oldest = _oldest_family()
            oldest.add_metric([], stats.oldest_pending_age_s or 0.0)
            yield oldest
        alive = self._read("workers_alive", self._sources.workers_alive)
        if alive is not None:
            workers = _workers_family()
            workers.add_metric([], alive)
            yield workers
        model = self._read("model", self._sources.model)
        if model is not None:
            info = _model_family()
            info.add_metric(
                [],
                {
                    "model": model.name,
                    "sha256": model.sha256[:SHA256_PREFIX],
                    "backend": model.backend,
                    "precision": model.precision,
                    "device": model.device,
                    "version": __version__,
                },
            )
            yield info

    @staticmethod
    def _read(name: str, source: Callable[[], object]) -> object | None:
        try:
            return source()
        except Exception as exc:  # noqa: BLE001 - one unreadable source must not fail the scrape
            log.warning("metrics source failed; left out of this scrape", source=name, error=str(exc))
            return None


def _jobs_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "semwatch_jobs",
        "Jobs in the queue by state, read from the database at scrape time "
        "(superseded failures not counted, as in semwatch status).",
        labels=["state"],
    )


def _oldest_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "semwatch_oldest_pending_age_seconds",
        "Seconds since the oldest pending job arrived (0 when none is pending).",
    )


def _workers_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("semwatch_workers_alive", "Worker processes able to colorize jobs now.")


def _model_family() -> InfoMetricFamily:
    return InfoMetricFamily("semwatch_model", "The generator this daemon colorizes with.")


class DaemonMetrics:
    """One daemon's metrics: its own registry, the observations, the HTTP server."""

    def __init__(self, sources: MetricSources) -> None:
        self.registry = CollectorRegistry()
        # CPU, memory, open files and the Python version: cheap, read at scrape time.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._done = Counter(
            "semwatch_jobs_done",
            "Jobs whose output this daemon wrote and recorded done, since it started.",
            registry=self.registry,
        )
        self._failed = Counter(
            "semwatch_jobs_failed",
            "Jobs this daemon recorded failed for good (no attempts left, or an input that can "
            "never succeed), since it started.",
            registry=self.registry,
        )
        self._retried = Counter(
            "semwatch_job_retries",
            "Failed attempts this daemon returned to the queue for a retry, since it started.",
            registry=self.registry,
        )
        self._latency = Histogram(
            "semwatch_job_latency_seconds",
            "Seconds from a job's arrival (its file found settled and queued) to its output "
            "written and recorded.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch_images = Histogram(
            "semwatch_batch_images",
            "Images per batch given to the network.",
            buckets=BATCH_IMAGES_BUCKETS,
            registry=self.registry,
        )
        self._batch_seconds = Histogram(
            "semwatch_batch_seconds",
            "Seconds the network took per batch.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(QueueCollector(sources))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ---- observations (any thread)

    def job_done(self, latency_s: float) -> None:
        self._done.inc()
        # The arrival time is wall clock; a clock step backwards must not make it negative.
        self._latency.observe(max(latency_s, 0.0))

    def job_failed(self, state: JobState) -> None:
        """A failure recorded; ``state`` is the job's state after it (failed or pending)."""
        if state is JobState.FAILED:
            self._failed.inc()
        else:
            self._retried.inc()

    def batch(self, images: int, seconds: float) -> None:
        self._batch_images.observe(images)
        self._batch_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)

    # ---- the server

    def serve(self, address: tuple[str, int]) -> tuple[str, int]:
        """Serve /metrics on (host, port) from a background thread; returns the bound address."""
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            config_error = isinstance(exc, socket.gaierror) or exc.errno in _CONFIG_ERRNOS
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {reason}", config_error=config_error
            ) from None
        bound = self._server.server_address
        log.info("metrics served", url=f"http://{_url_host(host)}:{bound[1]}/metrics")
        return host, int(bound[1])

    def close(self) -> None:
        """Stop the server (if any); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
