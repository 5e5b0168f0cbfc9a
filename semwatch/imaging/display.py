"""Decoded pixels -> display levels (uint8): the one set of rules for what a gray level is.

8-bit gray as is; palette images through their colormap; RGB that is really gray as that
gray; colored RGB as its Rec.601 luma (the weights of Pillow's "L" mode, on the encoded
values), with a warning; 16-bit and float through a robust percentile window recorded in
`Window`. `to_display` makes the daemon's gray; `display_rgb` gives the trainer the same
levels in colour (one window for all channels), so the model trains on the L it will see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from semwatch.imaging.errors import ImageError

# Around 262k samples keep the percentiles stable to a fraction of a gray level while the
# window of a 5-megapixel frame costs a few milliseconds.
_WINDOW_SAMPLES = 1 << 18
_WINDOW_PERCENTILES = (0.1, 99.9)

# JPEG round trips and resampling leave a gray image's channels a level or two apart; that
# is still a gray image, not a colored one worth a warning.
_GRAY_RGB_TOLERANCE = 2


@dataclass(frozen=True)
class Window:
    """How a 16-bit or float image was mapped to display gray 0..255 (linear, clipped)."""

    low: float
    high: float
    method: str

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "method": self.method}


def to_display(
    path: Path, pixels: np.ndarray, databar_row: int | None
) -> tuple[np.ndarray, Window | None, tuple[str, ...]]:
    """Any decoded pixels -> uint8 HxW C-contiguous display gray, its window, warnings.

    ``databar_row``: the vendor's first data-bar row, kept out of the window."""
    warnings: tuple[str, ...] = ()
    if pixels.ndim == 3:
        pixels, warnings = _color_to_gray(pixels)
    if pixels.ndim != 2:
        raise ImageError(path, f"unsupported layout: decoded shape {pixels.shape}", permanent=True)
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels), None, warnings
    window = _choose_window(path, pixels, databar_row)
    return _apply_window(pixels, window), window, warnings


def display_rgb(path: Path, pixels: np.ndarray, databar_row: int | None) -> tuple[np.ndarray, Window | None]:
    """Decoded pixels (HxW gray or HxWxC colour, palette already expanded) -> uint8 HxWx3
    RGB at display levels. 16-bit and float: one percentile window over all the colour
    samples (rows from ``databar_row`` on left out, as in `to_display`), applied to every
    channel, so hue is kept and a gray image gets exactly the levels `to_display` gives it.
    Alpha is dropped; gray + alpha is gray."""
    if pixels.ndim == 3 and pixels.shape[2] < 3:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif pixels.ndim != 3:
        raise ImageError(path, f"unsupported layout: decoded shape {pixels.shape}", permanent=True)
    pixels = pixels[..., :3]
    window = None
    if pixels.dtype != np.uint8:
        window = _choose_window(path, pixels, databar_row)
        pixels = _apply_window(pixels, window)
    rgb = np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:2], 3)))
    # Pillow hands out read-only views; consumers (torch.from_numpy) expect an ordinary array.
    return (rgb if rgb.flags.writeable else rgb.copy()), window


def palette_gray(indices: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map palette indices through an (N, 3) uint8 RGB table to gray levels."""
    table = _full_table(indices, lut)
    gray_entries = (table[:, 0] == table[:, 1]) & (table[:, 1] == table[:, 2])
    if gray_entries.all():
        colored_in_use = False
    else:
        used = np.bincount(_plane(indices).ravel(), minlength=len(table)) > 0
        colored_in_use = bool((used & ~gray_entries).any())
    if colored_in_use:
        levels = luma_u8(table)
        warnings: tuple[str, ...] = ("palette with colored entries: using its luminance",)
    else:
        levels = table[:, 0].copy()
        warnings = ()
    indices = _plane(indices)
    if np.array_equal(levels[:256], np.arange(256)) and indices.dtype == np.uint8:
        return indices, warnings  # the usual gray ramp (Zeiss): the indices are the levels
    return levels[indices], warnings


def palette_colors(indices: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Palette indices -> uint8 HxWx3 RGB through an (N, 3) table (missing entries black)."""
    return _full_table(indices, lut)[_plane(indices)]


def _plane(indices: np.ndarray) -> np.ndarray:
    return indices if indices.ndim == 2 else indices[..., 0]  # palette + alpha: the indices


def _full_table(indices: np.ndarray, lut: np.ndarray) -> np.ndarray:
    # Every index the dtype can hold has an entry, so a file's stray index cannot raise.
    entries = 1 << (8 * indices.dtype.itemsize)
    table = np.zeros((max(entries, len(lut)), 3), np.uint8)
    table[: len(lut)] = lut
    return table


def _color_to_gray(pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    channels = pixels.shape[2]
    if channels < 3:
        return pixels[..., 0], ()  # gray + alpha
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return red, ()
    gray = luma_u8(pixels) if pixels.dtype == np.uint8 else _luma_float(pixels)
    tolerance = _GRAY_RGB_TOLERANCE
    if pixels.dtype.kind in "ui" and pixels.dtype.itemsize > 1:
        tolerance *= 257
    if pixels.dtype.kind == "f" or _channel_spread_exceeds(red, green, blue, tolerance):
        return gray, ("RGB input: using its luminance (Rec.601 luma)",)
    return gray, ()


def _channel_spread_exceeds(red: np.ndarray, green: np.ndarray, blue: np.ndarray, tol: int) -> bool:
    # max - min per pixel stays in the channels' own dtype (it cannot underflow): no widening.
    spread = np.maximum(np.maximum(red, green), blue)
    spread -= np.minimum(np.minimum(red, green), blue)
    return bool(spread.max() > tol)


def luma_u8(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma of uint8 RGB(A): exactly Pillow's convert("L")."""
    if rgb.ndim == 3 and rgb.shape[2] in (3, 4) and rgb.flags.c_contiguous:
        # Pillow's C loop is several times faster than the numpy arithmetic below.
        luma = np.asarray(Image.fromarray(rgb).convert("L"))
        return luma if luma.flags.writeable else luma.copy()
    # Same 16-bit fixed point weights and rounding as Pillow.
    acc = rgb[..., 0].astype(np.uint32) * 19595
    acc += rgb[..., 1].astype(np.uint32) * 38470
    acc += rgb[..., 2].astype(np.uint32) * 7471
    acc += 32768
    acc >>= 16
    return acc.astype(np.uint8)


def _luma_float(rgb: np.ndarray) -> np.ndarray:
    acc = rgb[..., 0].astype(np.float32) * np.float32(0.299)
    acc += rgb[..., 1].astype(np.float32) * np.float32(0.587)
    acc += rgb[..., 2].astype(np.float32) * np.float32(0.114)
    return acc


def _choose_window(path: Path, pixels: np.ndarray, databar_row: int | None) -> Window:
    low, high = _WINDOW_PERCENTILES
    method = f"percentile {low:g}/{high:g}"
    if databar_row:
        # The bar's pure black and white would otherwise squeeze the specimen's levels.
        window = _percentile_window(pixels[:databar_row], f"{method} of rows 0-{databar_row - 1}")
        if window is not None:
            return window
    window = _percentile_window(pixels, method)
    if window is not None:
        return window
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
    if not finite.size:
        # All NaN/inf: a black picture colorized would look like a result; it is none.
        raise ImageError(
            path, f"no finite pixel (all {pixels.size} values are NaN or infinite)", permanent=True
        )
    level = float(finite.flat[0])
    return Window(level, level + 1.0, "constant image")


def _percentile_window(pixels: np.ndarray, method: str) -> Window | None:
    # Rows and columns are subsampled; colour channels (a third axis) all count.
    count = pixels.shape[0] * pixels.shape[1]
    if count == 0:
        return None
    step = max(1, math.isqrt(count // _WINDOW_SAMPLES))
    sample = pixels[::step, ::step]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return None
    low, high = np.percentile(sample, _WINDOW_PERCENTILES)
    if not high > low:
        return None
    return Window(float(low), float(high), method)


def _apply_window(pixels: np.ndarray, window: Window) -> np.ndarray:
    scale = 255.0 / (window.high - window.low)
    if pixels.dtype in (np.uint16, np.int16):
        # One table lookup per pixel instead of float arithmetic over the whole frame.
        offset = 32768 if pixels.dtype == np.int16 else 0
        levels = np.arange(65536, dtype=np.float64) - offset
        lut = np.clip((levels - window.low) * scale + 0.5, 0, 255).astype(np.uint8)
        indices = pixels.view(np.uint16) ^ np.uint16(offset) if offset else pixels
        return np.ascontiguousarray(lut[indices])
    buffer = pixels.astype(np.float32)
    buffer -= np.float32(window.low)
    buffer *= np.float32(scale)
    buffer += np.float32(0.5)
    np.nan_to_num(buffer, copy=False, nan=0.0)
    np.clip(buffer, 0, 255, out=buffer)
    return buffer.astype(np.uint8)
