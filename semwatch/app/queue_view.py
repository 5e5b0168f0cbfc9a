"""What the web UI reads from the service: the queue (read-only), job sources and outputs.

The queue page never writes the database except to retry failed jobs, which is the queue's
own `retry` (what `semwatch retry` runs). Paths come from the database, so each is checked
against its root before it is opened: a source must lie inside watch.input_dir, an output
inside output.dir (symlinks resolved), or it is not shown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from semwatch.config import Config
from semwatch.imaging import FORMAT_EXTENSIONS
from semwatch.layout import OutputLayout
from semwatch.log import get_logger
from semwatch.paths import rel_inside
from semwatch.queue import (
    Job,
    JobState,
    QueueStats,
    ServiceState,
    open_queue,
    read_service_state,
    sqlite_path,
)
from semwatch.report import database_name as redacted_database_name

log = get_logger(__name__)

REFINED_MARK = ".refined"  # x.tif -> x.refined.tif, beside the automatic output
THUMBNAIL_MAX_PIXELS = 200_000_000  # same cap as decoding; a larger output is not previewed


class NoDatabase(Exception):
    """The service has not created its queue database yet (nothing to show)."""


@dataclass(frozen=True)
class QueueSnapshot:
    database: str  # URL, password hidden
    service: ServiceState  # from the daemons' heartbeat rows
    stats: QueueStats
    recent: list[Job]  # newest first, every state
    failed: list[Job]  # newest first


def database_name(config: Config) -> str:
    return redacted_database_name(config.queue.database_url)


def read_snapshot(config: Config, *, recent: int = 20, failed: int = 50) -> QueueSnapshot:
    """Counts, throughput, latency and recent jobs, from a read-only connection (no write
    lock, no migration: safe while the daemon runs). NoDatabase before the first run;
    QueueError for a database that cannot be read."""
    path = sqlite_path(config.queue.database_url)
    if path is not None and not path.is_file():
        raise NoDatabase(path)
    queue = open_queue(config.queue, read_only=True)
    try:
        service = read_service_state(queue)
        return QueueSnapshot(
            database=database_name(config),
            service=service,
            stats=queue.stats(now=service.now),
            recent=queue.jobs(limit=recent),
            failed=queue.jobs(JobState.FAILED, limit=failed),
        )
    finally:
        queue.close()


def get_job(config: Config, job_id: int) -> Job | None:
    """One job, read-only (None when unknown or there is no database yet)."""
    path = sqlite_path(config.queue.database_url)
    if path is not None and not path.is_file():
        return None
    queue = open_queue(config.queue, read_only=True)
    try:
        return queue.get(job_id)
    finally:
        queue.close()


@dataclass(frozen=True)
class Retried:
    count: int  # how many were failed and are now pending
    service: ServiceState  # right after: whether a worker will pick them up


def retry_failed(config: Config, job_ids: Sequence[int]) -> Retried:
    """Queue failed jobs again (attempts from zero), as `semwatch retry JOB_ID...` does."""
    queue = open_queue(config.queue)
    try:
        return Retried(queue.retry(list(job_ids)), read_service_state(queue))
    finally:
        queue.close()


def source_file(config: Config, job: Job) -> Path:
    """The job's source inside watch.input_dir; ValueError when its path would lead out."""
    return OutputLayout.of(config).source(job.rel_path)


def output_file(config: Config, job: Job) -> Path | None:
    """The job's recorded output if it lies inside output.dir (symlinks resolved), else
    None (and a warning: the database names a file the UI will not open)."""
    if not job.output_path:
        return None
    root = Path(os.path.realpath(config.output.dir))
    path = Path(job.output_path)
    if not path.is_absolute():
        path = Path(config.output.dir) / path
    real = Path(os.path.realpath(path))
    if not rel_inside(str(root), str(real)):
        log.warning(
            "output path outside the output folder not shown",
            job_id=job.id,
            output=job.output_path,
            root=str(root),
        )
        return None
    return real


def refined_target(output: Path) -> Path:
    """Where a refined result goes: beside the automatic output, ``<stem>.refined<ext>``
    (x.tif -> x.refined.tif), so the automatic output is never replaced by accident."""
    return output.with_name(output.stem + REFINED_MARK + output.suffix)


def refined_name(name: str, fmt: str) -> str:
    """File name of a refined result for a source or output name."""
    return PurePosixPath(name).stem + REFINED_MARK + FORMAT_EXTENSIONS[fmt]


def thumbnail(path: Path, box: tuple[int, int] = (480, 360), background: int = 240) -> np.ndarray | None:
    """An RGB copy of an output file fitted into ``box`` (width, height) and centred on a
    light background, so every card of the grid has the same height; None when the file
    cannot be read (logged)."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > THUMBNAIL_MAX_PIXELS:
                log.warning("output too large to preview", path=str(path))
                return None
            image.draft("RGB", box)  # JPEG: decode at a reduced scale
            image.thumbnail(box, Image.Resampling.LANCZOS)
            canvas = Image.new("RGB", box, (background,) * 3)
            canvas.paste(image.convert("RGB"), ((box[0] - image.width) // 2, (box[1] - image.height) // 2))
            return np.asarray(canvas)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("cannot preview output", path=str(path), error=f"{type(exc).__name__}: {exc}")
        return None
