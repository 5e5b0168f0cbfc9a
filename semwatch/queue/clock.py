"""The clock of a queue shared by several hosts: the database server's."""

from __future__ import annotations

import time
from collections.abc import Callable

# How often ServerClock asks the server for its time.
SERVER_CLOCK_SYNC_SECONDS = 60.0


class ServerClock:
    """The database server's clock, for a PostgreSQL queue shared by several hosts.

    Leases, back-offs and heartbeats written on one host are compared on another: with each
    host's own clock, a host running a minute fast would take other hosts' jobs a minute
    early. The server's clock is the one all hosts share. It is read once per
    SERVER_CLOCK_SYNC_SECONDS and carried forward on this host's monotonic clock, rather
    than read in every statement: one round trip a minute instead of one per operation,
    and leases are minutes long, so its milliseconds of error do not matter.
    """

    def __init__(self, read_server: Callable[[], float], sync_seconds: float = SERVER_CLOCK_SYNC_SECONDS):
        self._read_server = read_server
        self._sync_seconds = sync_seconds
        self._base: tuple[float, float] | None = None  # (server epoch, local monotonic)

    def __call__(self) -> float:
        local = time.monotonic()
        base = self._base
        if base is None or local - base[1] >= self._sync_seconds:
            before = time.monotonic()
            server = self._read_server()
            after = time.monotonic()
            # The server read its clock somewhere in the round trip: take the middle.
            base = self._base = (server, (before + after) / 2)
            local = after
        return base[0] + (local - base[1])
