"""The service's state as the heartbeat rows tell it: which daemons run (where, since when,
their last beat), or when the service was last seen. What `semwatch status` and the web UI
show; the rows are written by the daemons themselves (JobQueue.beat / sign_off).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from semwatch.queue.interface import ALIVE_SECONDS, WORKER_ROLES, Fleet
from semwatch.queue.records import DaemonBeat


class DaemonState(str, enum.Enum):
    RUNNING = "running"  # beat within ALIVE_SECONDS
    STOPPED = "stopped"  # stopped cleanly (SIGTERM, systemctl stop)
    LOST = "lost"  # stopped beating without a goodbye: killed, crashed, or its host is down


@dataclass(frozen=True)
class ServiceState:
    """The daemons of one queue database at one moment (``now``, the queue's clock)."""

    now: float
    daemons: tuple[DaemonBeat, ...]  # latest beat first

    def state_of(self, daemon: DaemonBeat) -> DaemonState:
        if daemon.stopped_at is not None:
            return DaemonState.STOPPED
        if daemon.last_seen >= self.now - ALIVE_SECONDS:
            return DaemonState.RUNNING
        return DaemonState.LOST

    @property
    def running(self) -> tuple[DaemonBeat, ...]:
        return tuple(d for d in self.daemons if self.state_of(d) is DaemonState.RUNNING)

    @property
    def workers(self) -> tuple[DaemonBeat, ...]:
        """Running daemons that colorize (role all or worker): whether pending jobs move."""
        return tuple(d for d in self.running if d.role in WORKER_ROLES)

    @property
    def is_running(self) -> bool:
        return bool(self.running)

    @property
    def last_seen(self) -> DaemonBeat | None:
        """The daemon seen last (None: no daemon has run on this database in FORGET_SECONDS)."""
        return self.daemons[0] if self.daemons else None

    def age(self, epoch: float) -> float:
        return max(self.now - epoch, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """The "service" object of `semwatch status --json` (DESIGN.md)."""
        last = self.last_seen
        return {
            "state": "running" if self.is_running else "stopped",
            "hosts": sorted({d.host for d in self.running}),
            "workers": len(self.workers),
            "last_beat": None if last is None else last.last_seen,
            "last_beat_age_s": None if last is None else self.age(last.last_seen),
            "daemons": [
                {
                    "host": d.host,
                    "pid": d.pid,
                    "role": d.role,
                    "state": self.state_of(d).value,
                    "started_at": d.started_at,
                    "last_beat": d.last_seen,
                    "last_beat_age_s": self.age(d.last_seen),
                }
                for d in self.daemons
            ],
        }


def read_service_state(queue: Fleet) -> ServiceState:
    """The service's state now, on the queue's clock (the clock the daemons beat on)."""
    daemons = tuple(queue.daemons())
    return ServiceState(now=queue.now(), daemons=daemons)
