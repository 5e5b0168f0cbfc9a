"""The systemd notify protocol (sd_notify), written out: it is one datagram per message.

systemd hands a `Type=notify` service the address of a datagram socket in
$NOTIFY_SOCKET (a path, or an abstract-namespace name when it starts with "@"); the
service sends newline-separated ``KEY=VALUE`` lines to it (READY=1, WATCHDOG=1,
STATUS=..., STOPPING=1). Outside systemd the variable is unset and every call is a no-op,
so the daemon can call these unconditionally.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from semwatch.errors import one_line
from semwatch.log import get_logger

log = get_logger(__name__)


def socket_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET -> a sendto() address; "@name" is the abstract namespace ("\\0name")."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects at most, or None when not watched.

    systemd sets WATCHDOG_USEC (WatchdogSec) and WATCHDOG_PID; a WATCHDOG_PID naming
    another process (a child that inherited the environment) means the watchdog is not ours.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid and wd_pid.isdigit() and int(wd_pid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


@dataclass
class Notifier:
    """Sends sd_notify messages to ``address``; ``address=None`` makes every call a no-op.

    A send failure is logged once (systemd restarting, socket gone) and never raised: the
    daemon's work must not depend on the supervisor listening.
    """

    address: str | None
    _failed: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message, e.g. ``send(READY=1, STATUS="idle")``; True when delivered."""
        if self.address is None or not fields:
            return False
        # A newline inside a value would start a new KEY=VALUE assignment.
        message = "\n".join(f"{key}={one_line(str(value))}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), socket_address(self.address))
        except OSError as exc:
            if not self._failed:
                log.warning(
                    "sd_notify failed",
                    socket=self.address,
                    error=os.strerror(exc.errno) if exc.errno else str(exc),
                    transient=exc.errno in (errno.EAGAIN, errno.ENOBUFS),
                )
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify delivered again", socket=self.address)
            self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 match the reload with its own request.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)
