"""The Colorize page: upload (or open a finished job), colorize, steer with hints, compare,
download, and save a refined result beside the service's automatic output.

Session state (per browser tab) holds the decoded source, the hints and the latest result;
the model is shared (AppContext.colorizer). Every decode/colorize/write goes through
semwatch.app.service.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from semwatch.app import queue_view, service, widgets
from semwatch.app.acquisition import acquisition_summary, databar_text
from semwatch.app.context import AppContext
from semwatch.hints import Hint, HintError
from semwatch.imaging import SUPPORTED_SUFFIXES, DecodedImage, ImageError, output_name
from semwatch.log import get_logger
from semwatch.queue import JobState, QueueError

log = get_logger(__name__)

UPLOAD_TYPES = sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)
DEFAULT_HINT_COLOR = "#2f7fd8"
DOWNLOAD_FORMATS = {"TIFF (metadata + provenance)": "tiff", "PNG": "png"}
_SUFFIX_FORMATS = {".tif": "tiff", ".png": "png", ".jpg": "jpeg"}
_tokens = itertools.count(1)  # tells sources and results apart across reruns


@dataclass(frozen=True)
class Source:
    """The image on the page: an upload, or the source of a finished job (to refine)."""

    token: int
    name: str  # file name shown and used for download names
    source_path: str  # recorded in the provenance
    image: DecodedImage
    gray_preview: np.ndarray  # RGB, long side app.preview_size
    job_id: int | None = None
    output: Path | None = None  # the job's automatic output (inside output.dir)


def render(ctx: AppContext) -> None:
    st.title("Colorize")
    state = st.session_state
    state.setdefault("cz_hints", [])
    _open_requested_job(ctx)
    _take_upload(ctx)
    source: Source | None = state.get("cz_source")
    if source is None:
        st.info(
            "Upload a scanning electron microscope image (TIFF, PNG, JPEG or BMP). It is "
            "colorized with the service's model and settings; click the result to steer "
            "its colours."
        )
        return
    colorizer = ctx.colorizer()
    _describe_source(source, colorizer.takes_hints)
    result = _current_result(ctx, source)
    if result is None:
        return
    after = _show_images(ctx, source, result)
    compare, details = st.columns(2)
    with compare:
        st.markdown("**Compare** (drag across the image)")
        st.iframe(widgets.compare_html(source.gray_preview, after), height="content")
    with details:
        _hint_list(source)
        _show_acquisition(source.image)
        _downloads(ctx, source, result)
    if source.job_id is not None:
        _save_refined(ctx, source, result)


# --------------------------------------------------------------------------- sources


def _take_upload(ctx: AppContext) -> None:
    state = st.session_state
    cap_mb = ctx.config.app.max_upload_mb
    uploaded = st.file_uploader(
        f"SEM image (TIFF, PNG, JPEG, BMP; at most {cap_mb} MB)",
        type=UPLOAD_TYPES,
        key="cz_upload",
        max_upload_size=cap_mb,
    )
    if uploaded is None:
        current = state.get("cz_source")
        if current is not None and current.job_id is None and state.get("cz_upload_id"):
            _set_source(None)  # the upload was removed
        state["cz_upload_id"] = None
        return
    if uploaded.file_id != state.get("cz_upload_id"):
        state["cz_upload_id"] = uploaded.file_id
        state["cz_upload_error"] = _load_upload(ctx, uploaded)
    if state.get("cz_upload_error"):
        st.error(state["cz_upload_error"])


def _load_upload(ctx: AppContext, uploaded: Any) -> str | None:
    """Decode a new upload into the page's source; the error text when it cannot be."""
    cap = ctx.config.app.max_upload_mb
    if uploaded.size > cap * 1024 * 1024:
        log.warning("upload refused: over the cap", name=uploaded.name, size=uploaded.size, max_upload_mb=cap)
        _set_source(None)
        return (
            f"{uploaded.name} is {uploaded.size / 1024 / 1024:.1f} MB: uploads are limited "
            f"to {cap} MB (app.max_upload_mb in the configuration)."
        )
    try:
        with st.spinner(f"Reading {uploaded.name}..."):
            image = service.decode_upload(
                uploaded.getvalue(), uploaded.name, max_pixels=ctx.config.engine.max_pixels
            )
    except ImageError as exc:
        log.warning("upload refused: not an image", name=uploaded.name, reason=exc.reason)
        _set_source(None)
        return f"{uploaded.name} is not an image semwatch can read: {exc.reason}"
    except OSError as exc:  # the private temporary folder could not be written
        log.error("cannot stage the upload", name=uploaded.name, error=str(exc))
        _set_source(None)
        return f"Cannot read {uploaded.name} on the server: {exc.strerror or exc}"
    _set_source(_make_source(ctx, image, name=uploaded.name, source_path=uploaded.name))
    return None


def _open_requested_job(ctx: AppContext) -> None:
    """The queue page's "Refine" puts a job id in refine_job: open that job's source."""
    job_id = st.session_state.pop("refine_job", None)
    if job_id is None:
        return
    try:
        job = queue_view.get_job(ctx.config, int(job_id))
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
            image = service.decode_file(
                path, max_pixels=ctx.config.engine.max_pixels, inside=ctx.config.watch.input_dir
            )
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
    # A file still in the uploader is not new: it must not replace the job's source.
    held = st.session_state.get("cz_upload")
    st.session_state["cz_upload_id"] = getattr(held, "file_id", None)
    _set_source(
        _make_source(
            ctx, image, name=Path(job.rel_path).name, source_path=str(path), job_id=job.id, output=output
        )
    )


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
    return Source(next(_tokens), name, source_path, image, np.dstack([gray] * 3), job_id, output)


def _set_source(source: Source | None) -> None:
    state = st.session_state
    state["cz_source"] = source
    state["cz_hints"] = []
    state["cz_result"] = None
    state["cz_downloads"] = {}


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


# --------------------------------------------------------------------------- colorizing


def _current_result(ctx: AppContext, source: Source) -> service.Colorized | None:
    """The result for the current source and hints, colorizing only when they changed."""
    state = st.session_state
    hints: list[Hint] = state["cz_hints"]
    key = (source.token, tuple((h.x, h.y, h.color) for h in hints))
    cached = state.get("cz_result")
    if cached is not None and cached[0] == key:
        return cached[1]
    colorizer = ctx.colorizer()
    try:
        with st.spinner("Colorizing..."):
            result = service.colorize(colorizer, source.image, hints, source_path=source.source_path)
    except HintError as exc:
        log.warning("hint refused", error=str(exc))
        st.error(str(exc))
        return None
    except Exception as exc:  # noqa: BLE001 - the page says what failed; the log has the trace
        log.exception("colorization failed in the web UI", source=source.source_path)
        st.error(f"Colorization failed: {type(exc).__name__}: {exc}")
        return None
    state["cz_result"] = (key, result)
    state["cz_downloads"] = {}
    return result


def _show_images(ctx: AppContext, source: Source, result: service.Colorized) -> np.ndarray:
    """Gray original beside the clickable result; returns the result's preview."""
    state = st.session_state
    after = _result_preview(ctx, result)
    scale = after.shape[1] / result.rgb.shape[1]
    controls = st.columns([2, 2, 3], vertical_alignment="bottom")
    color = controls[0].color_picker("Colour of the next hint", DEFAULT_HINT_COLOR, key="cz_color")
    controls[1].button("Clear hints", on_click=_clear_hints, disabled=not state["cz_hints"])
    controls[2].caption(
        f"Colorized in {result.seconds:.2f} s. Click a point on the colorized "
        "image to give it the colour on the left."
    )
    notice = state.pop("cz_notice", None)
    if notice:
        st.warning(notice)
    left, right = st.columns(2)
    left.markdown("**Gray original**")
    left.image(source.gray_preview, width="stretch", output_format="JPEG")
    with right:
        st.markdown("**Colorized** (click to add a hint)")
        points = [(h.x * scale, h.y * scale, h.color) for h in state["cz_hints"]]
        click = widgets.click_point(widgets.draw_markers(after, points), key=f"cz_click_{source.token}")
    if click is not None and click.stamp != state.get("cz_click_stamp"):
        state["cz_click_stamp"] = click.stamp
        _add_hint(source, click, color)
    return after


def _result_preview(ctx: AppContext, result: service.Colorized) -> np.ndarray:
    """The result scaled to app.preview_size, once per result (every rerun shows it)."""
    state = st.session_state
    cached = state.get("cz_preview")
    if cached is None or cached[0] is not result:
        cached = (result, widgets.preview(result.rgb, ctx.config.app.preview_size))
        state["cz_preview"] = cached
    return cached[1]


def _add_hint(source: Source, click: widgets.Click, color: str) -> None:
    height, width = source.image.gray.shape
    x, y = widgets.to_image_pixels(click, height, width)
    bar = source.image.databar_row
    if bar is not None and y >= bar:
        st.session_state["cz_notice"] = "That point is in the data bar, which stays gray: no hint added."
    else:
        st.session_state["cz_hints"] = [*st.session_state["cz_hints"], Hint.from_color(x, y, color)]
    st.rerun()


def _clear_hints() -> None:
    st.session_state["cz_hints"] = []


def _remove_hint(index: int) -> None:
    hints = list(st.session_state["cz_hints"])
    if 0 <= index < len(hints):
        del hints[index]
    st.session_state["cz_hints"] = hints


def _hint_list(source: Source) -> None:
    hints: list[Hint] = st.session_state["cz_hints"]
    if not hints:
        return
    st.markdown(f"**Hints** ({len(hints)}, recorded in the downloads' provenance)")
    for index, hint in enumerate(hints):
        row = st.columns([4, 1], vertical_alignment="center")
        row[0].markdown(
            f'<span style="display:inline-block;width:1em;height:1em;border:1px solid #333;'
            f'background:{hint.color};vertical-align:middle"></span> '
            f"Hint {index + 1}: x {int(hint.x)}, y {int(hint.y)} · `{hint.color}`",
            unsafe_allow_html=True,
        )
        row[1].button(
            "Remove",
            key=f"cz_remove_{source.token}_{index}_{hint.x}_{hint.y}",
            on_click=_remove_hint,
            args=(index,),
        )


# --------------------------------------------------------------------------- details, output


def _show_acquisition(image: DecodedImage) -> None:
    rows = acquisition_summary(image.metadata)
    with st.expander("Acquisition metadata and data bar", expanded=True):
        if rows:
            st.table({"setting": [r[0] for r in rows], "value": [r[1] for r in rows]})
        else:
            st.caption("The file carries no FEI/Thermo or Zeiss acquisition metadata.")
        st.write(databar_text(image.gray.shape[0], image.databar_row))


def _downloads(ctx: AppContext, source: Source, result: service.Colorized) -> None:
    state = st.session_state
    label = st.radio("Download as", list(DOWNLOAD_FORMATS), horizontal=True, key="cz_format")
    fmt = DOWNLOAD_FORMATS[label]
    cache: dict = state.setdefault("cz_downloads", {})
    if fmt not in cache:
        try:
            cache[fmt] = service.encode(
                result, ctx.colorizer(), fmt=fmt, jpeg_quality=ctx.config.output.jpeg_quality
            )
        except (OSError, ValueError) as exc:
            log.exception("cannot encode the download", fmt=fmt)
            st.error(f"Cannot prepare the {fmt.upper()} file: {exc}")
            return
    name = queue_view.refined_name(source.name, fmt) if result.hints else output_name(source.name, fmt)
    st.download_button(
        f"Download {name}",
        cache[fmt],
        file_name=name,
        mime="image/tiff" if fmt == "tiff" else "image/png",
        key="cz_download",
        type="primary",
    )


def _save_refined(ctx: AppContext, source: Source, result: service.Colorized) -> None:
    """Save beside the automatic output (<stem>.refined<ext>); replacing either existing
    file needs a tick first."""
    assert source.output is not None
    fmt = _SUFFIX_FORMATS.get(source.output.suffix.lower(), ctx.config.output.format)
    target = queue_view.refined_target(source.output)
    st.subheader("Save the refined result")
    saved = st.session_state.pop("cz_saved", None)
    if saved:
        st.success(saved)
    st.write(
        f"Writes `{target}` beside the service's automatic output `{source.output.name}`, "
        "which stays as it is."
    )
    confirmed = True
    if target.exists():
        confirmed = st.checkbox(f"Replace the existing {target.name}", key="cz_confirm_refined")
    if st.button("Save refined result", disabled=not confirmed, key="cz_save_refined"):
        _write(ctx, target, result, fmt)
    with st.expander("Replace the automatic output instead"):
        sure = st.checkbox(
            f"Yes, overwrite {source.output.name}, the service's own output, with this refined result",
            key="cz_confirm_replace",
        )
        if st.button("Replace the automatic output", disabled=not sure, key="cz_replace"):
            _write(ctx, source.output, result, fmt)


def _write(ctx: AppContext, target: Path, result: service.Colorized, fmt: str) -> None:
    try:
        service.write(target, result, ctx.colorizer(), fmt=fmt, jpeg_quality=ctx.config.output.jpeg_quality)
    except OSError as exc:
        log.error("cannot save the refined result", path=str(target), error=str(exc))
        st.error(f"Cannot write {target}: {exc.strerror or exc}")
        return
    log.info("refined result saved", path=str(target), hints=len(result.hints))
    # Rerun so the page shows the files as they are now (replacing one needs a tick).
    st.session_state["cz_saved"] = f"Saved {target}"
    st.session_state.pop("cz_confirm_refined", None)
    st.session_state.pop("cz_confirm_replace", None)
    st.rerun()
