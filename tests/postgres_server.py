"""A throw-away PostgreSQL cluster on loopback, for the tests and benchmarks/scale.py.

Debian's `postgresql` package: initdb into a temporary folder as the `postgres` user, then
pg_ctl start on a free port, trusting local connections (the cluster lives for one run and
listens on 127.0.0.1 only). `.ci/run` does the same in shell and exports
SEMWATCH_TEST_POSTGRES_URL; without it, the tests start a cluster of their own here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

ENV_URL = "SEMWATCH_TEST_POSTGRES_URL"
RUN_AS = "postgres"


def server_bin_dir() -> Path | None:
    """The newest installed server's binaries (/usr/lib/postgresql/<ver>/bin), or None."""
    root = Path("/usr/lib/postgresql")
    found = sorted(
        (p / "bin" for p in root.glob("*") if (p / "bin" / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def unavailable_reason() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if server_bin_dir() is None:
        return "PostgreSQL server binaries not installed (Debian package postgresql)"
    if os.geteuid() != 0:
        return "starting a PostgreSQL cluster needs root (runuser -u postgres)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", RUN_AS, "--", *args], capture_output=True, text=True, timeout=120, check=True
    )


@dataclass(frozen=True)
class Cluster:
    """A throw-away cluster that a test may stop and start again (a server outage)."""

    bin_dir: Path
    folder: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=200"
        self._pg_ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: ``fast`` rolls back open transactions and closes every connection."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        _as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), *args)


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """Start a cluster of its own (free port, temporary folder); stops and removes it."""
    bin_dir = server_bin_dir()
    assert bin_dir is not None, unavailable_reason()
    folder = Path(tempfile.mkdtemp(prefix="semwatch-pg-"))
    shutil.chown(folder, RUN_AS)
    handle = Cluster(bin_dir, folder, _free_port())
    _as_postgres(
        str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "--no-sync"
    )
    try:
        handle.start()
        yield handle
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                RUN_AS,
                "--",
                str(bin_dir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yields an admin URL (database `postgres`); stops and removes it."""
    with own_cluster() as handle:
        yield handle.admin_url


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server of `admin_url`; returns its URL."""
    name = "semwatch_test_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = sa.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        engine.dispose()
