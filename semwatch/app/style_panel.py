"""The Colorize page's style controls (issue 20): apply a style (an upload, or a
``semwatch-style.json`` of the watch tree), spread hints or not, and save the current
hints as a style (a download, or the folder style of a finished job's watch folder).

The style and the spread setting live in the session's Workspace, like the hints, so they
survive a visit to the Queue page and stay when the next image of a series is opened.
Reading, making and writing styles goes through semwatch.app.service.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePath

import streamlit as st

from semwatch.app import service
from semwatch.app.context import AppContext
from semwatch.app.workspace import Workspace, workspace
from semwatch.log import get_logger
from semwatch.styles import STYLE_FILENAME, Style, StyleError, load_style

log = get_logger(__name__)

# A style file is a few hundred kB at most (styles.MAX_STYLE_BYTES allows 4 MB on disk);
# the uploader's own cap, far below the image uploads'.
STYLE_UPLOAD_MB = 1
_ERROR_KEY = "cz_style_error"  # the one line of the last refused style, until the next try
_DONE_KEY = "cz_style_done"  # what the last save did, shown once


def swatch(color: str) -> str:
    """A small square of ``color`` for markdown (colours are validated #rrggbb by the parser)."""
    return (
        f'<span style="display:inline-block;width:1em;height:1em;border:1px solid #333;'
        f'background:{color};vertical-align:middle"></span>'
    )


# --------------------------------------------------------------------------- applying


def render(ctx: AppContext, work: Workspace) -> None:
    """The style on the page (or how to apply one) and the spread toggle, beside the hints."""
    st.toggle(
        "Spread hints",
        value=work.spread,
        key="cz_spread",
        on_change=_spread_changed,
        help="Off: a hint colours its object and the objects like it. On: every other object "
        "also moves halfway to the nearest hint's colour (the behaviour before styles).",
    )
    style = work.style
    if style is not None:
        _show_style(style)
    error = st.session_state.get(_ERROR_KEY)
    if error:
        st.error(error)
    with st.expander("Apply a style" if style is None else "Apply another style"):
        st.file_uploader(
            f"Style file (.json, at most {STYLE_UPLOAD_MB} MB)",
            type=["json"],
            key="cz_style_upload",
            max_upload_size=STYLE_UPLOAD_MB,
            on_change=_style_uploaded,
            args=(ctx,),
        )
        _watch_tree_picker(ctx)


def _show_style(style: Style) -> None:
    colors = " ".join(swatch(c) for c in style.colors())
    st.markdown(
        f"**Style** {style.name} {colors}  \n"
        f"from {style.source_name}, {len(style.prototypes)} hinted objects"
        + (f"; palette {' '.join(swatch(c.color) for c in style.palette.colours)}" if style.palette else ""),
        unsafe_allow_html=True,
    )
    st.button("Remove style", key="cz_style_remove", on_click=_remove_style)


def _spread_changed() -> None:
    work = workspace(st.session_state)
    work.set_spread(bool(st.session_state.get("cz_spread")), time.perf_counter())


def _remove_style() -> None:
    workspace(st.session_state).restyle(None, time.perf_counter())
    st.session_state[_ERROR_KEY] = None


def _apply_style(ctx: AppContext, style: Style) -> None:
    """Put ``style`` on the page, or say in one line why this engine cannot use it."""
    try:
        ctx.colorizer().check_style(style)
    except StyleError as exc:
        log.warning("style refused in the web UI", error=str(exc))
        st.session_state[_ERROR_KEY] = str(exc)
        return
    st.session_state[_ERROR_KEY] = None
    workspace(st.session_state).restyle(style, time.perf_counter())
    log.info("style applied in the web UI", name=style.name, sha256=style.sha256[:12])


def _style_uploaded(ctx: AppContext) -> None:
    uploaded = st.session_state.get("cz_style_upload")
    if uploaded is None:
        return  # removed from the uploader: the style stays until "Remove style"
    data = uploaded.getvalue()
    if len(data) > STYLE_UPLOAD_MB * 1024 * 1024:
        st.session_state[_ERROR_KEY] = f"{uploaded.name}: style uploads are limited to {STYLE_UPLOAD_MB} MB"
        return
    try:
        style = service.read_style_upload(data, uploaded.name)
    except StyleError as exc:
        st.session_state[_ERROR_KEY] = str(exc)
        return
    _apply_style(ctx, style)


@st.cache_data(ttl=15, show_spinner=False)
def _tree_styles(root: str) -> list[Path]:
    # Every page run draws the picker; a facility's watch tree can hold many thousands of
    # files, so the walk is shared for a few seconds (a new style file shows up soon after).
    return service.watch_styles(Path(root)) if Path(root).is_dir() else []


def _watch_tree_picker(ctx: AppContext) -> None:
    root = ctx.config.watch.input_dir
    found = _tree_styles(str(root))
    if not found:
        st.caption(f"No `{STYLE_FILENAME}` in the watch folder to pick.")
        return
    choice = st.selectbox(
        "Or a folder style of the watch folder", [str(p) for p in found], key="cz_style_pick"
    )
    if st.button("Apply this folder style", key="cz_style_apply_pick"):
        try:
            style = service.read_watch_style(root, Path(choice))
        except StyleError as exc:
            st.session_state[_ERROR_KEY] = str(exc)
        else:
            _apply_style(ctx, style)
        st.rerun()


# --------------------------------------------------------------------------- saving


def save_as_style(ctx: AppContext, work: Workspace) -> None:
    """ "Save as style": offered once the result for the current hints is ready."""
    source, result = work.source, work.result
    assert source is not None
    st.markdown("**Save as style**")
    done = st.session_state.pop(_DONE_KEY, None)
    if done:
        st.success(done)
    if not work.hints:
        st.caption("Add hints to save them as a style for the next images of the series.")
        return
    if not work.fresh or result is None:
        st.caption("Offered once the result for these hints is ready.")
        return
    name = st.text_input("Style name", value=PurePath(source.name).stem, key="cz_style_name").strip()
    if not name:
        st.caption("Give the style a name.")
        return
    try:
        style = _made_style(ctx, work, name)
    except StyleError as exc:
        st.caption(str(exc))
        return
    stem = PurePath(source.name).stem
    st.download_button(
        f"Download {stem}.style.json",
        style.dumps(),
        file_name=f"{stem}.style.json",
        mime="application/json",
        key="cz_style_download",
        on_click=_mark_saved,
    )
    if source.job_id is not None:
        _folder_style(ctx, work, style)


def _made_style(ctx: AppContext, work: Workspace, name: str) -> Style:
    """The style of the current hints, made once per image, hints and name (it runs the
    network's encoder: not on every rerun)."""
    assert work.source is not None and work.result is not None
    key = (work.source.token, work.hints, work.palette, name)
    cached = st.session_state.get("cz_made_style")
    if cached is None or cached[0] != key:
        cached = (key, service.style_from_hints(ctx.colorizer(), work.result, name))
        st.session_state["cz_made_style"] = cached
    return cached[1]


def _mark_saved() -> None:
    work = workspace(st.session_state)
    work.saved = work.recipe()  # the hints are kept in the style: not lost with the image


def _folder_style(ctx: AppContext, work: Workspace, style: Style) -> None:
    """Write the style as the job's watch folder's style file, which the service applies to
    every later image in that folder and below."""
    assert work.source is not None
    root = ctx.config.watch.input_dir
    try:
        target = service.folder_style_target(root, Path(work.source.source_path))
    except StyleError as exc:
        st.caption(str(exc))
        return
    shown = os.path.relpath(target, root)
    st.caption(
        f"Or write it as `{shown}` in the watch folder: the service applies it to every new "
        "image in that folder and below."
    )
    confirmed = True
    if os.path.lexists(target):
        confirmed = st.checkbox(
            f"Replace the existing folder style ({_describe_existing(target)})", key="cz_confirm_folder_style"
        )
    if st.button("Write as folder style", disabled=not confirmed, key="cz_write_folder_style"):
        try:
            service.write_folder_style(style, root, Path(work.source.source_path))
        except (OSError, StyleError) as exc:
            log.error("cannot write the folder style", path=str(target), error=str(exc))
            st.error(f"Cannot write {shown}: {getattr(exc, 'strerror', None) or exc}")
            return
        _mark_saved()
        _tree_styles.clear()  # the picker offers the new file at once
        st.session_state[_DONE_KEY] = f"Saved the style {style.name} as {shown}"
        st.session_state.pop("cz_confirm_folder_style", None)
        st.rerun()


def _describe_existing(path: Path) -> str:
    try:
        return f"style {load_style(path).name}"
    except StyleError:
        return "unreadable"
