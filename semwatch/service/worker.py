"""The worker cycle: claim a batch, decode, colorize, write, mark done; never lose an image.

The main thread claims up to ``batch_size`` jobs (waiting at most ``max_batch_wait`` for a
partial batch to fill) and drives the pipeline's stages (:class:`semwatch.stages.Stages`):
decoding in a thread pool, the network in one compute thread, encoding + atomic writes in a
second pool. Batch k's writes overlap batch k+1's decode and compute, and batch k+1's
decode is started before batch k is computed. A job is marked done only after its atomic
write returned, so a crash anywhere re-runs the job onto the same output path.

Crash isolation (DESIGN.md "Queue"): a batch's attempts count from its turn, not from its
decode ahead; every job in hand when the process dies comes back as a crash suspect, which
is claimed alone and computed with nothing decoding beside it, so only a file that crashes
the process itself runs out of attempts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semwatch.errors import one_line
from semwatch.imaging import DecodedImage, ImageError, memory_cap
from semwatch.layout import sibling_names
from semwatch.log import get_logger
from semwatch.pipeline import colorize_batch, colorize_error, decode, decode_error
from semwatch.queue import Job, QueueError
from semwatch.service.heartbeat import TICK_SECONDS, Pace
from semwatch.service.items import WorkItem
from semwatch.service.outcomes import Outcomes
from semwatch.service.runtime import Runtime
from semwatch.service.writing import OutputWriter
from semwatch.stages import Stages, decode_outcome, log_warnings
from semwatch.styles import StyleError

log = get_logger(__name__)

# Claim poll while idle: jobs queued by `semwatch enqueue`/`retry` and retries whose
# back-off expired do not wake the daemon.
IDLE_POLL_SECONDS = 1.0


class Worker:
    """Claims and colorizes jobs; :meth:`run_once` is one turn of the cycle."""

    def __init__(
        self, rt: Runtime, pace: Pace, outcomes: Outcomes | None = None, writer: OutputWriter | None = None
    ) -> None:
        self._rt = rt
        self._pace = pace
        self._outcomes = outcomes if outcomes is not None else Outcomes(rt, pace)
        self.writer = writer if writer is not None else OutputWriter(rt, self._outcomes)
        daemon_cfg = rt.config.daemon
        self.stages = Stages(
            batch_size=lambda: rt.config.engine.batch_size,
            decode_threads=daemon_cfg.decode_threads,
            write_threads=daemon_cfg.write_threads,
            compute_thread=True,
            wait=pace.wait_stage,
        )
        self._carry: list[WorkItem] = []  # claimed, decode started, not computed yet

    # ---- the cycle

    def run_once(self) -> float:
        """One turn: claim (when nothing is in hand) and process a batch, leaving the next
        one claimed and decoding. Returns how long the caller may wait before the next turn
        (0: at once; more while idle or while the storage is unavailable)."""
        if not self._rt.storage.ready():
            self.release_carry("storage unavailable")
            return TICK_SECONDS
        if not self._carry:
            self._carry = self._claim(ahead=False)
            if not self._carry:
                return IDLE_POLL_SECONDS
        self._carry = self._process(self._carry)
        return 0.0

    def release_carry(self, why: str) -> None:
        """Give back the batch claimed ahead (shutdown, storage pause)."""
        carry, self._carry = self._carry, []
        self._release(carry, why)

    def after_loop_error(self) -> None:
        """Let the writes finish (they settle their own jobs), then give back every other
        job still held: whatever the error interrupted must not stay leased and renewed."""
        carry, self._carry = self._carry, []
        for item in carry:
            if item.decode is not None:
                item.decode.cancel()
        self.stages.drain("writes after a loop error")
        self._outcomes.release(self._rt.leases.snapshot(), "loop error")

    def _claim(self, *, ahead: bool) -> list[WorkItem]:
        """Lease up to batch_size jobs. The batch to work on next (not ``ahead``) waits up to
        max_batch_wait for more, unless it is a crash suspect, which runs alone; a batch
        decoded ahead never takes a suspect."""
        rt, pace = self._rt, self._pace
        if pace.stop.is_set() or pace.reload.is_set():
            return []
        engine = rt.config.engine
        jobs = rt.jobs.claim(rt.owner, engine.batch_size, suspects=not ahead)
        rt.leases.add([job.id for job in jobs])
        if jobs and jobs[0].crash_suspect:
            self._before_alone(jobs[0])
        fill = not ahead and jobs and not jobs[0].crash_suspect
        if fill and len(jobs) < engine.batch_size and engine.max_batch_wait > 0:
            deadline = time.monotonic() + engine.max_batch_wait
            pace.wake.clear()
            while len(jobs) < engine.batch_size and not pace.stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if pace.wake.wait(min(remaining, TICK_SECONDS)):
                    pace.wake.clear()
                pace.tick()
                more = rt.jobs.claim(rt.owner, engine.batch_size - len(jobs), suspects=False)
                rt.leases.add([job.id for job in more])
                jobs.extend(more)
            if pace.stop.is_set():
                self._outcomes.release([job.id for job in jobs], "shutdown: claimed, not started")
                return []
        return self._start_decoding(jobs, ahead=ahead)

    def _before_alone(self, job: Job) -> None:
        """A crash suspect runs with no other job in hand: the previous batch's writes end
        first, or a crash now would be charged to them too."""
        log.info(
            "running a job alone: it was in hand when a process died",
            job_id=job.id,
            path=job.rel_path,
            attempts=job.attempts,
        )
        self.stages.drain("writes before a job run alone")

    def _start_decoding(self, jobs: Sequence[Job], *, ahead: bool) -> list[WorkItem]:
        rt = self._rt
        now = time.monotonic()
        listings: dict[Path, list[str]] = {}
        items = []
        for job in jobs:
            try:
                source = rt.layout.source(job.rel_path)
                siblings = sibling_names(source.parent, listings)
                target = rt.layout.target(job.rel_path, siblings)
            except ValueError as exc:
                self._outcomes.fail(job, str(exc), permanent=True, started=now)
                continue
            items.append(WorkItem(job, source, target, now))
        # From here a crash may be these files' doing: they become crash suspects. Their
        # attempts count from their batch's turn (_start_work); until then a kill costs
        # them nothing, and a merely claimed job is not even a suspect.
        if ahead:
            rt.jobs.decode_ahead(rt.owner, [item.job.id for item in items])
        else:
            self._start_work(items)
        for item in items:
            item.decode = self.stages.decode(self._decode, item)
        return items

    def _start_work(self, items: Sequence[WorkItem]) -> None:
        """The batch's turn: the attempts of its jobs count from now on."""
        waiting = [item for item in items if not item.started]
        self._rt.jobs.start(self._rt.owner, [item.job.id for item in waiting])
        for item in waiting:
            item.started = True

    def _decode(self, item: WorkItem) -> DecodedImage:
        # inside: a symlink, FIFO or device swapped in after queueing is refused, not read.
        rt = self._rt
        engine = rt.config.engine
        return decode(
            item.source,
            max_pixels=engine.max_pixels,
            max_memory=memory_cap(engine.max_image_mb),
            inside=rt.layout.input_root,
        )

    def _process(self, items: list[WorkItem]) -> list[WorkItem]:
        """Finish decoding ``items``, compute them, hand them to the writers.

        Returns the next batch, claimed and decoding while this one was computed.
        """
        self._start_work(items)
        started = time.monotonic()
        with self._pace.staged("decode"):
            self._pace.wait([item.decode for item in items if item.decode is not None])
        decoded = [item for item in items if self._take_decoded(item) and self._take_style(item)]
        decode_s = time.monotonic() - started
        # A crash suspect is computed with nothing else decoding: whatever kills the process
        # now is its doing, and no other job is charged for it.
        alone = any(item.job.crash_suspect for item in items)
        upcoming = self._claim(ahead=True) if not alone and self._rt.storage.ready() else []
        if not decoded:
            return upcoming
        colorizer = self._rt.colorizer
        info = colorizer.info
        t0 = time.monotonic()
        rgbs = self._colorize(colorizer, decoded)
        compute_s = time.monotonic() - t0
        self._rt.metrics.batch(len(decoded), compute_s)
        written = 0
        for item, rgb in zip(decoded, rgbs):
            if rgb is not None:
                self.stages.write(self.writer.write, item, rgb, info)
                written += 1
        log.info(
            "batch",
            jobs=len(items),
            decoded=len(decoded),
            colorized=written,
            decode_wait_s=round(decode_s, 3),
            compute_s=round(compute_s, 3),
            images_per_s=round(written / compute_s, 2) if compute_s > 0 else None,
            model=info.model_name,
        )
        if alone:
            # Its write too ends before the next job is taken: one job in hand, start to end.
            self.stages.drain("write of a job run alone")
        return upcoming

    def _take_decoded(self, item: WorkItem) -> bool:
        """Move the decode result into ``item``; a failed or superseded job is recorded."""
        future, item.decode = item.decode, None
        outcome = decode_outcome(future, item.job.rel_path, job_id=item.job.id)
        del future
        if isinstance(outcome, BaseException):
            self._decode_failed(item, outcome)
            return False
        if outcome.sha256 != item.job.sha256:
            self._content_changed(item, outcome.sha256)
            return False
        log_warnings(outcome, item.job.rel_path, job_id=item.job.id)
        item.image = outcome
        return True

    def _take_style(self, item: WorkItem) -> bool:
        """Read the style that applies to the item's folder (now: an edited style applies to
        the next image); a broken one fails this job with its reason, nothing else."""
        try:
            item.style = self._rt.styles.style_for(item.source)
            if item.style is not None:
                self._rt.colorizer.check_style(item.style)
        except StyleError as exc:
            self._outcomes.fail(item.job, str(exc), permanent=True, started=item.claimed_at)
            return False
        return True

    def _content_changed(self, item: WorkItem, read: str) -> None:
        """The file held other content than the job's when it was read. Superseded only
        when the queue knows a newer version (a job of its own); content that has not
        settled may go back to the job's (A -> B -> A within the settle time, the return
        only a touch to the watcher), so the job waits and reads the file again."""
        job = item.job
        queued = job.sha256[:12] or "unreadable"
        try:
            latest = self._rt.jobs.latest_sha256(job.rel_path)
        except QueueError as exc:
            log.warning("cannot check for a newer version", job_id=job.id, error=one_line(exc))
            latest = None
        if latest is not None and latest != job.sha256:
            self._outcomes.fail(
                job,
                f"superseded: the file changed after it was queued (queued {queued}, now "
                f"{read[:12]}); its new content is a job of its own",
                permanent=True,
                started=item.claimed_at,
            )
            return
        delay = max(2 * self._rt.config.watch.settle_seconds, 1.0)
        log.info(
            "file changed since it was queued; read again later",
            job_id=job.id,
            path=job.rel_path,
            queued=queued,
            now=read[:12],
            retry_s=delay,
        )
        self._release([item], "content not settled", delay=delay)

    def _decode_failed(self, item: WorkItem, error: BaseException) -> None:
        """A decode that failed: the storage's fault (paused, attempt given back) or the
        file's (failed with the reason; "unexpected error decoding" is logged by the stages)."""
        if isinstance(error, ImageError):
            storage = self._rt.storage
            problem = None if error.permanent else storage.problem()
            if problem is not None:
                storage.trip(problem)
                self._release([item], "storage unavailable")
                return
            self._outcomes.fail(
                item.job, decode_error(error), permanent=error.permanent, started=item.claimed_at
            )
            return
        self._outcomes.fail(item.job, decode_error(error), permanent=False, started=item.claimed_at)

    def _colorize(self, colorizer: Any, items: list[WorkItem]) -> list[Any]:
        """RGB per item (None for one that failed, recorded); the pipeline falls back to
        image by image when the batch fails, in the compute thread."""
        images = [item.image for item in items]
        styles = [item.style for item in items]
        rgbs = self.stages.compute("compute", colorize_batch, colorizer, images, None, styles)
        for item, rgb in zip(items, rgbs):
            if isinstance(rgb, Exception):
                self._outcomes.fail(item.job, colorize_error(rgb), permanent=False, started=item.claimed_at)
        return [None if isinstance(rgb, Exception) else rgb for rgb in rgbs]

    def _release(self, items: Sequence[WorkItem], why: str, *, delay: float = 0.0) -> None:
        """Give claimed, unfinished jobs back without using an attempt."""
        self._outcomes.release(
            [item.job.id for item in items], why, delay=delay, decodes=[item.decode for item in items]
        )

    def close(self, *, wait: bool) -> None:
        self.stages.close(wait=wait)
