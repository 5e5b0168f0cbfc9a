"""Where the SEM data bar (the instrument's text banner at the bottom of the frame) starts.

Vendor metadata decides when it can (FEI: the rows below [Image] ResolutionY, even where
DatabarHeight says 0); otherwise the bottom of the display gray is analysed for a banner.
The bar is kept out of the display window (display.py), out of the model's input and left
gray in the output (the engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Content analysis looks only at the bottom 30% of the frame: instrument banners are 5-15%.
_BAR_SEARCH_FRACTION = 0.30
_BAR_MIN_ROWS = 4
_BAR_NEAR = 8  # a background pixel is within this many levels of the banner's background
_BAR_FAR = 80  # text and scale-bar strokes differ from the background by at least this
_BAR_MIN_BACKGROUND = 0.5
_BAR_MAX_INTERMEDIATE = 0.15
_BAR_RULE_FRACTION = 0.9
_BAR_MIN_BAR_ROWS = 0.85
# Real banners carry 10-20% text and scale-bar pixels, on nearly every row; a dark specimen
# region with a few bright dust specks does not.
_BAR_MIN_TEXT = 0.02
_BAR_MAX_TEXT = 0.5
_BAR_MIN_TEXT_ROWS = 0.4
_BAR_MIN_EDGE = 10.0
_BAR_EDGE_OVER_NOISE = 3.0
_BAR_MAX_COLUMNS = 1024


def find_databar(
    gray: np.ndarray, fields: Mapping[str, Any] | None = None, vendor: str | None = None
) -> int | None:
    """First row of the instrument's data bar (rows >= it are the bar), or None.

    Vendor metadata decides when it can (FEI: the rows below [Image] ResolutionY); otherwise
    the bottom of the image is analysed for a banner: a band reaching the bottom edge whose
    rows are flat background (or straight rules) with sharp high-contrast text, below a clear
    horizontal boundary.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"find_databar needs a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    decided, row = vendor_databar(fields or {}, vendor, gray.shape[0])
    if decided:
        return row
    return find_databar_by_content(gray)


def vendor_databar(fields: Mapping[str, Any], vendor: str | None, height: int) -> tuple[bool, int | None]:
    """(decided, row): whether the vendor metadata settles the question, and the answer."""
    if vendor != "fei":
        return False, None
    image = fields.get("Image")
    try:
        scan_rows = int(image["ResolutionY"]) if isinstance(image, Mapping) else 0
    except (KeyError, TypeError, ValueError):
        return False, None
    # FEI appends the bar below the scanned rows (DatabarHeight is sometimes 0 even then).
    # A ResolutionY below half the frame does not describe this file; let the pixels decide.
    if height // 2 <= scan_rows < height:
        return True, scan_rows
    if scan_rows == height:
        return True, None
    return False, None


@dataclass(frozen=True)
class _RowStats:
    background: np.ndarray  # fraction of pixels near the banner background, per row
    text: np.ndarray  # fraction far from it
    bar_like: np.ndarray  # bool: background-with-text row or a straight rule


def find_databar_by_content(gray: np.ndarray) -> int | None:
    """First row of a banner found in the pixels alone (see `find_databar`), or None."""
    height, width = gray.shape
    min_rows = max(_BAR_MIN_ROWS, height // 100)
    if height < 8 * min_rows or width < 32:
        return None
    top = height - int(height * _BAR_SEARCH_FRACTION)
    step = max(1, -(-width // _BAR_MAX_COLUMNS))
    region = gray[top:, ::step]
    background = _banner_background(region, min_rows)
    stats = _row_stats(region, background)
    first = _band_top(stats.bar_like, max_gap=max(2, height // 200))
    if first is None or first < 3 or region.shape[0] - first < min_rows:
        return None
    band = slice(first, None)
    if stats.bar_like[band].mean() < _BAR_MIN_BAR_ROWS:
        return None
    if stats.background[band].mean() < _BAR_MIN_BACKGROUND:
        return None
    if not _BAR_MIN_TEXT <= stats.text[band].mean() <= _BAR_MAX_TEXT:
        return None
    if (stats.text[band] > 0).mean() < _BAR_MIN_TEXT_ROWS:
        return None
    if not _has_clear_boundary(region, first):
        return None
    return top + first


def _banner_background(region: np.ndarray, rows: int) -> int:
    counts = np.bincount(region[-rows:].ravel(), minlength=256)
    return int(counts.argmax())


def _row_stats(region: np.ndarray, background: int) -> _RowStats:
    wide = region.astype(np.int16)
    distance = np.abs(wide - background)
    near = (distance <= _BAR_NEAR).mean(axis=1)
    far = (distance >= _BAR_FAR).mean(axis=1)
    intermediate = 1.0 - near - far
    median = np.median(region, axis=1).astype(np.int16)
    rule = (np.abs(wide - median[:, None]) <= _BAR_NEAR).mean(axis=1) >= _BAR_RULE_FRACTION
    banner_row = (near >= _BAR_MIN_BACKGROUND) & (intermediate <= _BAR_MAX_INTERMEDIATE)
    return _RowStats(background=near, text=far, bar_like=banner_row | rule)


def _band_top(bar_like: np.ndarray, max_gap: int) -> int | None:
    """Topmost row of the bar-like band reaching the bottom (small gaps allowed).

    None when there is no such band, or when it never ends inside the search region (a flat
    or smooth image is bar-like everywhere, and that is not a banner).
    """
    first: int | None = None
    gap = 0
    for index in range(len(bar_like) - 1, -1, -1):
        if bar_like[index]:
            first, gap = index, 0
            continue
        gap += 1
        if gap > max_gap:
            return first
    return None


def _has_clear_boundary(region: np.ndarray, first: int) -> bool:
    wide = region[: first + 1].astype(np.int16)
    steps = np.abs(np.diff(wide, axis=0)).mean(axis=1)  # steps[i]: row i -> row i+1
    edge = float(steps[-1])
    noise = float(np.median(steps[:-1]))
    return edge >= max(_BAR_MIN_EDGE, _BAR_EDGE_OVER_NOISE * noise)
