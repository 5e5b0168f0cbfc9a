"""The service's subcommands: `semwatch run`, `status`, `enqueue`, `retry`.

Registered on `semwatch.cli.main`. Only `run` imports the engine (and so PyTorch):
`status`, `enqueue` and `retry` talk to the queue database and answer in a fraction of a
second, also while the daemon is running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from semwatch.cli_options import CONTEXT, config_option, load_cli_config
from semwatch.config import EXIT_CONFIG, Config
from semwatch.errors import one_line
from semwatch.log import configure_cli_logging, get_logger
from semwatch.walk import WatchRules, walk

if TYPE_CHECKING:
    from semwatch.queue import ServiceState

log = get_logger(__name__)

# Files hashed per enqueue_many transaction during a backfill.
ENQUEUE_CHUNK = 200


def _console_logging(config: Config) -> None:
    # The command's own output says what happened; the queue's per-job info lines would
    # bury it during a backfill of thousands of files (debug still shows everything).
    level = "debug" if config.logging.level == "debug" else "warning"
    configure_cli_logging(level, config.logging.format)


# --------------------------------------------------------------------------- run


@click.command("run", context_settings=CONTEXT)
@click.option(
    "--role",
    type=click.Choice(["all", "watcher", "worker"]),
    default=None,
    help="What this process does: all (watch and colorize), watcher (only queue new files) "
    "or worker (only colorize queued files). Default: daemon.role of the configuration. "
    "watcher and worker need a PostgreSQL queue.",
)
@config_option
def run_command(role: str | None, config_path: Path | None) -> None:
    """Run the watch-folder service in the foreground (systemd starts exactly this).

    \b
    Watches watch.input_dir (the microscope's export folder) and colorizes every image
    that appears there, once it has stopped growing, into output.dir, mirroring the
    sub-folders. Jobs live in the queue database (queue.database_url), so nothing is lost
    or done twice across restarts, crashes or power cuts; files that arrived while the
    service was stopped are found at start.

    \b
    Signals: SIGTERM or Ctrl-C finishes the batch in hand and exits 0; SIGHUP
    (systemctl reload semwatch) re-reads the configuration and the model between batches.
    Logs are JSON lines on stderr (journald) unless stderr is a terminal.
    Exit codes: 0 stopped cleanly, 1 failed (systemd restarts it), 78 configuration or
    installation error (fix config.toml, or install the package the error names; systemd
    does not restart).
    """
    config = load_cli_config(config_path, exit_code=EXIT_CONFIG)
    if role is not None:
        config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, role=role))
    try:
        from semwatch.daemon import run_daemon
    except ModuleNotFoundError as exc:
        from semwatch.dependencies import MissingPackage

        click.echo(f"error: {MissingPackage.from_error(exc).message()}", err=True)
        sys.exit(EXIT_CONFIG)
    sys.exit(run_daemon(config))


# --------------------------------------------------------------------------- status


def _open_existing_queue(config: Config, *, read_only: bool = False):
    """The queue database, without creating one when the service has never run.

    ``read_only`` (status): no write lock, no migration, no write access needed, so it
    answers at once while the daemon writes.
    """
    from semwatch.queue import open_queue, sqlite_path

    with _one_line_errors(config):
        path = sqlite_path(config.queue.database_url)
        if path is not None and not path.is_file():
            raise click.ClickException(
                f"{path}: no queue database yet; the service has not run with this "
                "configuration (check --config / queue.database_url)"
            )
        return open_queue(config.queue, read_only=read_only)


@contextmanager
def _one_line_errors(config: Config) -> Iterator[None]:
    """Any trouble with the database (down, damaged pages) becomes one error line naming
    it, never a traceback; the traceback goes to the debug log."""
    from semwatch.queue import QueueError

    try:
        yield
    except click.ClickException:
        raise
    except QueueError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - damaged rows raise anything while read
        log.debug("queue access failed", exc_info=exc)
        raise click.ClickException(
            f"{_database(config)}: cannot use the queue: {one_line(exc)} (is the database damaged?)"
        ) from None


@click.command("status", context_settings=CONTEXT)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object for monitoring scripts: service (state from the daemons' "
    "heartbeats: running or stopped, hosts, last beat, each daemon), counts, "
    "oldest_pending_age_s, throughput_per_min, median_latency_s, recent_failures.",
)
@config_option
def status_command(as_json: bool, config_path: Path | None) -> None:
    """Show whether the service runs and what its queue holds.

    \b
    service   running (host, since when, last heartbeat; each daemon when there are
              several) or stopped (when last seen, and whether it stopped cleanly)
    pending   waiting for the service (or for a retry after a transient error)
    running   being colorized now
    done      written to the output folder
    failed    given up, with the reason (undecodable file, or too many attempts);
              `semwatch retry --failed` queues them again
    Also: the age of the oldest waiting image, images done per minute over the last
    10 minutes and hour, the median time from arrival to done, the latest failures, and
    done jobs whose sidecar could not be copied beside the output (with the reason).
    """
    config = load_cli_config(config_path)
    _console_logging(config)
    from semwatch.queue import JobState, read_service_state

    queue = _open_existing_queue(config, read_only=True)
    try:
        with _one_line_errors(config):
            service = read_service_state(queue)
            stats = queue.stats(now=service.now)
            failed = [] if as_json else queue.jobs(JobState.FAILED, limit=10)
    finally:
        queue.close()
    if as_json:
        click.echo(json.dumps({"service": service.as_dict(), **stats.as_dict()}, indent=2))
    else:
        click.echo(format_status(stats.as_dict(), config, failed, service=service))


def format_status(
    stats: dict[str, Any],
    config: Config,
    failed_jobs: Sequence[Any] = (),
    *,
    service: ServiceState | None = None,
) -> str:
    """The readable `semwatch status` table; ``service``: the ServiceState, when read."""
    from semwatch.report import duration, service_details, service_headline, waiting_note

    counts = stats["counts"]
    oldest = stats["oldest_pending_age_s"]
    lines = [f"queue   {_database(config)}"]
    if service is not None:
        lines.append(f"service {service_headline(service)}")
        lines += [f"        {line}" for line in service_details(service)]
        note = waiting_note(service) if counts.get("pending") else None
        if note:
            lines.append(f"        {note}")
    lines.append("")
    for state in ("pending", "running", "done", "failed"):
        extra = f"   oldest waiting {duration(oldest)}" if state == "pending" and oldest else ""
        lines.append(f"  {state:<8}{counts.get(state, 0):>9}{extra}")
    rate = stats["throughput_per_min"]
    latency = stats["median_latency_s"]
    lines += [
        "",
        f"throughput      {rate['10m']:.1f}/min (last 10 min)   {rate['1h']:.1f}/min (last hour)",
        "median latency  "
        + (f"{duration(latency)} from arrival to done (last hour)" if latency is not None else "-"),
    ]
    if failed_jobs:
        lines += ["", "failed jobs (newest first; `semwatch retry JOB_ID` queues one again):"]
        for job in failed_jobs:
            lines.append(f"  {job.id:>7}  {job.rel_path}: {job.error}")
    sidecars = stats.get("sidecar_problems") or []
    if sidecars:
        lines += ["", "done jobs with a sidecar missing beside the output (newest first):"]
        for problem in sidecars:
            lines.append(f"  {problem['id']:>7}  {problem['path']}: {problem['error']}")
    return "\n".join(lines)


def _database(config: Config) -> str:
    from semwatch.report import database_name

    return database_name(config.queue.database_url)


# --------------------------------------------------------------------------- enqueue


@dataclass
class EnqueueReport:
    files: int = 0  # images found and hashed
    queued: int = 0  # of those, now pending
    skipped: int = 0  # names inside folders that semwatch ignores
    errors: list[str] = field(default_factory=list)


def enqueue_paths(config: Config, paths: Sequence[Path], *, again: bool, queue) -> EnqueueReport:
    """Hash and queue files (folders: recursively) under watch.input_dir.

    Paths outside the watch folder are refused before anything is queued (ValueError).
    """
    watch = config.watch
    rules = WatchRules(
        watch.input_dir, watch.patterns, watch.recursive, config.output.dir, config.output.sidecars
    )
    root = rules.root
    resolved = [Path(os.path.abspath(p)) for p in paths]
    for given, path in zip(paths, resolved):
        if path.resolve() != root and rules.relpath(path) is None:
            raise ValueError(
                f"{given}: outside the watch folder {root} (watch.input_dir); "
                "semwatch only processes files under it"
            )
    report = EnqueueReport()
    records: list[tuple[str, str, int, float, float]] = []

    def skip(rel: str) -> None:
        report.skipped += 1

    for given, path in zip(paths, resolved):
        if path.is_dir():
            for rel in sorted(rel for rel, _size, _mtime in walk(rules, str(path), skipped=skip)):
                _hash_into(rules, Path(rules.abspath(rel)), records, report, queue.now())
                _flush(queue, records, report, again, force=False)
        elif path.is_file():
            if rules.is_ignored(path):
                report.errors.append(
                    f"{given}: not picked up by semwatch (hidden or temporary "
                    "name, inside the output folder, not matching "
                    "watch.patterns, or a sidecar of output.sidecars)"
                )
            else:
                _hash_into(rules, path, records, report, queue.now())
        else:
            report.errors.append(f"{given}: no such file or folder")
    _flush(queue, records, report, again, force=True)
    return report


def _hash_into(rules: WatchRules, path: Path, records: list, report: EnqueueReport, arrived: float) -> None:
    # ``arrived``: on the queue's clock, as the watcher's arrivals are (latency, claim order).
    from semwatch.hashing import sha256_file
    from semwatch.watcher import name_problem, printable_name

    rel = rules.relpath(path)
    problem = name_problem(rel)
    if problem is not None:
        report.errors.append(f"{printable_name(str(path))}: {problem}")
        return
    try:
        st = path.stat()
        digest = sha256_file(path)
    except OSError as exc:
        report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return
    records.append((rel, digest, st.st_size, st.st_mtime, arrived))
    report.files += 1


def _flush(queue, records: list, report: EnqueueReport, again: bool, *, force: bool) -> None:
    if not records or (len(records) < ENQUEUE_CHUNK and not force):
        return
    if again:
        # One by one: only `enqueue` can re-queue finished versions.
        for rel, digest, size, mtime, arrived in records:
            if queue.enqueue(rel, digest, size, mtime, arrived_at=arrived, again=True) is not None:
                report.queued += 1
    else:
        report.queued += queue.enqueue_many(records)
    records.clear()


@click.command("enqueue", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--again",
    is_flag=True,
    help="Also re-do files that are already done or failed (e.g. after a model "
    "upgrade). Without it, a file already colorized is not queued twice.",
)
@config_option
def enqueue_command(paths: tuple[Path, ...], again: bool, config_path: Path | None) -> None:
    """Queue image files or folders for the service now (backfill, re-do).

    \b
    PATH: files, or folders (recursively), under watch.input_dir. Use it to backfill
    images that were in the export folder before semwatch was installed, or to re-do a
    folder with a new model (--again). Files are hashed now; the running service picks
    the jobs up within a second (if it is not running, they wait for `semwatch run`).
    Exit code 1 if some PATH could not be queued (each is named on one line).
    """
    config = load_cli_config(config_path)
    _console_logging(config)
    queue = _open_existing_queue(config) if _db_exists(config) else _create_queue(config)
    try:
        with _one_line_errors(config):
            try:
                report = enqueue_paths(config, paths, again=again, queue=queue)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
    finally:
        queue.close()
    for line in report.errors:
        click.echo(f"error: {line}", err=True)
    known = report.files - report.queued
    hint = " (already queued or done; --again re-does done ones)" if known and not again else ""
    click.echo(
        f"queued {report.queued} of {report.files} images{hint}"
        + (f", {report.skipped} other files ignored" if report.skipped else "")
    )
    if report.errors:
        sys.exit(1)


def _db_exists(config: Config) -> bool:
    from semwatch.queue import sqlite_path

    path = sqlite_path(config.queue.database_url)
    return path is None or path.is_file()


def _create_queue(config: Config):
    from semwatch.queue import open_queue

    with _one_line_errors(config):
        return open_queue(config.queue)


# --------------------------------------------------------------------------- retry


@click.command("retry", context_settings=CONTEXT)
@click.argument("job_ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job.")
@config_option
def retry_command(job_ids: tuple[int, ...], all_failed: bool, config_path: Path | None) -> None:
    """Queue failed jobs again: every one (--failed) or the JOB_IDs given.

    \b
    Attempts start from zero. `semwatch status` lists the failed jobs with their ids and
    reasons. A file that failed because it cannot be decoded will fail
    again; fix or replace the file instead (a changed file is queued on its own).
    """
    if all_failed == bool(job_ids):
        raise click.UsageError("give either --failed or one or more JOB_IDs")
    config = load_cli_config(config_path)
    _console_logging(config)
    queue = _open_existing_queue(config)
    try:
        with _one_line_errors(config):
            count, not_failed = _retry(queue, job_ids, all_failed)
    finally:
        queue.close()
    click.echo(f"re-queued {count} failed job{'s' if count != 1 else ''}")
    if not_failed:
        click.echo("not failed or unknown, left alone: " + ", ".join(map(str, not_failed)), err=True)
        sys.exit(1)


def _retry(queue, job_ids: Sequence[int], all_failed: bool) -> tuple[int, list[int]]:
    """(jobs re-queued, ids given that are not standing failures)."""
    if all_failed:
        return queue.retry(failed=True), []
    from semwatch.queue import JobState

    jobs = {job_id: queue.get(job_id) for job_id in job_ids}
    # A superseded failure is history: its version is no longer the file's content.
    not_failed = [
        i
        for i, job in jobs.items()
        if job is None or job.state != JobState.FAILED or job.superseded_by is not None
    ]
    return queue.retry(list(job_ids)), not_failed


# --------------------------------------------------------------------------- db


@click.group("db", context_settings=CONTEXT)
def db_command() -> None:
    """The queue database's schema, for admins who migrate by hand.

    \b
    The service upgrades the schema itself at start; on PostgreSQL with several hosts,
    run `semwatch db upgrade` once after upgrading semwatch, before restarting them.
    """


@db_command.command("upgrade", context_settings=CONTEXT)
@config_option
def db_upgrade_command(config_path: Path | None) -> None:
    """Create the queue database's schema, or upgrade it to this semwatch's revision."""
    config = load_cli_config(config_path)
    _console_logging(config)
    queue = _create_queue(config)
    try:
        with _one_line_errors(config):
            click.echo(f"{_database(config)}: at revision {queue.revision()}")
    finally:
        queue.close()


@db_command.command("current", context_settings=CONTEXT)
@config_option
def db_current_command(config_path: Path | None) -> None:
    """Show the schema revision of the queue database and this semwatch's; exit 1 when
    they differ (the database needs `semwatch db upgrade`, or semwatch is older)."""
    from semwatch import schema
    from semwatch.queue import database_revision, sqlite_path

    config = load_cli_config(config_path)
    _console_logging(config)
    path = sqlite_path(config.queue.database_url)
    if path is not None and not path.is_file():
        raise click.ClickException(f"{path}: no queue database yet (semwatch db upgrade creates it)")
    with _one_line_errors(config):
        found = database_revision(config.queue.database_url)
    head = schema.head_revision()
    click.echo(f"database: {found or 'empty'}\nsemwatch: {head}")
    if found != head:
        sys.exit(1)
