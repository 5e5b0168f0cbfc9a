"""The Colorize page's work in progress, one per browser session: the image, what steers it
(hints, a style, a palette, whether hints spread), the latest result and what has been saved.

It lives in st.session_state under one key, outside every widget, so it survives switching
to the Queue page and back (Streamlit drops the state of widgets a page run did not draw).
Nothing here imports Streamlit: the page holds the workspace, this says what it means.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semwatch.app.service import Colorized
from semwatch.app.widgets import Box
from semwatch.hints import Hint
from semwatch.imaging import DecodedImage
from semwatch.palette import Palette
from semwatch.styles import Style

SESSION_KEY = "cz_work"
_tokens = itertools.count(1)  # tells sources apart across reruns (and equal file names)


@dataclass(frozen=True)
class Source:
    """The image on the page: an upload, or the source of a finished job (to refine)."""

    name: str  # file name shown and used for download names
    source_path: str  # recorded in the provenance
    image: DecodedImage
    gray_preview: np.ndarray  # RGB, long side app.preview_size
    job_id: int | None = None
    output: Path | None = None  # the job's automatic output (inside output.dir)
    token: int = field(default_factory=lambda: next(_tokens))


@dataclass(frozen=True)
class Recipe:
    """What a result is made from. Two results with equal recipes are the same picture."""

    source: int  # Source.token
    hints: tuple[Hint, ...] = ()
    style: Style | None = None  # compared by content: a re-read equal file is the same style
    spread: bool = False  # hints pull every other object toward their colour (issue 20, item 5)
    palette: Palette | None = None  # colours for the whole frame (issue 23)

    @property
    def steered(self) -> bool:
        """Whether the user changed anything the service's automatic output would not have
        (spreading without hints changes nothing)."""
        return bool(self.hints) or self.style is not None or self.palette is not None


@dataclass(frozen=True)
class Change:
    """A request to replace the image on the page: held while the user is asked, when it
    would drop hints that were neither downloaded nor saved."""

    what: str  # shown in the question: "sample.png", "job 12"
    upload: tuple[str, bytes] | None = None  # (name, bytes) of a new upload
    job_id: int | None = None  # a finished job to refine
    closes: bool = False  # the upload was removed from the uploader: no image


@dataclass
class Workspace:
    source: Source | None = None
    hints: tuple[Hint, ...] = ()
    # The style and the spread setting stay when another image is opened: a style is made
    # to colour a series, one image after the other.
    style: Style | None = None
    spread: bool = False
    # Like the style, the palette stays for the next image: "these colours" for a series.
    palette: Palette | None = None
    result: Colorized | None = None  # the latest full result...
    result_recipe: Recipe | None = None  # ...and what it was made from
    quick: tuple[Recipe, np.ndarray] | None = None  # a low-resolution look, while the full one runs
    saved: Recipe | None = None  # downloaded or saved last
    pending: Change | None = None
    zoom: Box | None = None
    # Timing of the result the user is waiting for: set when the recipe changes.
    asked_at: float | None = None
    waited: float | None = None  # seconds from the request to the full result
    full_seconds: float | None = None  # the last full colorization of this image took
    quick_seconds: float | None = None  # and its last quick look
    failure: tuple[Recipe, str] | None = None  # why the result for a recipe failed
    notice: str | None = None  # one line for the page's status line (e.g. a refused click)
    click_stamp: int | None = None  # the click taken last (the component repeats it)
    downloads: dict[str, bytes] = field(default_factory=dict)  # encoded result by format

    def recipe(self) -> Recipe | None:
        if self.source is None:
            return None
        return Recipe(self.source.token, self.hints, self.style, self.spread, self.palette)

    @property
    def fresh(self) -> bool:
        """The result shown is the one for the current image and hints."""
        return self.result is not None and self.result_recipe == self.recipe()

    def failure_now(self) -> str | None:
        """Why the result for the current image and hints could not be made, if it failed."""
        if self.failure is not None and self.failure[0] == self.recipe():
            return self.failure[1]
        return None

    def unsaved(self) -> bool:
        """Hints (steering) that were neither downloaded nor saved: what replacing the image
        would lose."""
        recipe = self.recipe()
        if recipe is None or not recipe.hints:
            return False  # a style alone stays on the page for the next image
        saved = self.saved
        return saved is None or (saved.source, saved.hints) != (recipe.source, recipe.hints)

    def open(self, source: Source | None, now: float) -> None:
        """Put another image on the page (None: none); its hints, result and zoom start empty."""
        self.source = source
        self.hints = ()
        self.result = self.result_recipe = self.quick = self.saved = None
        self.zoom = self.full_seconds = self.quick_seconds = self.failure = None
        self.downloads = {}
        self.asked_at, self.waited, self.notice = now, None, None

    def steer(self, hints: tuple[Hint, ...], now: float) -> None:
        """New hints: the result shown is stale until the engine answers."""
        if hints != self.hints:
            self.hints = hints
            self._stale(now)

    def restyle(self, style: Style | None, now: float) -> None:
        """Apply another style (None: none): the result shown is stale until the engine answers."""
        if style != self.style or (style is not None and style.sha256 != self.style.sha256):
            self.style = style
            self._stale(now)

    def repalette(self, palette: Palette | None, now: float) -> None:
        """Another palette (None: none): the result shown is stale until the engine answers."""
        if palette != self.palette:
            self.palette = palette
            self._stale(now)

    def set_spread(self, spread: bool, now: float) -> None:
        if spread != self.spread:
            self.spread = spread
            self._stale(now)

    def _stale(self, now: float) -> None:
        self.asked_at, self.waited = now, None
        self.downloads = {}

    def finish(self, result: Colorized, recipe: Recipe, now: float, seconds: float) -> None:
        """The full result for ``recipe`` is in; ``seconds``: what computing it took."""
        self.result, self.result_recipe = result, recipe
        self.full_seconds = seconds
        self.downloads = {}
        if self.asked_at is not None:
            self.waited = now - self.asked_at


def workspace(state: Any) -> Workspace:
    """The session's workspace (``state``: st.session_state), made on first use."""
    work = state.get(SESSION_KEY)
    if work is None:
        work = state[SESSION_KEY] = Workspace()
    return work
