"""The Queue page: the service's state and its queue database, while the daemon runs.

The service's state comes from the daemons' heartbeat rows (what `semwatch status` shows);
counts, throughput and latency are the queue's own report; recent jobs come with thumbnails
of their outputs (only files inside output.dir); failed jobs with their reasons and a
retry; finished jobs open in the Colorize page to refine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from semwatch.app import queue_view
from semwatch.app.context import COLORIZE_PAGE, AppContext
from semwatch.log import get_logger
from semwatch.queue import Job, JobState, QueueError, ServiceState
from semwatch.report import START_HINT, clock_time, duration, service_details, service_headline, waiting_note

log = get_logger(__name__)

THUMBNAILS = 8  # finished jobs previewed (newest first)
GRID_COLUMNS = 4
# Fitted into this box: twice the ~290 px a card is wide at 1400 px, so sharp on HiDPI too;
# one box for all, so every card (and its Refine button) has the same height.
THUMBNAIL_BOX = (576, 432)
CAPTION_CHARS = 40  # one line in a card at 1400 px


def render(ctx: AppContext) -> None:
    st.title("Queue")
    top = st.columns([3, 1], vertical_alignment="bottom")
    auto = top[1].toggle("Refresh every 5 s", key="q_auto")
    top[0].caption(
        "Reads the service's job database without ever holding a lock the service waits for. "
        "Its one change is Retry, which queues failed jobs again as `semwatch retry` does."
    )
    notice = st.session_state.pop("q_notice", None)
    if notice:
        kind, text = notice
        (st.success if kind == "success" else st.warning)(text)
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
    _service(snapshot.service, pending=snapshot.stats.counts.get("pending", 0))
    _summary(snapshot)
    _recent(ctx, snapshot.recent)
    _failures(ctx, snapshot.failed)


def _service(service: ServiceState, *, pending: int) -> None:
    """The service's state from the heartbeat rows: running, several daemons, or stopped."""
    headline = f"**Service {service_headline(service)}**"
    if service.workers:
        st.success(headline, icon=":material/check_circle:")
    else:
        note = waiting_note(service) if pending else None
        st.warning(headline + (f"  \n{note}" if note else ""), icon=":material/pause_circle:")
    details = service_details(service)
    if details:
        st.caption("  \n".join(details))


def _summary(snapshot: queue_view.QueueSnapshot) -> None:
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
        duration(latency) if latency is not None else "-",
        help="From arrival to done, median over the last hour",
    )
    if stats.oldest_pending_age_s is not None:
        st.caption(
            f"Oldest waiting image: queued {duration(stats.oldest_pending_age_s)} ago "
            "(a retried job counts from its retry)"
        )


def _recent(ctx: AppContext, jobs: list[Job]) -> None:
    st.subheader("Recent jobs")
    if not jobs:
        st.write("No jobs yet.")
        return
    done = [job for job in jobs if job.state == JobState.DONE][:THUMBNAILS]
    # A row of columns per line of cards: cards side by side line up (same box, one-line
    # caption), and a short column never pushes the next line's cards down.
    for start in range(0, len(done), GRID_COLUMNS):
        for col, job in zip(st.columns(GRID_COLUMNS), done[start : start + GRID_COLUMNS]):
            with col:
                _done_card(ctx, job)
    st.table(  # static HTML: renders at once, also in a screenshot or a text browser
        {
            "id": [job.id for job in jobs],
            "file": [job.rel_path for job in jobs],
            "state": [job.state.value for job in jobs],
            "attempts": [job.attempts for job in jobs],
            "arrived": [clock_time(job.arrived_at) for job in jobs],
            "output or error": [job.error or job.output_path or "" for job in jobs],
        },
        hide_index=True,
    )


def _done_card(ctx: AppContext, job: Job) -> None:
    output = queue_view.output_file(ctx.config, job)
    thumb = _thumbnail(str(output)) if output is not None and output.is_file() else None
    label = _one_line(f"{job.id}: {job.rel_path}")
    if thumb is None:
        thumb = _blank_thumbnail()
        label = _one_line(f"{job.id}: {job.rel_path}", CAPTION_CHARS - 13) + " (no preview)"
    st.image(thumb, caption=label, width="stretch")
    if st.button(
        "Refine",
        key=f"q_refine_{job.id}",
        help="Open in the Colorize page to add hints and save a refined copy beside the automatic output",
    ):
        st.session_state["refine_job"] = job.id
        st.switch_page(COLORIZE_PAGE)


def _one_line(text: str, chars: int = CAPTION_CHARS) -> str:
    """Short enough for one caption line; the end of a path (the file name) is kept."""
    return text if len(text) <= chars else text[: chars // 3] + "…" + text[-(chars - chars // 3 - 1) :]


@st.cache_data(max_entries=64, show_spinner=False)
def _thumbnail_cached(path: str, mtime_ns: int, box: tuple[int, int]) -> np.ndarray | None:
    return queue_view.thumbnail(Path(path), box)


def _thumbnail(path: str) -> np.ndarray | None:
    try:
        mtime_ns = Path(path).stat().st_mtime_ns  # a rewritten output gets a new preview
    except OSError as exc:
        log.warning("cannot stat output", path=path, error=str(exc))
        return None
    return _thumbnail_cached(path, mtime_ns, THUMBNAIL_BOX)


def _blank_thumbnail() -> np.ndarray:
    return np.full((THUMBNAIL_BOX[1], THUMBNAIL_BOX[0], 3), 240, np.uint8)


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
        retried = queue_view.retry_failed(ctx.config, job_ids)
    except QueueError as exc:
        log.warning("retry from the web UI failed", job_ids=job_ids, error=str(exc))
        st.error(f"Retry failed: {exc}")
        return
    count = retried.count
    log.info("failed jobs re-queued from the web UI", count=count, job_ids=job_ids)
    text = f"Re-queued {count} failed job{'s' if count != 1 else ''}."
    if count and not retried.service.workers:
        # Said now, not discovered later: with no worker the job waits, maybe for days.
        them = "It waits" if count == 1 else "They wait"
        st.session_state["q_notice"] = (
            "warning",
            f"{text} {them} until the service starts ({START_HINT}). "
            f"Service {service_headline(retried.service)}.",
        )
    else:
        st.session_state["q_notice"] = ("success", text)
    st.rerun()
