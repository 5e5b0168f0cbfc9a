"""How the faces put the queue's and the service's state into words: durations, clock times
and the service's state line. One wording for `semwatch status` and the web UI (neither face
imports the other's private names)."""

from __future__ import annotations

import datetime as dt

from semwatch.queue import FORGET_SECONDS, DaemonBeat, DaemonState, ServiceState, redacted_url

ROLE_WORDS = {"all": "watches and colorizes", "watcher": "watches only", "worker": "colorizes"}
START_HINT = "`semwatch run`, or `systemctl start semwatch`"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days {hours % 24} h"


def clock_time(epoch: float) -> str:
    """A moment in this machine's local time."""
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def database_name(database_url: str) -> str:
    """The queue database as shown to people: the URL with any password hidden."""
    return redacted_url(database_url)


def service_headline(state: ServiceState) -> str:
    """One line: running (where, since when, last beat), several daemons, or stopped (when
    last seen)."""
    running = state.running
    if len(running) == 1:
        line = f"running on {_daemon_words(state, running[0])}"
    elif running:
        hosts = ", ".join(sorted({d.host for d in running}))
        line = f"running: {len(running)} daemons on {hosts}, {len(state.workers)} of them colorizing"
    else:
        last = state.last_seen
        if last is None:
            days = round(FORGET_SECONDS / 86400)
            return f"stopped: no daemon has run on this database in the last {days} days"
        how = (
            "stopped cleanly"
            if state.state_of(last) is DaemonState.STOPPED
            else "then stopped beating (killed, crashed, or its host is down)"
        )
        return (
            f"stopped: last seen {duration(state.age(last.last_seen))} ago "
            f"({clock_time(last.last_seen)}) on {last.host}, {how}"
        )
    if not state.workers:
        line += "; no worker colorizes, so pending jobs wait"
    return line


def service_details(state: ServiceState) -> list[str]:
    """A line per daemon when several ran (one running daemon is all in the headline)."""
    if len(state.running) <= 1 and len(state.daemons) <= 1:
        return []
    lines = []
    for daemon in state.daemons:
        status = state.state_of(daemon)
        seen = duration(state.age(daemon.last_seen))
        lines.append(
            f"{daemon.host} pid {daemon.pid} ({ROLE_WORDS.get(daemon.role, daemon.role)}): {status.value}, "
            + (
                f"since {clock_time(daemon.started_at)}, last beat {seen} ago"
                if status is DaemonState.RUNNING
                else f"last seen {seen} ago ({clock_time(daemon.last_seen)})"
            )
        )
    return lines


def waiting_note(state: ServiceState) -> str | None:
    """What a pending job waits for when nothing colorizes (None while a worker runs)."""
    if state.workers:
        return None
    return f"No worker is running: pending jobs wait until the service starts ({START_HINT})."


def _daemon_words(state: ServiceState, daemon: DaemonBeat) -> str:
    return (
        f"{daemon.host} (pid {daemon.pid}, {ROLE_WORDS.get(daemon.role, daemon.role)}) "
        f"since {clock_time(daemon.started_at)}, last beat {duration(state.age(daemon.last_seen))} ago"
    )
