"""The storage interface of the job queue: what the daemon, the watcher and the CLI code against,
as small protocols, one per kind of caller (intake, claims, status, fleet); `JobQueue` is all of
them, and `SqlJobQueue` implements it.

A job is one source file version, (rel_path, sha256). States:
pending -> running -> done; running -> pending (retry after back-off, lease expiry, owner
gone, release) or failed (max_attempts reached, or a permanent error). Times are wall-clock
epoch seconds from an injectable clock.

Attempts: a claim takes an attempt provisionally; `start` makes it count (the job's work
began). A claim that never started costs nothing when its owner dies or releases it, so a
kill from outside does not fail good files, while a file that crashes the daemon during
its decode or compute still ends failed after max_attempts.

Isolation: every job in hand when its process died (started, or decoded ahead for the
next batch) becomes a crash suspect and is claimed alone until its attempt ends in order,
so a file that crashes the process is the only one to reach max_attempts.

The output follows the file's current content: a path whose content comes back to an
earlier version re-queues that version's finished job. A failed job is *superseded* once
the path's current version is done: it stays as history but no longer counts as failed.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from semwatch.queue.records import DaemonBeat, Job, JobState, Owner, QueueStats

# Daemon roles (`semwatch run --role`); those that claim and colorize jobs count as workers.
ROLES = ("all", "watcher", "worker")
WORKER_ROLES = frozenset({"all", "worker"})
# A daemon beats every HEARTBEAT_SECONDS; one not seen for ALIVE_SECONDS counts as dead. Its
# row stays after it stops (the service's "last seen") and is deleted after FORGET_SECONDS.
HEARTBEAT_SECONDS = 10.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS
FORGET_SECONDS = 7 * 86400.0


@runtime_checkable
class Intake(Protocol):
    """What the watcher (and `semwatch enqueue`) needs: file versions in, known files out."""

    @abc.abstractmethod
    def enqueue(
        self,
        rel_path: str,
        sha256: str,
        size: int,
        mtime: float,
        *,
        arrived_at: float | None = None,
        again: bool = False,
    ) -> int | None:
        """Queue one file version; returns the pending job's id, or None if nothing to do.

        Always records (size, mtime, sha256) as the path's latest version. A known version
        is not queued twice (DESIGN.md): its done or failed job is re-queued, attempts
        reset, only when the path's content came back to it from another version (its
        output was overwritten since) or with `again=True` (on purpose, after a model
        upgrade).
        """

    @abc.abstractmethod
    def enqueue_many(self, records: Iterable[tuple[str, str, int, float, float]]) -> int:
        """Bulk enqueue of (rel_path, sha256, size, mtime, arrived_at) in one transaction.

        Same rules as `enqueue` without `again`; a path given twice keeps its last record
        (only the latest content exists on disk).
        Returns how many jobs became pending.
        """

    @abc.abstractmethod
    def record_failure(self, rel_path: str, size: int, mtime: float, error: str) -> bool:
        """A file that cannot become a job (unreadable, unusable name): a failed job of
        unknown content (UNKNOWN_CONTENT), one per path, so `status` shows it with the
        reason. Returns True when newly recorded or its reason changed (worth a log line).
        """

    @abc.abstractmethod
    def known_files(self) -> dict[str, tuple[int, float]]:
        """rel_path -> (size, mtime) of the latest known version of every path (one query)."""

    @abc.abstractmethod
    def note_unchanged(self, rel_path: str, size: int, mtime: float) -> None:
        """Record new size/mtime for a path whose content hash did not change (a touch)."""

    @abc.abstractmethod
    def latest_sha256(self, rel_path: str) -> str | None:
        """SHA-256 of the path's latest known version, None for an unknown path."""


@runtime_checkable
class Claims(Protocol):
    """What a worker needs: claim, start, renew, complete, fail, release, recover."""

    @abc.abstractmethod
    def claim(self, owner: Owner, limit: int, *, suspects: bool = True) -> list[Job]:
        """Atomically lease up to `limit` due pending jobs, oldest first.

        A crash suspect (a job in hand when its process died) is leased alone, before the
        others; with ``suspects=False`` (a batch to be decoded ahead) never. The attempt is
        taken provisionally (attempts + 1); it only counts once `start` recorded that work
        began.
        """

    @abc.abstractmethod
    def start(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Record that work on these held jobs began (their batch is the one decoded and
        computed now): their attempts count, also when the process dies, and a death makes
        them crash suspects."""

    @abc.abstractmethod
    def decode_ahead(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Record that these held jobs are decoded ahead for the next batch: a death now
        does not charge them (`start` comes when their batch's turn comes) but makes them
        crash suspects, since their decoding may have been what killed the process."""

    @abc.abstractmethod
    def renew(self, owner: Owner, job_ids: Sequence[int]) -> None:
        """Extend the leases `owner` holds on these jobs."""

    @abc.abstractmethod
    def complete(
        self, owner: Owner, job_id: int, output_path: str, *, sidecar_error: str | None = None
    ) -> None:
        """Mark a job done once its output is written; when it is the path's current
        version, the path's other failed jobs are superseded. ``sidecar_error``: why a
        sidecar of its source was not copied beside the output (recorded on the job)."""

    @abc.abstractmethod
    def note_sidecar(self, output_path: str, error: str | None) -> int:
        """Record on the done jobs of ``output_path`` why a sidecar could not be copied
        beside it, or (None) that their sidecars are there now; returns how many jobs."""

    @abc.abstractmethod
    def output_holders(self, output_path: str, *, other_than: str) -> list[str]:
        """The source paths (not ``other_than``) whose done jobs hold this output path."""

    @abc.abstractmethod
    def move_output(self, rel_path: str, old_path: str, new_path: str) -> int:
        """Record that the done output of ``rel_path`` at ``old_path`` was moved to
        ``new_path`` (its sibling name, once a sibling took the plain one); returns how
        many jobs were updated."""

    @abc.abstractmethod
    def fail(self, owner: Owner, job_id: int, error: str, *, permanent: bool) -> JobState:
        """Record a failed attempt; returns the new state (PENDING with back-off or FAILED)."""

    @abc.abstractmethod
    def release(self, owner: Owner, job_ids: Sequence[int], *, delay: float = 0.0) -> None:
        """Return held jobs to pending and give their attempt back (shutdown, storage
        outage, a file caught in the middle of a change: not the files' fault), started or
        not; claimable again after ``delay`` seconds."""

    @abc.abstractmethod
    def recover(self, owner: Owner | None = None) -> int:
        """Reclaim running jobs whose lease expired or whose owner is gone; returns how many.

        Owners on this host are gone when their PID is dead, or (when `owner` is given) when
        they have `owner`'s PID with another token: a previous run of this daemon. A live
        PID on this host keeps its jobs until their lease expires (another daemon whose
        lock file was deleted must not lose them). A started attempt stays counted, so a
        file that crashes the daemon ends failed instead of looping; an unstarted claim is
        given back. Only the daemon holding the DaemonLock may pass `owner`; anyone else
        (the CLI) passes None.
        """


@runtime_checkable
class Status(Protocol):
    """What `semwatch status`/`retry` and the web UI read (and retry)."""

    @abc.abstractmethod
    def retry(self, job_ids: Sequence[int] | None = None, *, failed: bool = False) -> int:
        """Failed jobs back to pending with attempts reset: these ids, or all with failed=True.

        A retried job arrives again: its wait, its latency and its place in line count
        from the retry, not from the file's first arrival (maybe days before).

        Superseded failures are history, not retried: their version is no longer the file.
        """

    @abc.abstractmethod
    def get(self, job_id: int) -> Job | None:
        """One job by id."""

    @abc.abstractmethod
    def jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs (highest id first), optionally of one state (FAILED: the failures
        that still stand, superseded ones left out)."""

    @abc.abstractmethod
    def stats(self, now: float | None = None, *, details: bool = True) -> QueueStats:
        """Counts, backlog age, throughput, latency and recent failures; ``details=False``
        (the systemd status line, each metrics scrape): counts and backlog age only."""


@runtime_checkable
class Fleet(Protocol):
    """Daemons on several hosts: the queue's clock, heartbeat rows, the watch lock."""

    @abc.abstractmethod
    def now(self) -> float:
        """The queue's clock (epoch seconds), on which leases are written and compared."""

    @abc.abstractmethod
    def beat(self, owner: Owner, role: str) -> None:
        """Record that this daemon lives: its row (host, pid, role, last seen)."""

    @abc.abstractmethod
    def sign_off(self, owner: Owner) -> None:
        """Record that this daemon stops cleanly: it no longer counts as alive at once (no
        ALIVE_SECONDS to wait out), and its row says when it was last seen."""

    @abc.abstractmethod
    def daemons(self) -> list[DaemonBeat]:
        """Every daemon's heartbeat row of the last FORGET_SECONDS, latest beat first."""

    @abc.abstractmethod
    def alive_workers(self, within: float = ALIVE_SECONDS) -> int:
        """How many daemons that colorize (role worker or all) beat in the last `within` s."""

    @abc.abstractmethod
    def hold_watch(self, root: str, owner: Owner, seconds: float) -> Owner | None:
        """Take or renew the lock on watching input folder `root` for `seconds`.

        Returns None when `owner` holds it now, else the holder. A holder loses it when its
        lock expires, or (on this host) when its process is gone: the same rule as a job's
        lease, so a watcher on another host is replaced only after its lock expired.
        """

    @abc.abstractmethod
    def release_watch(self, root: str, owner: Owner) -> None:
        """Give the watch lock on `root` up, if `owner` holds it."""


class JobQueue(Intake, Claims, Status, Fleet, Protocol):
    """The whole queue (what `open_queue` returns, what the daemon holds): every small
    protocol above, and closing. Callers that need one part annotate with that part."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release database connections."""

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
