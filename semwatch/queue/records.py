"""The queue's public records: its error, a job and its states, a lease owner, statistics."""

from __future__ import annotations

import enum
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

# sha256 of a failed job recorded for a file whose content could not be read (unreadable,
# unusable name): `status` shows the file; its readable content becomes a job of its own.
UNKNOWN_CONTENT = ""
# QueueStats: how many standing failures it lists, and the jobs its median latency covers.
RECENT_FAILURES = 10
LATENCY_WINDOW_S = 3600.0
LATENCY_MAX_JOBS = 1000


class QueueError(RuntimeError):
    """A configuration or database problem; the message is one line naming the database."""


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: one daemon run (a new token at every start)."""

    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        """This process; call once per daemon start and keep the result (the token is new)."""
        return cls(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex)


@dataclass(frozen=True)
class DaemonBeat:
    """One daemon run's heartbeat row, times on the queue's clock."""

    host: str
    pid: int
    role: str  # ROLES: all, watcher, worker
    started_at: float
    last_seen: float  # its latest beat (or its clean stop)
    stopped_at: float | None = None  # set when it stopped cleanly


@dataclass(frozen=True)
class Job:
    id: int
    rel_path: str
    sha256: str
    size: int
    mtime: float
    state: JobState
    attempts: int
    arrived_at: float
    error: str | None
    output_path: str | None
    # When the current attempt's work began (None: not started; the claim costs nothing).
    attempt_started: float | None = None
    # The done job of the path's current content that made this failure history.
    superseded_by: int | None = None
    # In hand when a process died (DESIGN.md "Queue"): claimed alone, never decoded ahead.
    crash_suspect: bool = False
    # A done job whose sidecar could not be copied beside its output: why (one line).
    sidecar_error: str | None = None


@dataclass(frozen=True)
class QueueStats:
    counts: dict[str, int]
    oldest_pending_age_s: float | None
    # Jobs done per minute over the last 10 minutes and the last hour.
    throughput_per_min: dict[str, float]
    # Arrival -> done, median over the jobs done in the last hour (at most the latest 1000).
    median_latency_s: float | None
    # [{"path", "error", "at" (epoch seconds)}], newest first.
    recent_failures: list[dict[str, Any]] = field(default_factory=list)
    # Done jobs whose sidecars are not all beside their output: [{"id", "path", "output",
    # "error", "at"}], newest first.
    sidecar_problems: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The `semwatch status --json` shape of DESIGN.md."""
        return {
            "counts": dict(self.counts),
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "throughput_per_min": dict(self.throughput_per_min),
            "median_latency_s": self.median_latency_s,
            "recent_failures": [dict(f) for f in self.recent_failures],
            "sidecar_problems": [dict(p) for p in self.sidecar_problems],
        }
