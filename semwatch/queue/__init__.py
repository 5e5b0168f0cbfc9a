"""The job queue, shaped like huey's storage layer: one small interface, a short back-end.

`JobQueue` (semwatch.queue.interface, which states the rules) is what the daemon, the
watcher and the CLI code against, made of the small protocols each caller needs (`Intake`,
`Claims`, `Status`, `Fleet`); `SqlJobQueue` (semwatch.queue.sql) is the SQLAlchemy
back-end behind it, on the tables of semwatch.queue.tables. `open_queue`
(semwatch.queue.database) opens the one configured in [queue]. Importers take every name
from here.
"""

from semwatch.queue.clock import ServerClock
from semwatch.queue.database import check_sqlite_is_local, database_revision, open_queue
from semwatch.queue.fleet import DaemonState, ServiceState, read_service_state
from semwatch.queue.interface import (
    ALIVE_SECONDS,
    FORGET_SECONDS,
    HEARTBEAT_SECONDS,
    ROLES,
    WORKER_ROLES,
    Claims,
    Fleet,
    Intake,
    JobQueue,
    Status,
)
from semwatch.queue.records import UNKNOWN_CONTENT, DaemonBeat, Job, JobState, Owner, QueueError, QueueStats
from semwatch.queue.sql import SqlJobQueue
from semwatch.queue.tables import SCHEMA_VERSION, Base
from semwatch.queue.urls import redacted_url, sqlite_path

__all__ = [
    "ALIVE_SECONDS",
    "FORGET_SECONDS",
    "HEARTBEAT_SECONDS",
    "ROLES",
    "SCHEMA_VERSION",
    "UNKNOWN_CONTENT",
    "WORKER_ROLES",
    "Base",
    "Claims",
    "Fleet",
    "Intake",
    "Status",
    "DaemonBeat",
    "DaemonState",
    "Job",
    "JobQueue",
    "JobState",
    "Owner",
    "QueueError",
    "QueueStats",
    "ServerClock",
    "ServiceState",
    "SqlJobQueue",
    "check_sqlite_is_local",
    "database_revision",
    "open_queue",
    "read_service_state",
    "redacted_url",
    "sqlite_path",
]
