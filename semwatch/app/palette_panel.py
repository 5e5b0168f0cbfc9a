"""The Colorize page's palette field (issue 23): up to 4 colours for the whole frame,
without positions, typed as text ("#e0b030,#3060d0" or "#e0b030:0.7,#3060d0:0.3") and
shown as swatches with their shares.

The palette lives in the session's Workspace beside the hints and the style, stays when
the next image of a series is opened, and wins over a style's own palette and over the
hints' colours (the engine's rule, semwatch.styles.palette_for). Below the field the page
says which palette applies and where it came from.
"""

from __future__ import annotations

import time

import streamlit as st

from semwatch.app.style_panel import swatch
from semwatch.app.workspace import Workspace, workspace
from semwatch.log import get_logger
from semwatch.palette import PALETTE_COLOURS, Palette, PaletteError, parse_palette
from semwatch.styles import palette_for

log = get_logger(__name__)

_KEY = "cz_palette"  # the text field
_ERROR_KEY = "cz_palette_error"  # the one line of the last refused palette, until the next try
EXAMPLE = "#e0b030,#3060d0"
# What the line under the field says, by where the palette in force came from.
_APPLIES = {
    "given": "**Palette**",
    "style": "The style's palette applies:",
    "hints": "Your hints' colours are the palette:",
}


def swatches(palette: Palette) -> str:
    """The palette as swatches with their shares, for markdown."""
    return " ".join(f"{swatch(c.color)} {c.weight:.0%}" for c in palette.colours)


def render(work: Workspace) -> None:
    """The palette field, what it holds, and which palette applies."""
    if _KEY not in st.session_state and work.palette is not None:
        st.session_state[_KEY] = work.palette.as_text()  # back from the Queue page
    st.text_input(
        f"Palette (up to {PALETTE_COLOURS} colours for the whole frame)",
        key=_KEY,
        placeholder=f"{EXAMPLE}  or  #e0b030:0.7,#3060d0:0.3",
        on_change=_palette_changed,
        help="Colours to use, without saying where: hex colours, optionally with shares "
        "after a colon (how much of the frame each should cover). The objects are grouped by "
        "what they look like and each group takes the colour whose share fits it; hints still "
        "win where they are. Empty: the style's palette, or your hints' colours when they are "
        "two or more, or else the model chooses. "
        "Recorded in the downloads' provenance.",
    )
    error = st.session_state.get(_ERROR_KEY)
    if error:
        st.error(error)
    used, origin = palette_for(work.palette, work.style, work.hints)
    if used is not None:
        st.markdown(f"{_APPLIES[origin or 'given']} {swatches(used)}", unsafe_allow_html=True)


def _palette_changed() -> None:
    text = str(st.session_state.get(_KEY) or "").strip()
    work = workspace(st.session_state)
    if not text:
        st.session_state[_ERROR_KEY] = None
        work.repalette(None, time.perf_counter())
        return
    try:
        palette = parse_palette(text)
    except PaletteError as exc:
        # The previous palette stays in force: a typo does not silently drop it.
        st.session_state[_ERROR_KEY] = f"Palette {text!r}: {exc}"
        return
    st.session_state[_ERROR_KEY] = None
    work.repalette(palette, time.perf_counter())
    log.info("palette given in the web UI", palette=palette.as_text())
