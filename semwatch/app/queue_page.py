"""The Queue page: the service's queue database, read-only, while the daemon runs.

Counts, throughput and latency are the queue's own report (what `semwatch status` shows);
recent jobs come with thumbnails of their outputs (only files inside output.dir); failed
jobs with their reasons and a retry; finished jobs open in the Colorize page to refine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import streamlit as st

from semwatch.app import queue_view
from semwatch.app.context import COLORIZE_PAGE, AppContext
from semwatch.log import get_logger
from semwatch.queue import Job, JobState, QueueError

log = get_logger(__name__)

THUMBNAILS = 8  # finished jobs previewed (newest first)
THUMBNAIL_SIZE = 192


def render(ctx: AppContext) -> None:
    st.title("Queue")
    top = st.columns([3, 1], vertical_alignment="bottom")
    auto = top[1].toggle("Refresh every 5 s", key="q_auto")
    top[0].caption(
        "The service's job database, read-only: the page never holds a lock the service waits for."
    )
    notice = st.session_state.pop("q_notice", None)
    if notice:
        st.success(notice)
    if auto:
        st.fragment(run_every=5)(_body)(ctx)
    else:
        _body(ctx)


def _body(ctx: AppContext) -> None:
    try:
        snapshot = queue_view.read_snapshot(ctx.config)
    except queue_view.NoDatabase as exc:
        st.info(
            f"No queue database yet ({exc.args[0]}): the service (`semwatch run`) has not "
            "run with this configuration. Once it has, its jobs appear here."
        )
        return
    except QueueError as exc:
        log.warning("cannot read the queue", error=str(exc))
        st.error(f"Cannot read the queue: {exc}")
        return
    _summary(snapshot)
    _recent(ctx, snapshot.recent)
    _failures(ctx, snapshot.failed)


def _summary(snapshot: queue_view.QueueSnapshot) -> None:
    from semwatch.service_cli import _duration

    stats = snapshot.stats
    st.caption(f"Database: `{snapshot.database}`")
    cols = st.columns(6)
    for col, state in zip(cols, ("pending", "running", "done", "failed")):
        col.metric(state.capitalize(), stats.counts.get(state, 0))
    rate = stats.throughput_per_min
    cols[4].metric(
        "Done per minute",
        f"{rate['10m']:.1f}",
        help=f"Last 10 minutes ({rate['1h']:.1f} per minute over the last hour)",
    )
    latency = stats.median_latency_s
    cols[5].metric(
        "Median latency",
        _duration(latency) if latency is not None else "-",
        help="From arrival to done, median over the last hour",
    )
    if stats.oldest_pending_age_s:
        st.caption(f"Oldest waiting image: {_duration(stats.oldest_pending_age_s)}")


def _recent(ctx: AppContext, jobs: list[Job]) -> None:
    st.subheader("Recent jobs")
    if not jobs:
        st.write("No jobs yet.")
        return
    done = [job for job in jobs if job.state == JobState.DONE][:THUMBNAILS]
    if done:
        cols = st.columns(4)
        for index, job in enumerate(done):
            with cols[index % 4]:
                _done_card(ctx, job)
    st.table(  # static HTML: renders at once, also in a screenshot or a text browser
        {
            "id": [job.id for job in jobs],
            "file": [job.rel_path for job in jobs],
            "state": [job.state.value for job in jobs],
            "attempts": [job.attempts for job in jobs],
            "arrived": [_time(job.arrived_at) for job in jobs],
            "output or error": [job.error or job.output_path or "" for job in jobs],
        },
        hide_index=True,
    )


def _done_card(ctx: AppContext, job: Job) -> None:
    output = queue_view.output_file(ctx.config, job)
    thumb = _thumbnail(str(output)) if output is not None and output.is_file() else None
    if thumb is not None:
        st.image(thumb, caption=f"{job.id}: {job.rel_path}", width="stretch")
    else:
        st.caption(f"{job.id}: {job.rel_path} (no preview)")
    if st.button(
        "Refine",
        key=f"q_refine_{job.id}",
        help="Open in the Colorize page to add hints and save a refined copy beside the automatic output",
    ):
        st.session_state["refine_job"] = job.id
        st.switch_page(COLORIZE_PAGE)


@st.cache_data(max_entries=64, show_spinner=False)
def _thumbnail_cached(path: str, mtime_ns: int, size: int) -> np.ndarray | None:
    return queue_view.thumbnail(Path(path), size)


def _thumbnail(path: str) -> np.ndarray | None:
    try:
        mtime_ns = Path(path).stat().st_mtime_ns  # a rewritten output gets a new preview
    except OSError as exc:
        log.warning("cannot stat output", path=path, error=str(exc))
        return None
    return _thumbnail_cached(path, mtime_ns, THUMBNAIL_SIZE)


def _failures(ctx: AppContext, failed: list[Job]) -> None:
    st.subheader("Failed jobs")
    if not failed:
        st.write("None.")
        return
    st.caption(
        "A file that cannot be decoded fails again; fix or replace it instead (a changed "
        "file is queued on its own)."
    )
    if st.button(f"Retry all {len(failed)} shown", key="q_retry_all"):
        _retry(ctx, [job.id for job in failed])
    for job in failed:
        row = st.columns([6, 1], vertical_alignment="center")
        row[0].markdown(
            f"**{job.id}** `{job.rel_path}` · {job.attempts} "
            f"attempt{'s' if job.attempts != 1 else ''} · "
            f"{job.error or 'no reason recorded'}"
        )
        if row[1].button("Retry", key=f"q_retry_{job.id}"):
            _retry(ctx, [job.id])


def _retry(ctx: AppContext, job_ids: list[int]) -> None:
    try:
        count = queue_view.retry_failed(ctx.config, job_ids)
    except QueueError as exc:
        log.warning("retry from the web UI failed", job_ids=job_ids, error=str(exc))
        st.error(f"Retry failed: {exc}")
        return
    log.info("failed jobs re-queued from the web UI", count=count, job_ids=job_ids)
    st.session_state["q_notice"] = f"Re-queued {count} failed job{'s' if count != 1 else ''}."
    st.rerun()


def _time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
