"""sd_notify against real AF_UNIX datagram sockets bound by the test (as systemd binds them)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from semwatch.notify import Notifier, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def _receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_stopping_arrive_as_datagrams(listener) -> None:
    address, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("idle")
    assert _receive(sock) == {"READY": "1", "STATUS": "idle"}
    assert notifier.watchdog()
    assert _receive(sock) == {"WATCHDOG": "1"}
    assert notifier.status("pending 3\nrunning 1")
    # A newline inside a value would smuggle in another assignment; it is folded.
    assert _receive(sock) == {"STATUS": "pending 3 running 1"}
    assert notifier.reloading()
    message = _receive(sock)
    assert message["RELOADING"] == "1" and int(message["MONOTONIC_USEC"]) > 0
    assert notifier.stopping()
    assert _receive(sock) == {"STOPPING": "1"}


def test_abstract_namespace_address() -> None:
    name = f"semwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert socket_address("@" + name) == b"\0" + name.encode()
        assert Notifier("@" + name).ready()
        assert _receive(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_watchdog_interval_from_environment() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 30.0
    # Inherited by a child process: not ours to feed.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
