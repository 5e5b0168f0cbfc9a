"""Running `semwatch run` as a real subprocess on real folders, for the daemon tests.

A `Site` is one installation in a temporary folder: config.toml, inbox/, outbox/, var/
(SQLite queue, unless `db_url` names a PostgreSQL database) and a tiny random generator.
`Site.start()` launches the daemon exactly as systemd would (`semwatch run --config FILE`,
optionally `--role`), stderr (JSON log lines) into a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from cli_runs import Ran, in_process
from PIL import Image

from semwatch.imaging import TEMP_PREFIX, read_provenance
from semwatch.queue import Job, JobState, SqlJobQueue

CLI = [sys.executable, "-c", "from semwatch.cli import main; main()"]


def other_host_cli(hostname: str) -> list[str] | str:
    """The CLI in a UTS namespace of its own whose host name is ``hostname``: to the queue it
    is a daemon on another host (same machine, same PID space). Where namespaces cannot be
    made, the reason instead (not root, no util-linux unshare, a container that forbids it)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "no unshare(1) (Debian: util-linux) to run a worker as another host"
    if os.geteuid() != 0:
        return "a UTS namespace (a worker as another host) needs root"
    tried = subprocess.run([unshare, "--uts", "true"], capture_output=True, text=True)
    if tried.returncode != 0:
        return f"cannot make a UTS namespace here: {tried.stderr.strip()}"
    code = f"import socket; socket.sethostname({hostname!r}); from semwatch.cli import main; main()"
    return [unshare, "--uts", sys.executable, "-c", code]


# Generous: a daemon start imports torch and builds the chroma table, which takes seconds
# on a loaded 2-core machine; a test fails on its assertion, not on a tight timeout.
START_TIMEOUT = 120.0
WORK_TIMEOUT = 120.0


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until condition() is truthy; returns its value or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance(path: Path) -> dict:
    """The semwatch provenance record of an output."""
    record = read_provenance(path)
    assert record is not None, f"{path}: no provenance record"
    return record["semwatch"]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# --------------------------------------------------------------------------- images


def gray_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 80 * np.sin(x / (5 + seed % 7)) * np.cos(y / 9)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, **kwargs: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """What a well-behaved exporter does: the file appears complete under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name("." + path.name + ".part")
    temp.write_bytes(data)
    os.replace(temp, path)


def write_slowly(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """What a microscope on a share does: the file grows under its final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // chunks)
    with path.open("wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()
            time.sleep(pause)


# --------------------------------------------------------------------------- the daemon


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict]:
        """The JSON log lines written so far (non-JSON lines are kept as {"raw": line})."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def has_event(self, event: str, **fields: Any) -> bool:
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items()) for e in self.events()
        )

    def wait_event(self, event: str, timeout: float = START_TIMEOUT, **fields: Any) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and not self.has_event(event, **fields):
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {event!r}:\n{self.log_tail()}"
                )
            return self.has_event(event, **fields)

        wait_until(seen, timeout, f"log event {event!r}")

    def wait_ready(self) -> None:
        self.wait_event("semwatch daemon ready")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler, no clean-up, like a power cut for the process
        self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Site:
    root: Path
    model: Path
    polling: bool = False
    # The queue database; None: a SQLite file in var/.
    db_url: str | None = None
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[DaemonProcess] = field(default_factory=list)
    # `cli` through click's runner in this process (status, enqueue, retry, db: the command
    # and its exit code are checked, not the process) instead of a new interpreter each time.
    in_process_cli: bool = False

    def __post_init__(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.write_config()

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.database}"

    def write_config(self, **sections: Mapping[str, Any]) -> None:
        """config.toml with test-sized settings; keyword sections override/extend keys."""
        config: dict[str, dict[str, Any]] = {
            "watch": {
                "input_dir": "inbox",
                "settle_seconds": 1.0,
                "scan_interval": 2.0,
                "polling": self.polling,
                "poll_interval": 0.5,
            },
            "output": {"dir": "outbox"},
            "queue": {
                "database_url": self.database_url,
                "lease_seconds": 120.0,
                "max_attempts": 5,
                "retry_backoff": 1.0,
            },
            "engine": {
                "model": str(self.model),
                "device": "cpu",
                "batch_size": 4,
                "max_batch_wait": 0.3,
                "chroma_size": 64,
                "threads": 1,
            },
            "daemon": {"state_dir": "var", "shutdown_timeout": 30.0},
            "logging": {"level": "info", "format": "json"},
        }
        for name, values in {**self.settings, **sections}.items():
            config.setdefault(name, {}).update(values)
        self.settings = {**self.settings, **sections}
        self.config.write_text(
            "".join(
                f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()) + "\n"
                for name, values in config.items()
            )
        )

    def start(
        self, env: Mapping[str, str] | None = None, role: str | None = None, cli: Sequence[str] = CLI
    ) -> DaemonProcess:
        log_path = self.root / f"daemon-{len(self.runs)}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if env is None or key not in env:
                environment.pop(key, None)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*cli, "run", "--config", str(self.config), *(["--role", role] if role else [])],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environment,
            )
        run = DaemonProcess(proc, log_path)
        self.runs.append(run)
        return run

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess | Ran:
        if self.in_process_cli:
            from semwatch.cli import main

            result: subprocess.CompletedProcess | Ran = in_process(
                main, [*args, "--config", str(self.config)]
            )
        else:
            result = subprocess.run(
                [*CLI, *args, "--config", str(self.config)],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=120,
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f"semwatch {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def queue(self) -> SqlJobQueue:
        return SqlJobQueue(self.database_url, lease_seconds=120, max_attempts=5, retry_backoff=1)

    @property
    def database(self) -> Path:
        return self.root / "var" / "semwatch.db"

    def _no_database_yet(self) -> bool:
        # A server database exists before the daemon starts (the test made it).
        return self.db_url is None and not self.database.exists()

    def jobs(self, state: JobState | None = None) -> list[Job]:
        if self._no_database_yet():
            return []  # the daemon has not created it yet
        queue = self.queue()
        try:
            return queue.jobs(state, limit=100_000)
        finally:
            queue.close()

    def counts(self) -> dict[str, int]:
        if self._no_database_yet():
            return {state.value: 0 for state in JobState}
        queue = self.queue()
        try:
            return queue.stats().counts
        finally:
            queue.close()

    def wait_settled(self, total: int, timeout: float = WORK_TIMEOUT) -> dict[str, int]:
        """Wait until `total` jobs exist and all of them are done or failed."""

        def settled() -> dict[str, int] | None:
            counts = self.counts()
            finished = counts["done"] + counts["failed"]
            return counts if finished >= total and not counts["pending"] and not counts["running"] else None

        return wait_until(settled, timeout, f"{total} jobs done or failed", interval=0.25)

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.outbox.rglob("*") if p.is_file())

    def stop_all(self) -> None:
        for run in self.runs:
            if run.alive():
                run.kill()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def input_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def output_for(site: Site, source: Path) -> Path:
    rel = source.relative_to(site.inbox)
    return site.outbox / rel.parent / (rel.stem + ".tif")


def names(paths: Iterable[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}
