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


@dataclass(frozen=True)
class Click:
    """A click on a displayed image: position in displayed pixels, the displayed size, and
    the browser's time stamp (the component repeats its last value on every rerun, so the
    stamp tells a new click from the old one)."""

    x: float
    y: float
    width: float
    height: float
    stamp: int


def click_point(image: np.ndarray, *, key: str) -> Click | None:
    """Show ``image`` (RGB uint8) at the column's width and return
    the latest click on it. Tests replace this function: AppTest cannot drive custom
    components."""
    from streamlit_image_coordinates import streamlit_image_coordinates

    value = streamlit_image_coordinates(
        image, key=key, width="stretch", cursor="crosshair", image_format="JPEG", jpeg_quality=90
    )
    if not value or "x" not in value:
        return None
    return Click(
        float(value["x"]),
        float(value["y"]),
        float(value["width"]),
        float(value["height"]),
        int(value.get("unix_time", 0)),
    )


def to_image_pixels(click: Click, height: int, width: int) -> tuple[int, int]:
    """(x, y) in the full image's pixels for a click in displayed pixels (the displayed copy
    may be scaled down, and the browser may scale it again to fit the column)."""
    x = int((click.x + 0.5) * width / max(click.width, 1.0))
    y = int((click.y + 0.5) * height / max(click.height, 1.0))
    return min(max(x, 0), width - 1), min(max(y, 0), height - 1)


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
body {{ margin: 0; font-family: sans-serif; }}
.cmp {{ position: relative; width: 100%; max-width: {width}px; user-select: none; }}
.cmp .box {{ position: relative; width: 100%; padding-top: {ratio}%; cursor: ew-resize; }}
.cmp img {{ position: absolute; top: 0; left: 0; width: 100%; height: 100%; display: block; }}
.cmp .after {{ clip-path: inset(0 50% 0 0); }}
.cmp .handle {{ position: absolute; top: 0; bottom: 0; left: 50%; width: 2px;
  background: #fff; box-shadow: 0 0 3px #000; pointer-events: none; }}
.cmp .tag {{ position: absolute; top: 6px; padding: 1px 6px; font-size: 12px; color: #fff;
  background: rgba(0,0,0,.55); border-radius: 3px; pointer-events: none; }}
.cmp input {{ width: 100%; margin: 6px 0 0 0; }}
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
