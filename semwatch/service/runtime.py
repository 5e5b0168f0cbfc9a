"""What the parts of the service share: the configuration in force and what follows from it
(folders, styles, storage guard), the queue and this process's owner identity, the model,
the leases held, the metrics and the watcher.

One :class:`Runtime` per daemon; the worker cycle, the output writer, the heartbeat and the
watch keeper hold the same one, and a reload changes it in one place
(:meth:`Runtime.reconfigure`), between batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from semwatch.layout import OutputLayout
from semwatch.metrics import DaemonMetrics, MetricSources, ModelInfo
from semwatch.queue import JobQueue, Owner, QueueStats
from semwatch.service.storage import StorageGuard
from semwatch.styles import StyleFinder

if TYPE_CHECKING:
    from semwatch.config import Config
    from semwatch.engine import Colorizer
    from semwatch.watcher import Watcher


class Leases:
    """Ids of the jobs this daemon holds (claimed and not yet done, failed or released)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()

    def add(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.update(ids)

    def discard(self, job_id: int) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def snapshot(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Any, list[Any]] = {}  # key -> [lock, holders and waiters]

    @contextmanager
    def holding(self, key: Any) -> Iterator[None]:
        with self._lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


@dataclass(eq=False)
class Runtime:
    """The service's shared state (see the module's docstring)."""

    config: Config
    queue: JobQueue | None = None  # open from start-up to shutdown
    owner: Owner = field(default_factory=Owner.current)
    colorizer: Colorizer | None = None  # a worker's, once loaded
    watcher: Watcher | None = None  # while this daemon holds its folder's watch lock
    leases: Leases = field(default_factory=Leases)
    layout: OutputLayout = field(init=False)
    styles: StyleFinder = field(init=False)
    storage: StorageGuard = field(init=False)
    metrics: DaemonMetrics = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.layout = OutputLayout.of(cfg)
        self.styles = StyleFinder(cfg.watch.input_dir, cfg.engine.style)
        self.storage = StorageGuard(cfg.watch.input_dir, cfg.output.dir)
        self.metrics = DaemonMetrics(
            MetricSources(
                queue_stats=self._queue_stats,
                workers_alive=self._workers_alive,
                model=lambda: None if self.colorizer is None else ModelInfo.of(self.colorizer),
            )
        )

    @property
    def role(self) -> str:
        return self.config.daemon.role

    @property
    def jobs(self) -> JobQueue:
        """The open queue (RuntimeError before start-up or after shutdown)."""
        queue = self.queue  # once: shutdown sets it to None
        if queue is None:
            raise RuntimeError("queue not open")
        return queue

    def reconfigure(self, new: Config) -> None:
        """A reloaded configuration (its queue, daemon and metrics sections unchanged)."""
        self.layout = OutputLayout.of(new)
        self.styles = StyleFinder(new.watch.input_dir, new.engine.style)
        self.storage = self.storage.for_roots(new.watch.input_dir, new.output.dir)
        self.config = new

    def _queue_stats(self) -> QueueStats:
        # Counts and backlog age are all a scrape shows: not the latency median's rows.
        return self.jobs.stats(details=False)

    def _workers_alive(self) -> int:
        # From the heartbeat rows: every worker on this database, whichever host it runs on,
        # so a scrape of any one daemon (a watcher too) sees a dead worker fleet.
        return self.jobs.alive_workers()
