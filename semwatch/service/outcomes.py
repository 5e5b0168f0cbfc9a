"""What becomes of a claimed job: done, failed (with its reason) or released (attempt given
back). Each outcome is recorded in the queue, dropped from this daemon's leases, logged in
one line and counted in the metrics; a database that does not answer is logged, never
raised into the worker cycle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from semwatch.errors import one_line
from semwatch.log import get_logger
from semwatch.queue import Job, QueueError
from semwatch.service.heartbeat import Pace
from semwatch.service.runtime import Runtime

if TYPE_CHECKING:
    from concurrent.futures import Future

log = get_logger(__name__)

# complete() while the database does not answer: retried with back-off up to this interval.
COMPLETE_RETRY_FIRST_SECONDS = 1.0
COMPLETE_RETRY_MAX_SECONDS = 15.0


class Outcomes:
    """Records job outcomes for the worker cycle and the writers (any thread)."""

    def __init__(self, rt: Runtime, pace: Pace, *, retry_first: float = COMPLETE_RETRY_FIRST_SECONDS) -> None:
        self._rt = rt
        self._pace = pace
        # The first wait of complete()'s retries; it doubles up to COMPLETE_RETRY_MAX_SECONDS.
        self._retry_first = retry_first

    def fail(self, job: Job, reason: str, *, permanent: bool, started: float) -> None:
        rt = self._rt
        reason = one_line(reason)
        try:
            state = rt.jobs.fail(rt.owner, job.id, reason, permanent=permanent)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "job failure not recorded",
                job_id=job.id,
                path=job.rel_path,
                reason=reason,
                error=one_line(exc),
            )
            return
        finally:
            rt.leases.discard(job.id)
        log.warning(
            "job failed",
            job_id=job.id,
            path=job.rel_path,
            error=reason,
            permanent=permanent,
            state=state.value,
            seconds=round(time.monotonic() - started, 3),
        )
        rt.metrics.job_failed(state)

    def release(
        self, ids: Sequence[int], why: str, *, delay: float = 0.0, decodes: Sequence[Future | None] = ()
    ) -> None:
        """Give claimed, unfinished jobs back without using an attempt (their decodes, if
        any, cancelled)."""
        for future in decodes:
            if future is not None:
                future.cancel()
        if not ids:
            return
        rt = self._rt
        try:
            rt.jobs.release(rt.owner, ids, delay=delay)
        except Exception as exc:  # noqa: BLE001
            log.error(
                "leases not released",
                job_ids=ids,
                error=one_line(exc),
                expire_after_s=rt.config.queue.lease_seconds,
            )
            return
        for job_id in ids:
            rt.leases.discard(job_id)
        log.info("jobs released", job_ids=ids, reason=why)

    def mark_done(self, job: Job, target: Path, sidecar_error: str | None = None) -> bool:
        """complete(), retried while the database does not answer: the output is written, and
        a job given up here would be colorized again once its lease ran out (its lease stays
        renewed meanwhile). False when it could not be recorded (logged)."""
        rt = self._rt
        delay, failing = self._retry_first, False
        while True:
            try:
                rt.jobs.complete(rt.owner, job.id, str(target), sidecar_error=sidecar_error)
            except QueueError as exc:
                if not failing:
                    log.error(
                        "output written but job not marked done; retrying until the database answers",
                        job_id=job.id,
                        path=job.rel_path,
                        error=one_line(exc),
                    )
                    failing = True
                if self._pace.stop.is_set() and self._pace.past_deadline():
                    log.error("job not marked done before shutdown; it is redone", job_id=job.id)
                    return False
                time.sleep(delay)
                delay = min(2 * delay, COMPLETE_RETRY_MAX_SECONDS)
                continue
            except Exception as exc:  # noqa: BLE001
                # The output exists; the lease will expire and the job re-run onto the same file.
                log.error("output written but job not marked done", job_id=job.id, error=one_line(exc))
                return False
            if failing:
                log.info("job marked done after all", job_id=job.id, path=job.rel_path)
            return True
