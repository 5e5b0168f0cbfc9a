"""Writing a colorized job's output (in a writer thread): the storage check, the output name
made free of a sibling's output, the atomic write, the sidecars, and the job marked done;
and the sidecar that settles after its image's output was written (watcher thread).

Sources whose names differ only in the extension share an output stem (z.tif, z.TIF): their
naming, writing and completion run one at a time, and an output never lands over another
source's, whatever the order they arrived in.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from semwatch.errors import one_line
from semwatch.hashing import sha256_fd
from semwatch.imaging import ImageError, read_provenance
from semwatch.imaging.source import open_regular
from semwatch.log import get_logger
from semwatch.pipeline import OutputSettings, Task, write_colorized, write_error
from semwatch.queue import QueueError
from semwatch.service.outcomes import Outcomes
from semwatch.service.runtime import KeyedLocks, Runtime
from semwatch.sidecars import copy_sidecar, copy_sidecars, image_names, sidecar_target

if TYPE_CHECKING:
    from semwatch.engine import EngineInfo
    from semwatch.service.items import WorkItem

log = get_logger(__name__)

# Write errors that the same output path will meet every time: retrying only repeats the
# colorization (e.g. "File name too long" for x.png.tif beside x.tif at 255 bytes).
PERMANENT_WRITE_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EILSEQ})


class OutputWriter:
    """Writes outputs and settles their jobs (see the module's docstring)."""

    def __init__(self, rt: Runtime, outcomes: Outcomes) -> None:
        self._rt = rt
        self._outcomes = outcomes
        self._output_stems = KeyedLocks()

    def _release(self, item: WorkItem, why: str) -> None:
        self._outcomes.release([item.job.id], why)

    def write(self, item: WorkItem, rgb: Any, info: EngineInfo) -> None:
        """Runs in a writer thread: encode + atomic write, then mark done. Never raises."""
        # write_image would create a missing root, and under an unmounted share's mount
        # point it would write to the local disk: both are a storage pause, not a write.
        problem = self._rt.storage.problem()
        if problem is not None:
            self._rt.storage.trip(problem)
            self._release(item, "storage unavailable")
            return
        if self._superseded_before_write(item):
            return
        with self._output_stems.holding((item.source.parent, PurePosixPath(item.source.name).stem.lower())):
            self._write_named(item, rgb, info)

    def _write_named(self, item: WorkItem, rgb: Any, info: EngineInfo) -> None:
        """_write under its output stem's lock: name, write, mark done."""
        job, image = item.job, item.image
        cfg = self._rt.config.output
        try:
            item.target = self._own_output_name(item)
        except (OSError, QueueError, ValueError) as exc:
            # Writing anyway could land over a sibling's output: tried again later instead.
            reason = f"cannot make the output name {item.target.name} free: {one_line(exc)}"
            self._outcomes.fail(job, reason, permanent=False, started=item.claimed_at)
            return
        try:
            # The output first, then its sidecars: a sidecar that settles from now on finds
            # the output there (_sidecar_settled), one that came earlier is in the listing.
            task = Task(item.source, item.target, style=item.style)
            write_colorized(task, image, rgb, info, OutputSettings.of(cfg))
        except OSError as exc:
            if exc.errno in PERMANENT_WRITE_ERRNOS:
                self._outcomes.fail(
                    job, write_error(item.target, exc), permanent=True, started=item.claimed_at
                )
            elif self._rt.storage.is_storage_error(exc):
                self._rt.storage.trip(self._rt.storage.problem() or one_line(exc))
                self._release(item, "storage unavailable")
            else:
                self._outcomes.fail(
                    job, write_error(item.target, exc), permanent=False, started=item.claimed_at
                )
            return
        except Exception as exc:  # noqa: BLE001
            log.exception("unexpected error writing", path=job.rel_path, job_id=job.id)
            self._outcomes.fail(job, write_error(item.target, exc), permanent=False, started=item.claimed_at)
            return
        # Before the job is marked done (a crash in between re-runs the job, sidecars too), and
        # whatever becomes of them the output stands: the job is never undone for a sidecar.
        sidecars, sidecar_error = self._copy_sidecars(item)
        try:
            if not self._outcomes.mark_done(job, item.target, sidecar_error):
                return
        finally:
            self._rt.leases.discard(job.id)
        # arrived_at is on the queue's clock (the database server's on PostgreSQL), so the
        # latency is too: a worker whose clock is off does not skew it.
        latency = self._rt.jobs.now() - job.arrived_at
        self._rt.metrics.job_done(latency)
        log.info(
            "job done",
            job_id=job.id,
            path=job.rel_path,
            output=str(item.target),
            seconds=round(time.monotonic() - item.claimed_at, 3),
            latency_s=round(latency, 3),
            sidecars=sidecars,
        )

    def _copy_sidecars(self, item: WorkItem) -> tuple[int, str | None]:
        """Copy the source's sidecars beside its new output; returns how many, and why one
        was not (recorded on the job, shown by `status`). One that cannot be copied is logged
        with its reason; on a full disk it is copied alone once there is room again (the
        watcher settles it anew), the image is not colorized again."""
        try:
            copies = copy_sidecars(
                item.source, item.target, self._rt.config.output.sidecars, inside=self._rt.layout.input_root
            )
        except OSError as exc:
            log.warning("sidecars not looked for", path=item.job.rel_path, error=one_line(exc))
            return 0, f"sidecars not looked for: {one_line(exc)}"
        for failure in copies.failures:
            storage = self._rt.storage.is_storage_error(failure.error)
            rel = self._rt.layout.input_rel(failure.source)
            if storage and self._rt.watcher is not None and rel is not None:
                self._rt.watcher.recheck(rel)
            log.warning(
                "sidecar not copied",
                path=str(failure.source),
                output=str(item.target),
                error=failure.reason,
                job_id=item.job.id,
                retry="when there is room again (watcher)" if storage else "when the sidecar changes",
            )
        reasons = [f"{failure.source.name} not copied: {failure.reason}" for failure in copies.failures]
        return copies.copied, one_line("; ".join(reasons)) if reasons else None

    def _own_output_name(self, item: WorkItem) -> Path:
        """The job's output path by its folder's listing now, made free for it: a sibling's
        output that holds it (written while that sibling was alone: z.TIF -> z.tif, then
        z.tif arrived) is first moved to the sibling's own name (z.TIF.tif), so an output
        never lands over another source's, whatever the order they arrived in."""
        names = os.listdir(item.source.parent)
        target = self._rt.layout.target(item.job.rel_path, names)
        for other in self._rt.jobs.output_holders(str(target), other_than=item.job.rel_path):
            self._move_sibling_output(other, target, names)
        return target

    def _move_sibling_output(self, other_rel: str, held: Path, names: list[str]) -> None:
        """Rename ``other_rel``'s output from ``held`` to its sibling name and record it."""
        other_name = PurePosixPath(other_rel).name
        # Named as beside the siblings even when its source is gone: its output stays its own.
        moved = self._rt.layout.target(other_rel, [*names, other_name])
        if moved == held:
            raise ValueError(f"{other_rel}: no sibling name apart from {held.name}")
        if self._output_of(held) == str(self._rt.layout.source(other_rel)):
            # Only that source's output is moved: after a crash between this rename and the
            # record below, `held` may already be this job's own output.
            os.rename(held, moved)
        self._rt.jobs.move_output(other_rel, str(held), str(moved))
        log.info("output moved to its sibling name", path=other_rel, was=str(held), output=str(moved))
        try:
            copies = copy_sidecars(
                self._rt.layout.source(other_rel),
                moved,
                self._rt.config.output.sidecars,
                inside=self._rt.layout.input_root,
            )
            for failure in copies.failures:
                log.warning(
                    "sidecar not copied", path=str(failure.source), output=str(moved), error=failure.reason
                )
        except OSError as exc:
            log.warning("sidecars not copied beside a moved output", path=other_rel, error=one_line(exc))

    def _made_from_current(self, image_rel: str, output: Path) -> bool:
        """Whether ``output`` was made from the content the image holds now (by SHA-256)."""
        recorded = output_source(output).get("sha256")
        try:
            fd = open_regular(self._rt.layout.source(image_rel), self._rt.layout.input_root)
            try:
                return recorded is not None and sha256_fd(fd) == recorded
            finally:
                os.close(fd)
        except (OSError, ImageError, ValueError) as exc:
            log.debug("image not readable to match its sidecar", path=image_rel, error=one_line(exc))
            return False

    @staticmethod
    def _output_of(output: Path) -> str | None:
        """The source path recorded in an output's provenance (None: no output there)."""
        return output_source(output).get("path")

    def sidecar_settled(self, rel_path: str) -> None:
        """Watcher thread: a sidecar arrived or changed. Copy it beside the outputs already
        written for its image; an image still queued gets it when its output is written.
        Raises (the watcher logs and retries at its next scan) when it cannot be copied."""
        # Not onto a missing root, nor into an unmounted share's local mount point.
        problem = self._rt.storage.problem()
        if problem is not None:
            raise OSError(f"storage unavailable: {problem}")
        source = self._rt.layout.source(rel_path)
        names = os.listdir(source.parent)
        folder = PurePosixPath(rel_path).parent
        for image in image_names(source.name, names):
            image_rel = str(folder / image)
            target = self._rt.layout.target(image_rel, names)
            if not target.is_file():
                continue  # copied when the image's output is written
            if not self._made_from_current(image_rel, target):
                # A new acquisition's record beside an earlier one's image: it waits for the
                # output of the image there now (and is never copied if that one fails).
                log.info("sidecar waits for its image's new output", path=rel_path, output=str(target))
                continue
            try:
                copied = copy_sidecar(
                    source, sidecar_target(target, source.name), inside=self._rt.layout.input_root
                )
            except OSError as exc:
                if self._rt.storage.is_storage_error(exc):
                    raise  # the watcher tries again at its next scan
                log.warning("sidecar not copied", path=rel_path, output=str(target), error=one_line(exc))
                self._note_sidecar(target, f"{source.name} not copied: {one_line(exc)}")
                continue
            if copied:
                log.info("sidecar copied", path=rel_path, output=str(target))
                self._note_sidecar(target, None)

    def _note_sidecar(self, output: Path, error: str | None) -> None:
        """Record on the output's done job why its sidecar is missing, or that it is there."""
        try:
            self._rt.jobs.note_sidecar(str(output), error)
        except QueueError as exc:
            log.warning("sidecar state not recorded on its job", output=str(output), error=one_line(exc))

    def _superseded_before_write(self, item: WorkItem) -> bool:
        """Whether the file went on to other content while this job was computed; its
        output would then land over the newer one's (A -> B -> A in quick succession)."""
        job = item.job
        try:
            latest = self._rt.jobs.latest_sha256(job.rel_path)
        except QueueError as exc:
            log.warning("cannot check for a newer version; writing", job_id=job.id, error=one_line(exc))
            return False
        if latest is None or latest == job.sha256:
            return False
        self._outcomes.fail(
            job,
            f"superseded: the file changed to other content ({latest[:12]}) before "
            "this output was written; that content is a job of its own",
            permanent=True,
            started=item.claimed_at,
        )
        return True


def output_source(output: Path) -> dict[str, Any]:
    """The "source" record of an output's provenance ({} when there is none to read)."""
    try:
        record = read_provenance(output)
    except FileNotFoundError:
        return {}
    except (OSError, ImageError, ValueError) as exc:
        log.warning("output's provenance unreadable", output=str(output), error=one_line(exc))
        return {}
    source = (record or {}).get("semwatch", {}).get("source")
    return source if isinstance(source, dict) else {}
