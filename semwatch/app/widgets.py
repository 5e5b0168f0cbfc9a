"""Page pieces that are not plain Streamlit widgets: the click-to-hint image and the
before/after slider. Both work offline: the click component (streamlit-image-coordinates)
ships its JavaScript in the package, and the slider is inline HTML, CSS and JS with the
images as data URIs, so the page loads nothing from the internet.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MARKER_FRACTION = 0.02  # marker radius as a share of the preview's long side


# A press and release closer than this (displayed pixels) is a click, not a drag.
DRAG_PIXELS = 6
MIN_ZOOM_SIDE = 32  # smallest zoomed region, in image pixels


@dataclass(frozen=True)
class Click:
    """A click (or a drag) on a displayed image: position in displayed pixels, the displayed
    size, and the browser's time stamp (the component repeats its last value on every rerun,
    so the stamp tells a new click from the old one). A drag also has where it ended."""

    x: float
    y: float
    width: float
    height: float
    stamp: int
    x2: float | None = None
    y2: float | None = None

    @property
    def is_drag(self) -> bool:
        if self.x2 is None or self.y2 is None:
            return False
        return max(abs(self.x2 - self.x), abs(self.y2 - self.y)) >= DRAG_PIXELS


@dataclass(frozen=True)
class Box:
    """A region of the image in its own pixels (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def whole(cls, height: int, width: int) -> Box:
        return cls(0, 0, width, height)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def click_point(image: np.ndarray, *, key: str) -> Click | None:
    """Show ``image`` (RGB uint8) at the column's width and return the latest click or drag
    on it (press, drag, release: the press is x, y and the release x2, y2). Tests replace
    this function: AppTest cannot drive custom components."""
    from streamlit_image_coordinates import streamlit_image_coordinates

    value = streamlit_image_coordinates(
        image,
        key=key,
        width="stretch",
        cursor="crosshair",
        image_format="JPEG",
        jpeg_quality=90,
        click_and_drag=True,
    )
    return _as_click(value)


def latest_click(key: str) -> Click | None:
    """The click component's latest value, read before it is drawn again (so the run that
    takes a click can already show its marker). Tests replace this function too."""
    import streamlit as st

    return _as_click(st.session_state.get(key))


def _as_click(value: object) -> Click | None:
    if not isinstance(value, dict) or ("x" not in value and "x1" not in value):
        return None
    if "x1" in value:
        x, y = float(value["x1"]), float(value["y1"])
        x2, y2 = float(value["x2"]), float(value["y2"])
    else:
        x, y, x2, y2 = float(value["x"]), float(value["y"]), None, None
    return Click(x, y, float(value["width"]), float(value["height"]), int(value.get("unix_time", 0)), x2, y2)


def to_image_pixels(
    click: Click, height: int, width: int, shown: Box | None = None, *, end: bool = False
) -> tuple[int, int]:
    """(x, y) in the full image's pixels for a click in displayed pixels (the displayed copy
    may be scaled down, show only the region ``shown``, and the browser may scale it again
    to fit the column); ``end``: where a drag ended."""
    shown = shown or Box.whole(height, width)
    cx, cy = (click.x2, click.y2) if end and click.x2 is not None else (click.x, click.y)
    x = shown.x0 + int((cx + 0.5) * shown.width / max(click.width, 1.0))
    y = shown.y0 + int((cy + 0.5) * shown.height / max(click.height, 1.0))
    return min(max(x, 0), width - 1), min(max(y, 0), height - 1)


def zoom_box(click: Click, height: int, width: int, shown: Box | None = None) -> Box:
    """The region a drag framed, widened to the image's aspect ratio (so the zoomed view
    keeps the displayed size: nothing below it moves) and kept inside the image."""
    ax, ay = to_image_pixels(click, height, width, shown)
    bx, by = to_image_pixels(click, height, width, shown, end=True)
    x0, x1 = min(ax, bx), max(ax, bx) + 1  # the pixels under both corners included
    y0, y1 = min(ay, by), max(ay, by) + 1
    w = max(x1 - x0, MIN_ZOOM_SIDE)
    h = max(y1 - y0, MIN_ZOOM_SIDE)
    # Widen the narrow side: the framed region stays wholly in view.
    if w * height > h * width:
        h = w * height / width
    else:
        w = h * width / height
    w, h = min(round(w), width), min(round(h), height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(cx - w / 2, 0), width - w))
    top = int(min(max(cy - h / 2, 0), height - h))
    return Box(left, top, left + w, top + h)


def view(
    rgb: np.ndarray, full_shape: tuple[int, int], shown: Box | None, size: tuple[int, int]
) -> np.ndarray:
    """What the clickable image shows, ``size`` (width, height) pixels: ``rgb`` (the image
    at any scale: the full result, a quick preview) whole, or its region ``shown`` (in
    full-image pixels; the full image is ``full_shape`` (height, width))."""
    height, width = rgb.shape[:2]
    if shown is None:
        if (width, height) == size:
            return rgb
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    sx, sy = width / full_shape[1], height / full_shape[0]
    region = (shown.x0 * sx, shown.y0 * sy, shown.x1 * sx, shown.y1 * sy)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, box=region))


def to_view(
    x: float, y: float, full_shape: tuple[int, int], shown: Box | None, size: tuple[int, int]
) -> tuple[float, float]:
    """Where the image pixel (x, y) lies in the view of ``view`` (may be outside it)."""
    shown = shown or Box.whole(*full_shape)
    return (x + 0.5 - shown.x0) * size[0] / shown.width, (y + 0.5 - shown.y0) * size[1] / shown.height


def preview(array: np.ndarray, long_side: int) -> np.ndarray:
    """A copy whose long side is at most ``long_side`` (gray or RGB uint8)."""
    height, width = array.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))


def draw_markers(rgb: np.ndarray, points: Sequence[tuple[float, float, str]]) -> np.ndarray:
    """``rgb`` with a ring at each (x, y, colour) in its own pixels, numbered from 1."""
    if not points:
        return rgb
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    # Sized to the preview, so a marker stays visible when the browser shrinks it to fit.
    r = max(5, round(MARKER_FRACTION * max(rgb.shape[:2])))
    font = ImageFont.load_default(size=2 * r)
    for number, (x, y, color) in enumerate(points, start=1):
        box = (x - r, y - r, x + r, y + r)
        draw.ellipse(box, fill=color, outline="black", width=max(2, r // 4))
        draw.ellipse((x - r + 2, y - r + 2, x + r - 2, y + r - 2), outline="white", width=max(1, r // 6))
        draw.text(
            (x + r + 2, y - r),
            str(number),
            fill="white",
            font=font,
            stroke_width=max(1, r // 5),
            stroke_fill="black",
        )
    return np.asarray(image)


def data_uri(array: np.ndarray, quality: int = 88) -> str:
    """A JPEG data URI (small enough to send on every rerun, good enough to look at)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def compare_html(
    before: np.ndarray, after: np.ndarray, *, label_before: str = "gray", label_after: str = "colorized"
) -> str:
    """A self-contained before/after slider: ``after`` over ``before``, revealed up to the
    handle; drag anywhere on the image or use the range input (keyboard too)."""
    height, width = before.shape[:2]
    return _COMPARE_TEMPLATE.format(
        before=data_uri(before),
        after=data_uri(after),
        ratio=f"{height / width * 100:.4f}",
        label_before=html.escape(label_before),
        label_after=html.escape(label_after),
        width=width,
    )


_COMPARE_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>
html, body {{ margin: 0; overflow: hidden; font-family: sans-serif; }}
.cmp {{ position: relative; width: 100%; max-width: {width}px; user-select: none; }}
.cmp .box {{ position: relative; width: 100%; padding-top: {ratio}%; cursor: ew-resize; }}
.cmp img {{ position: absolute; top: 0; left: 0; width: 100%; height: 100%; display: block; }}
.cmp .after {{ clip-path: inset(0 50% 0 0); }}
.cmp .handle {{ position: absolute; top: 0; bottom: 0; left: 50%; width: 2px;
  background: #fff; box-shadow: 0 0 3px #000; pointer-events: none; }}
.cmp .tag {{ position: absolute; top: 6px; padding: 1px 6px; font-size: 12px; color: #fff;
  background: rgba(0,0,0,.55); border-radius: 3px; pointer-events: none; }}
.cmp input {{ display: block; width: 100%; height: 18px; margin: 6px 0 0 0; box-sizing: border-box; }}
</style></head><body>
<div class="cmp" id="cmp">
  <div class="box" id="box">
    <img class="before" src="{before}" alt="{label_before}">
    <img class="after" id="after" src="{after}" alt="{label_after}">
    <div class="handle" id="handle"></div>
    <span class="tag" style="left:6px">{label_after}</span>
    <span class="tag" style="right:6px">{label_before}</span>
  </div>
  <input type="range" id="pos" min="0" max="100" value="50" step="0.5"
         aria-label="Before/after position">
</div>
<script>
(function () {{
  var box = document.getElementById("box"), after = document.getElementById("after"),
      handle = document.getElementById("handle"), pos = document.getElementById("pos");
  function show(p) {{
    p = Math.max(0, Math.min(100, p));
    after.style.clipPath = "inset(0 " + (100 - p) + "% 0 0)";
    handle.style.left = p + "%";
    pos.value = p;
  }}
  function fromEvent(e) {{
    var r = box.getBoundingClientRect();
    show((e.clientX - r.left) / r.width * 100);
  }}
  var dragging = false;
  box.addEventListener("pointerdown", function (e) {{ dragging = true; fromEvent(e); }});
  window.addEventListener("pointermove", function (e) {{ if (dragging) fromEvent(e); }});
  window.addEventListener("pointerup", function () {{ dragging = false; }});
  pos.addEventListener("input", function () {{ show(parseFloat(pos.value)); }});
  show(50);
}})();
</script></body></html>"""
