"""The Colorize page: upload (or open a finished job), colorize, steer with hints and a
style, zoom, compare, download, save a refined result beside the service's automatic
output, and save the hints as a style (a download, or a finished job's folder style).

The work in progress is the session's Workspace (semwatch.app.workspace): it survives page
switches, and replacing an image with unsaved hints asks first. The model is shared
(AppContext.colorizer); every decode/colorize/write goes through semwatch.app.service.

A run draws the page from the workspace as it is (a new hint's marker at once, on the
result it is about to change), then colorizes what is stale and reruns: the image stays
where it is, and a one-line status above it says what is going on.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from semwatch.app import palette_panel, queue_view, service, style_panel, widgets
from semwatch.app.acquisition import acquisition_summary, databar_text
from semwatch.app.context import AppContext
from semwatch.app.workspace import Change, Source, Workspace, workspace
from semwatch.hints import Hint, HintError
from semwatch.imaging import SUPPORTED_SUFFIXES, DecodedImage, ImageError, ImageTooLarge, output_name
from semwatch.log import get_logger
from semwatch.queue import JobState, QueueError
from semwatch.styles import StyleError

log = get_logger(__name__)

UPLOAD_TYPES = sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)
DEFAULT_HINT_COLOR = "#2f7fd8"
DOWNLOAD_FORMATS = {"TIFF (metadata + provenance)": "tiff", "PNG": "png"}
_SUFFIX_FORMATS = {".tif": "tiff", ".png": "png", ".jpg": "jpeg"}
# A quick low-resolution look (long side QUICK_SIDE) comes first when the full result takes
# longer than QUICK_AFTER_SECONDS, on images above QUICK_PIXELS (below, the full-resolution
# work is small: the look would cost as much as the result), and as long as the look costs
# less than half the full result (measured: the engine's fixed cost can dominate).
QUICK_AFTER_SECONDS = 1.0
QUICK_PIXELS = 4_000_000
QUICK_SIDE = 256


def render(ctx: AppContext) -> None:
    work = workspace(st.session_state)
    _take_refine_request(work)
    _settle_change(ctx, work)
    source = work.source
    if source is None:
        # The landing page; with an image, its height goes to the image (the top
        # navigation names the page) and the uploader moves into the side panel.
        st.title("Colorize")
        _uploader(ctx)
        _upload_error()
        st.info(
            "Upload a scanning electron microscope image (TIFF, PNG, JPEG or BMP). It is "
            "colorized with the service's model and settings; click the result to steer "
            "its colours, drag a box on it to zoom in."
        )
        return
    _describe_source(source, ctx.colorizer().takes_hints)
    _take_click(work)
    main, side = st.columns([3, 1], gap="medium")
    with main:
        _status_line(work)
        _clickable_image(ctx, work)
        with st.expander("Compare with the gray original"):
            after = _result_preview(ctx, work)
            if after is not None:
                st.iframe(widgets.compare_html(source.gray_preview, after), height="content")
    with side:
        _hint_controls(work)
        _hint_list(work)
        style_panel.render(ctx, work)
        palette_panel.render(work)
        _downloads(ctx, work)
        if source.job_id is not None:
            _save_refined(ctx, work)
        style_panel.save_as_style(ctx, work)
        _show_acquisition(source.image)
        _uploader(ctx, compact=True)
        _upload_error()
    _colorize_if_stale(ctx, work)


# --------------------------------------------------------------------------- sources


def _uploader(ctx: AppContext, *, compact: bool = False) -> None:
    cap_mb = ctx.config.app.max_upload_mb
    st.file_uploader(
        f"{'Open another image' if compact else 'SEM image'} (TIFF, PNG, JPEG, BMP; at most {cap_mb} MB)",
        type=UPLOAD_TYPES,
        key="cz_upload",
        max_upload_size=cap_mb,
        # Only a change the user makes: the empty uploader met after a visit to the Queue
        # page is not a removal.
        on_change=_upload_changed,
    )


def _upload_error() -> None:
    error = st.session_state.get("cz_upload_error")  # until the next change of image
    if error:
        st.error(error)


def _upload_changed() -> None:
    work = workspace(st.session_state)
    uploaded = st.session_state.get("cz_upload")
    if uploaded is None:
        if work.source is not None and work.source.job_id is None:
            work.pending = Change(what=work.source.name, closes=True)  # removed from the uploader
        return
    work.pending = Change(what=uploaded.name, upload=(uploaded.name, uploaded.getvalue()))


def _take_refine_request(work: Workspace) -> None:
    """The Queue page's "Refine" puts a job id in refine_job."""
    job_id = st.session_state.pop("refine_job", None)
    if job_id is not None:
        work.pending = Change(what=f"job {job_id}", job_id=int(job_id))


def _settle_change(ctx: AppContext, work: Workspace) -> None:
    """Apply a requested change of image, or ask first when it would drop unsaved hints."""
    change = work.pending
    if change is None:
        return
    if not work.unsaved():
        work.pending = None
        _apply(ctx, work, change)
        return
    assert work.source is not None
    count = len(work.hints)
    instead = "Close it" if change.closes else f"Open {change.what} instead"
    st.warning(
        f"{count} hint{'s' if count != 1 else ''} on {work.source.name} "
        f"{'were' if count != 1 else 'was'} neither downloaded nor saved. {instead} and drop "
        f"{'them' if count != 1 else 'it'}?",
        icon=":material/help:",
    )
    left, right, _ = st.columns([2, 2, 3])
    if left.button(f"{instead}, drop the hints", key="cz_confirm_change", type="primary"):
        work.pending = None
        _apply(ctx, work, change)
        st.rerun()
    if right.button(f"Keep working on {work.source.name}", key="cz_keep"):
        work.pending = None
        st.rerun()


def _apply(ctx: AppContext, work: Workspace, change: Change) -> None:
    st.session_state["cz_upload_error"] = None
    if change.upload is not None:
        error = _open_upload(ctx, work, *change.upload)
        st.session_state["cz_upload_error"] = error
    elif change.job_id is not None:
        _open_job(ctx, work, change.job_id)
    else:
        work.open(None, time.perf_counter())


def _open_upload(ctx: AppContext, work: Workspace, name: str, data: bytes) -> str | None:
    """Decode a new upload onto the page; the error text when it cannot be (the image on
    the page, if any, stays)."""
    cap = ctx.config.app.max_upload_mb
    if len(data) > cap * 1024 * 1024:
        log.warning("upload refused: over the cap", name=name, size=len(data), max_upload_mb=cap)
        return (
            f"{name} is {len(data) / 1024 / 1024:.1f} MB: uploads are limited "
            f"to {cap} MB (app.max_upload_mb in the configuration)."
        )
    try:
        with st.spinner(f"Reading {name}..."):
            image = service.decode_upload(data, name, engine=ctx.config.engine)
    except ImageTooLarge as exc:
        log.warning("upload refused: too large", name=name, reason=exc.reason)
        return f"{name} is too large for this server: {exc.reason}"
    except ImageError as exc:
        log.warning("upload refused: not an image", name=name, reason=exc.reason)
        return f"{name} is not an image semwatch can read: {exc.reason}"
    except OSError as exc:  # the private temporary folder could not be written
        log.error("cannot stage the upload", name=name, error=str(exc))
        return f"Cannot read {name} on the server: {exc.strerror or exc}"
    work.open(_make_source(ctx, image, name=name, source_path=name), time.perf_counter())
    return None


def _open_job(ctx: AppContext, work: Workspace, job_id: int) -> None:
    """Open a finished job's source to refine it."""
    try:
        job = queue_view.get_job(ctx.config, job_id)
    except QueueError as exc:
        log.warning("cannot read the queue", error=str(exc))
        st.error(f"Cannot read the queue: {exc}")
        return
    if job is None or job.state != JobState.DONE:
        st.error(f"Job {job_id} is not a finished job; refine works on done jobs.")
        return
    output = queue_view.output_file(ctx.config, job)
    try:
        path = queue_view.source_file(ctx.config, job)
        with st.spinner(f"Reading {job.rel_path}..."):
            image = service.decode_file(path, engine=ctx.config.engine, inside=ctx.config.watch.input_dir)
    except (ValueError, ImageError) as exc:
        log.warning("cannot open a job's source", job_id=job.id, error=str(exc))
        st.error(f"Cannot open job {job.id}'s source: {exc}")
        return
    if output is None:
        st.error(f"Job {job.id}'s output is not inside the output folder; nothing to refine.")
        return
    if image.sha256 != job.sha256:
        st.warning(
            f"{job.rel_path} has changed since job {job.id} colorized it; you are "
            "refining its current content."
        )
    source = _make_source(
        ctx, image, name=Path(job.rel_path).name, source_path=str(path), job_id=job.id, output=output
    )
    work.open(source, time.perf_counter())


def _make_source(
    ctx: AppContext,
    image: DecodedImage,
    *,
    name: str,
    source_path: str,
    job_id: int | None = None,
    output: Path | None = None,
) -> Source:
    gray = widgets.preview(image.gray, ctx.config.app.preview_size)
    return Source(name, source_path, image, np.dstack([gray] * 3), job_id, output)


def _describe_source(source: Source, takes_hints: bool) -> None:
    image = source.image
    height, width = image.gray.shape
    what = f"job {source.job_id}: `{source.source_path}`" if source.job_id else f"`{source.name}`"
    st.caption(
        f"{what} · {width} x {height} px · {image.source_dtype}"
        + (f" · display window {image.window.low:g}-{image.window.high:g}" if image.window else "")
    )
    for warning in image.warnings:
        st.warning(warning)
    if not takes_hints:
        st.info(
            "This model's network does not take hints itself: each hint colours the "
            "region (object) it falls in, after the network has coloured the image."
        )


# --------------------------------------------------------------------------- the image


def _click_key(work: Workspace) -> str:
    assert work.source is not None
    return f"cz_click_{work.source.token}"


def _take_click(work: Workspace) -> None:
    """A click adds a hint, a drag zooms: taken before anything is drawn, so this run
    already shows the new marker (or the zoomed view)."""
    click = widgets.latest_click(_click_key(work))
    if click is None or click.stamp == work.click_stamp:
        return
    work.click_stamp = click.stamp
    assert work.source is not None
    height, width = work.source.image.gray.shape
    if click.is_drag:
        work.zoom = widgets.zoom_box(click, height, width, work.zoom)
        return
    x, y = widgets.to_image_pixels(click, height, width, work.zoom)
    bar = work.source.image.databar_row
    if bar is not None and y >= bar:
        work.notice = "That point is in the data bar, which stays gray: no hint added."
        return
    color = st.session_state.get("cz_color", DEFAULT_HINT_COLOR)
    work.steer((*work.hints, Hint.from_color(x, y, color)), time.perf_counter())


def _status_line(work: Workspace) -> None:
    """One line in a fixed place above the image: what the page is doing or did."""
    bar = st.columns([5, 1], vertical_alignment="center")
    count = len(work.hints)
    steering = [f"{count} hint{'s' if count != 1 else ''}"] if count else []
    if work.style is not None:
        steering.append(f"the style {work.style.name}")
    if work.palette is not None:
        steering.append("the palette")
    with_hints = f" with {' and '.join(steering)}" if steering else ""
    failure = work.failure_now()
    if failure is not None:
        text = f":material/error: {failure}"
    elif work.notice:
        text = f":material/warning: {work.notice}"
        work.notice = None
    elif not work.fresh:
        quick = work.quick is not None and work.quick[0] == work.recipe()
        text = (
            f":material/hourglass_top: Quick low-resolution look; colorizing at full resolution{with_hints}..."
            if quick
            else f":material/hourglass_top: Colorizing{with_hints}..."
        )
    else:
        assert work.result is not None
        waited = work.waited
        text = (
            f"Colorized in {waited:.1f} s ({work.result.seconds:.1f} s of it in the engine)"
            if waited is not None
            else f"Colorized ({work.result.seconds:.1f} s in the engine)"
        ) + " · click: add a hint · drag a box: zoom in"
    bar[0].markdown(text)
    bar[1].button(
        "Whole image",
        key="cz_unzoom",
        icon=":material/zoom_out_map:",
        disabled=work.zoom is None,
        on_click=_unzoom,
        width="stretch",
    )


def _unzoom() -> None:
    workspace(st.session_state).zoom = None


def _clickable_image(ctx: AppContext, work: Workspace) -> None:
    """The best picture there is for the current hints (the result; while it is computed,
    the quick look or the previous result; before any, the gray image), whole or zoomed,
    with a numbered marker per hint."""
    source = work.source
    assert source is not None
    full_shape = source.image.gray.shape
    size = (source.gray_preview.shape[1], source.gray_preview.shape[0])
    base = _picture(ctx, work)
    shown = widgets.view(base, full_shape, work.zoom, size)
    points = [(*widgets.to_view(h.x, h.y, full_shape, work.zoom, size), h.color) for h in work.hints]
    widgets.click_point(widgets.draw_markers(shown, points), key=_click_key(work))


def _picture(ctx: AppContext, work: Workspace) -> np.ndarray:
    recipe = work.recipe()
    assert work.source is not None and recipe is not None
    full = (
        work.result if work.result_recipe is not None and work.result_recipe.source == recipe.source else None
    )
    if full is not None and work.fresh:
        # Zoomed: cut from the full resolution; whole: the preview made once per result.
        return full.rgb if work.zoom is not None else _result_preview(ctx, work)
    if work.quick is not None and work.quick[0] == recipe:
        return work.quick[1]
    if full is not None:  # the previous result, under the new marker, until the new one
        return full.rgb if work.zoom is not None else _result_preview(ctx, work)
    return work.source.gray_preview


def _result_preview(ctx: AppContext, work: Workspace) -> np.ndarray | None:
    """The latest result scaled to app.preview_size, once per result (every rerun shows it)."""
    if work.result is None:
        return None
    state = st.session_state
    cached = state.get("cz_preview")
    if cached is None or cached[0] is not work.result:
        cached = (work.result, widgets.preview(work.result.rgb, ctx.config.app.preview_size))
        state["cz_preview"] = cached
    return cached[1]


# --------------------------------------------------------------------------- colorizing


def _colorize_if_stale(ctx: AppContext, work: Workspace) -> None:
    """After the page is drawn: the quick look (when the full result is slow), then the
    full result; each followed by a rerun that shows it in place."""
    recipe = work.recipe()
    source = work.source
    if source is None or recipe is None or work.fresh:
        return
    if work.failure_now() is not None:
        return  # said in the status line; a new hint or image tries again
    colorizer = ctx.colorizer()
    try:
        if _wants_quick(work) and (work.quick is None or work.quick[0] != recipe):
            started = time.perf_counter()
            rgb = service.colorize_quick(
                colorizer,
                source.image,
                work.hints,
                long_side=QUICK_SIDE,
                style=work.style,
                spread=work.spread,
                palette=work.palette,
            )
            work.quick, work.quick_seconds = (recipe, rgb), time.perf_counter() - started
            st.rerun()
        started = time.perf_counter()
        result = service.colorize(
            colorizer,
            source.image,
            work.hints,
            source_path=source.source_path,
            style=work.style,
            spread=work.spread,
            palette=work.palette,
        )
    except (HintError, StyleError) as exc:  # one line each, naming the file or the hint
        log.warning("hints or style refused", error=str(exc))
        work.failure = (recipe, str(exc))
        st.rerun()
    except Exception as exc:  # noqa: BLE001 - the page says what failed; the log has the trace
        log.exception("colorization failed in the web UI", source=source.source_path)
        work.failure = (recipe, f"Colorization failed: {type(exc).__name__}: {exc}")
        st.rerun()
    now = time.perf_counter()
    work.finish(result, recipe, now, now - started)
    st.rerun()


def _wants_quick(work: Workspace) -> bool:
    assert work.source is not None
    if work.source.image.gray.size <= QUICK_PIXELS:
        return False
    full, quick = work.full_seconds, work.quick_seconds
    if full is not None and (full <= QUICK_AFTER_SECONDS or (quick is not None and quick > full / 2)):
        return False
    return True


# --------------------------------------------------------------------------- hints


def _hint_controls(work: Workspace) -> None:
    row = st.columns([3, 2], vertical_alignment="bottom")
    # persist_state: the widgets' values come back after a visit to the Queue page too.
    row[0].color_picker(
        "Colour of the next hint", DEFAULT_HINT_COLOR, key="cz_color", persist_state="session"
    )
    row[1].button("Clear hints", on_click=_clear_hints, disabled=not work.hints, width="stretch")


def _clear_hints() -> None:
    workspace(st.session_state).steer((), time.perf_counter())


def _remove_hint(index: int) -> None:
    work = workspace(st.session_state)
    hints = list(work.hints)
    if 0 <= index < len(hints):
        del hints[index]
    work.steer(tuple(hints), time.perf_counter())


def _hint_list(work: Workspace) -> None:
    hints = work.hints
    if not hints:
        st.caption("No hints yet: click the image to give a point the colour above.")
        return
    assert work.source is not None
    st.markdown(f"**Hints** ({len(hints)}, recorded in the downloads' provenance)")
    for index, hint in enumerate(hints):
        row = st.columns([4, 2], vertical_alignment="center")
        row[0].markdown(
            f'<span style="display:inline-block;width:1em;height:1em;border:1px solid #333;'
            f'background:{hint.color};vertical-align:middle"></span> '
            f"Hint {index + 1}: x {int(hint.x)}, y {int(hint.y)}",
            unsafe_allow_html=True,
        )
        row[1].button(
            "Remove",
            key=f"cz_remove_{work.source.token}_{index}_{hint.x}_{hint.y}",
            on_click=_remove_hint,
            args=(index,),
            width="stretch",
        )


# --------------------------------------------------------------------------- details, output


def _show_acquisition(image: DecodedImage) -> None:
    rows = acquisition_summary(image.metadata)
    with st.expander("Acquisition metadata and data bar"):
        if rows:
            st.table({"setting": [r[0] for r in rows], "value": [r[1] for r in rows]})
        else:
            st.caption("The file carries no FEI/Thermo or Zeiss acquisition metadata.")
        st.write(databar_text(image.gray.shape[0], image.databar_row))


def _downloads(ctx: AppContext, work: Workspace) -> None:
    source = work.source
    assert source is not None
    label = st.radio(
        "Download as", list(DOWNLOAD_FORMATS), horizontal=True, key="cz_format", persist_state="session"
    )
    fmt = DOWNLOAD_FORMATS[label]
    recipe = work.recipe()
    steered = recipe is not None and recipe.steered
    name = queue_view.refined_name(source.name, fmt) if steered else output_name(source.name, fmt)
    if not work.fresh or work.result is None:
        # The same place and size as the button it becomes: nothing moves.
        st.button(f"Download {name}", key="cz_download_wait", disabled=True, help="After colorizing")
        return
    if fmt not in work.downloads:
        try:
            work.downloads[fmt] = service.encode(
                work.result, ctx.colorizer(), fmt=fmt, jpeg_quality=ctx.config.output.jpeg_quality
            )
        except (OSError, ValueError) as exc:
            log.exception("cannot encode the download", fmt=fmt)
            st.error(f"Cannot prepare the {fmt.upper()} file: {exc}")
            return
    st.download_button(
        f"Download {name}",
        work.downloads[fmt],
        file_name=name,
        mime="image/tiff" if fmt == "tiff" else "image/png",
        key="cz_download",
        type="primary",
        on_click=_mark_saved,
    )


def _mark_saved() -> None:
    work = workspace(st.session_state)
    work.saved = work.result_recipe


def _save_refined(ctx: AppContext, work: Workspace) -> None:
    """Save beside the automatic output (<stem>.refined<ext>), offered once there is
    something to save (hints); replacing either existing file needs a tick first."""
    source, result = work.source, work.result
    assert source is not None and source.output is not None
    st.markdown("**Save the refined result**")
    saved = st.session_state.pop("cz_saved", None)
    if saved:
        st.success(saved)
    recipe = work.recipe()
    if recipe is None or not recipe.steered:
        st.caption(
            f"Add a hint or apply a style to save a refined result beside the service's automatic output "
            f"`{source.output.name}` (without hints it would be a copy of it)."
        )
        return
    if not work.fresh or result is None:
        st.caption("Offered once the result for these hints and style is ready.")
        return
    fmt = _SUFFIX_FORMATS.get(source.output.suffix.lower(), ctx.config.output.format)
    target = queue_view.refined_target(source.output)
    st.caption(
        f"Writes `{target.name}` beside the service's automatic output `{source.output.name}`, which stays."
    )
    confirmed = True
    if target.exists():
        confirmed = st.checkbox(f"Replace the existing {target.name}", key="cz_confirm_refined")
    if st.button("Save refined result", disabled=not confirmed, key="cz_save_refined"):
        _write(ctx, work, target, result, fmt)
    with st.expander("Replace the automatic output instead"):
        sure = st.checkbox(
            f"Yes, overwrite {source.output.name}, the service's own output, with this refined result",
            key="cz_confirm_replace",
        )
        if st.button("Replace the automatic output", disabled=not sure, key="cz_replace"):
            _write(ctx, work, source.output, result, fmt)


def _write(ctx: AppContext, work: Workspace, target: Path, result: service.Colorized, fmt: str) -> None:
    try:
        service.write(target, result, ctx.colorizer(), fmt=fmt, jpeg_quality=ctx.config.output.jpeg_quality)
    except OSError as exc:
        log.error("cannot save the refined result", path=str(target), error=str(exc))
        st.error(f"Cannot write {target}: {exc.strerror or exc}")
        return
    log.info(
        "refined result saved",
        path=str(target),
        hints=len(result.hints),
        style=result.style.name if result.style is not None else None,
    )
    work.saved = work.result_recipe
    # Rerun so the page shows the files as they are now (replacing one needs a tick).
    st.session_state["cz_saved"] = f"Saved {target}"
    st.session_state.pop("cz_confirm_refined", None)
    st.session_state.pop("cz_confirm_replace", None)
    st.rerun()
