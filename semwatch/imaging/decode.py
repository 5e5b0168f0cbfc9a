"""Decoding SEM images: a source file -> display gray levels with metadata and data bar
(`read_image`, what the daemon, `semwatch colorize`, the web UI and the benchmarks read
through), or -> display RGB (`read_rgb`, what the trainer reads its colour images through).

numpy, tifffile and Pillow only (no torch). The file's bytes are read once (source.py) and
decoded from that buffer, so the SHA-256 recorded in the output is that of the bytes that
were actually decoded. Formats are recognized by their signature, not by their name. The
decoders here give the pixels as stored (palette images as indices plus their table); what
a gray level is, is display.py's rule, and where the data bar starts is databar.py's.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

from semwatch.imaging.budget import check_image_memory
from semwatch.imaging.databar import find_databar_by_content, vendor_databar
from semwatch.imaging.display import Window, display_rgb, palette_colors, palette_gray, to_display
from semwatch.imaging.errors import ImageError, ImageTooLarge, describe, is_system_io_error
from semwatch.imaging.source import (
    KIND_NAMES,
    io_error,
    name_warnings,
    open_regular,
    read_source,
    regular_size,
    sniff,
)
from semwatch.imaging.vendor import SourceMetadata, pillow_metadata, tiff_metadata

DEFAULT_MAX_PIXELS = 200_000_000

_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_MINISBLACK = 1
_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_YCBCR = 6
_COMPRESSION_JPEG = (6, 7)


@dataclass(frozen=True)
class DecodedImage:
    path: Path
    gray: np.ndarray
    sha256: str
    size: int
    source_shape: tuple[int, ...]
    source_dtype: str
    window: Window | None
    databar_row: int | None
    metadata: SourceMetadata
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Decoded:
    """A decoder's result before the display mapping: gray-like HxW or color HxWxC pixels,
    or palette indices with their (N, 3) uint8 RGB table."""

    pixels: np.ndarray
    palette: np.ndarray | None
    source_shape: tuple[int, ...]
    source_dtype: str
    metadata: SourceMetadata
    warnings: tuple[str, ...]


def read_header(path: Path) -> tuple[int, int]:
    """(height, width) of the first image, from the header only (nothing is decoded)."""
    path = Path(path)
    try:
        with open(path, "rb", opener=lambda name, _flags: open_regular(Path(name), None)) as fh:
            regular_size(path, os.fstat(fh.fileno()))
            kind = sniff(path, fh.read(16))
            fh.seek(0)
            if kind == "tiff":
                return _tiff_header(path, fh)
            image = _open_pillow(path, fh, kind)
            width, height = image.size
            return height, width
    except OSError as exc:
        raise io_error(path, exc) from exc


def read_image(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    page: int = 0,
    inside: Path | None = None,
    max_memory: int | None = None,
) -> DecodedImage:
    """Decode an SEM image to display gray levels, with its metadata and data bar.

    Raises ImageError (permanent or transient, see its docstring); a header claiming more
    than `max_pixels` pixels, or an image that would need more than `max_memory` bytes to
    decode and colorize (budget.py), is refused before anything is decoded. `inside`: the
    folder the file must be in (the daemon's watch folder), symlinks never leading out of it.
    """
    path = Path(path)
    data, kind = _read_checked(path, max_pixels, page, inside, max_memory)
    decoded = _decode(path, data, kind, max_pixels, page, carry=True, max_memory=max_memory)
    pixels, warnings = decoded.pixels, (*name_warnings(path, kind), *decoded.warnings)
    if decoded.palette is not None:
        pixels, palette_warnings = palette_gray(pixels, decoded.palette)
        warnings = (*warnings, *palette_warnings)
    meta = decoded.metadata
    vendor_decided, vendor_row = vendor_databar(meta.fields, meta.vendor, pixels.shape[0])
    gray, window, display_warnings = to_display(path, pixels, vendor_row)
    if not gray.flags.writeable:
        # Pillow hands out read-only views; consumers (torch.from_numpy) expect an ordinary array.
        gray = gray.copy()
    databar = vendor_row if vendor_decided else find_databar_by_content(gray)
    return DecodedImage(
        path=path,
        gray=gray,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        source_shape=decoded.source_shape,
        source_dtype=decoded.source_dtype,
        window=window,
        databar_row=databar,
        metadata=meta,
        warnings=(*warnings, *display_warnings),
    )


def read_rgb(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, page: int = 0) -> np.ndarray:
    """Decode an image to uint8 HxWx3 RGB at display levels, colour kept (the trainer's
    reader): the same file checks, decoders and 16-bit/float window as `read_image` (the
    window leaves out an FEI data bar as there), palette images in their palette's colours.
    A one-channel gray image comes out as (g, g, g) with g exactly `read_image(path).gray`. Raises
    ImageError."""
    path = Path(path)
    data, kind = _read_checked(path, max_pixels, page, None)
    decoded = _decode(path, data, kind, max_pixels, page, carry=False)
    pixels = decoded.pixels
    if decoded.palette is not None:
        pixels = palette_colors(pixels, decoded.palette)
    meta = decoded.metadata
    _decided, vendor_row = vendor_databar(meta.fields, meta.vendor, pixels.shape[0])
    rgb, _window = display_rgb(path, pixels, vendor_row)
    return rgb


def _read_checked(
    path: Path, max_pixels: int, page: int, inside: Path | None, max_memory: int | None = None
) -> tuple[bytes, str]:
    if page < 0:
        raise ValueError(f"page must be >= 0, got {page}")
    return read_source(path, max_pixels, inside, page, max_memory)


def _decode(
    path: Path, data: bytes, kind: str, max_pixels: int, page: int, carry: bool, max_memory: int | None = None
) -> _Decoded:
    """The pixels as stored; ``carry``: gather the tags the output carries (TIFF)."""
    limits = _Limits(max_pixels, max_memory)
    try:
        if kind == "tiff":
            return _decode_tiff(path, data, limits, page, carry)
        return _decode_pillow(path, data, kind, limits, page)  # no tags to carry
    except ImageError:
        raise
    except MemoryError as exc:
        # The pixel count was within limits, so this is memory pressure, not the file.
        raise ImageError(path, "out of memory while decoding", permanent=False) from exc
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise anything
        reason = f"cannot decode {KIND_NAMES[kind]}: {describe(exc)}"
        raise ImageError(path, reason, permanent=True) from exc


@dataclass(frozen=True)
class _Limits:
    max_pixels: int
    max_memory: int | None  # bytes; None: no memory cap (budget.py)


def _check_pixels(path: Path, height: int, width: int, limits: _Limits, depth: int = 1) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})", permanent=True)
    pixels = height * width * depth
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            path,
            f"image is {width}x{height}"
            + (f"x{depth}" if depth > 1 else "")
            + f" = {pixels} pixels, more than max_pixels={limits.max_pixels}",
        )
    check_image_memory(path, height, width, limits.max_memory, depth)


# --------------------------------------------------------------------------- TIFF


def _tiff_header(path: Path, fh: Any) -> tuple[int, int]:
    try:
        with tifffile.TiffFile(fh) as tf:
            first = tf.pages[0]
            return int(first.imagelength), int(first.imagewidth)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        if is_system_io_error(exc):
            raise
        raise ImageError(path, f"not a readable TIFF: {describe(exc)}", permanent=True) from exc


def _decode_tiff(path: Path, data: bytes, limits: _Limits, page_index: int, carry: bool) -> _Decoded:
    # Our own stream, closed on the way out: tifffile's objects form reference cycles that
    # would otherwise keep the whole file's bytes until the cyclic garbage collector runs.
    with io.BytesIO(data) as stream:
        return _decode_tiff_stream(path, stream, data, limits, page_index, carry)


def _decode_tiff_stream(
    path: Path, stream: io.BytesIO, data: bytes, limits: _Limits, page_index: int, carry: bool
) -> _Decoded:
    try:
        tf = tifffile.TiffFile(stream)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        raise ImageError(path, f"not a readable TIFF: {describe(exc)}", permanent=True) from exc
    with tf:
        page_count = len(tf.pages)
        if page_index >= page_count:
            raise ImageError(path, f"page {page_index} requested but the TIFF has {page_count} page(s)", True)
        page = tf.pages[page_index]
        _check_pixels(path, page.imagelength, page.imagewidth, limits, page.imagedepth)
        series_shape = _series_shape(tf, page_index) or tuple(page.shape)
        _check_tiff_layout(path, page, series_shape)
        _check_tiff_extent(path, page, len(data))
        metadata = tiff_metadata(path, tf, page, data, carry=carry)
        pixels = _tiff_pixels(path, page)
        warnings: tuple[str, ...] = ()
        if page_count > 1:
            warnings = (f"multi-page TIFF: page {page_index} of {page_count}",)
        palette = _tiff_colormap(path, page) if page.photometric == _PHOTOMETRIC_PALETTE else None
        return _Decoded(
            pixels=pixels,
            palette=palette,
            source_shape=tuple(int(n) for n in series_shape),
            source_dtype=str(page.dtype),
            metadata=metadata,
            warnings=warnings,
        )


def _series_shape(tf: tifffile.TiffFile, page_index: int) -> tuple[int, ...] | None:
    for series in tf.series:
        for member in series.pages:
            if member is not None and member.index == page_index:
                return tuple(series.shape)
    return None


def _check_tiff_layout(path: Path, page: Any, series_shape: tuple[int, ...]) -> None:
    axes = page.axes
    shape = tuple(page.shape)
    if page.imagedepth > 1 or "Z" in axes:
        raise ImageError(path, f"unsupported layout: volumetric page, shape {shape}", True)
    if axes == "YX" and len(series_shape) <= 3:
        return  # a 2-D gray/palette page, alone or in a plain stack of pages
    # A series of more dimensions is not an image plane: e.g. (3, 64, 64, 5) is stored as
    # 192 pages of 64x5, and its first page is no picture of anything.
    if axes in ("YXS", "SYX") and 2 <= page.samplesperpixel <= 4 and series_shape == shape:
        return
    raise ImageError(
        path,
        f"unsupported layout: shape {series_shape} axes {axes} (not a 2-D image or a stack of "
        "2-D gray pages)",
        permanent=True,
    )


def _check_tiff_extent(path: Path, page: Any, size: int) -> None:
    # tifffile can fill missing strips with zeros; a truncated file must fail instead.
    ends = [off + count for off, count in zip(page.dataoffsets, page.databytecounts) if count]
    if ends and max(ends) > size:
        raise ImageError(
            path, f"truncated TIFF: image data needs {max(ends)} bytes, the file has {size}", True
        )


def _tiff_pixels(path: Path, page: Any) -> np.ndarray:
    photometric = int(page.photometric)
    if photometric == _PHOTOMETRIC_YCBCR and int(page.compression) not in _COMPRESSION_JPEG:
        raise ImageError(path, "unsupported photometric: uncompressed YCbCr", permanent=True)
    if photometric not in (
        _PHOTOMETRIC_MINISWHITE,
        _PHOTOMETRIC_MINISBLACK,
        _PHOTOMETRIC_RGB,
        _PHOTOMETRIC_PALETTE,
        _PHOTOMETRIC_YCBCR,
    ):
        name = getattr(page.photometric, "name", str(photometric))
        raise ImageError(path, f"unsupported photometric interpretation {name}", permanent=True)
    pixels = page.asarray()
    if np.iscomplexobj(pixels):
        raise ImageError(path, f"unsupported sample type {pixels.dtype}", permanent=True)
    if page.axes == "SYX":
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.dtype == np.bool_:
        pixels = _bilevel_to_u8(pixels)
        bits = 8
    else:
        bits = int(page.bitspersample)
    if photometric == _PHOTOMETRIC_MINISWHITE:
        pixels = _invert(pixels, bits)
    return pixels


def _bilevel_to_u8(pixels: np.ndarray) -> np.ndarray:
    # Pillow's bool arrays hold the byte 255 for True (its "1" mode stores 0/255), tifffile's
    # hold 1: any nonzero byte is white. (255 * 255 in uint8 is 1: multiplying made it black.)
    return np.where(pixels.view(np.uint8) != 0, np.uint8(255), np.uint8(0))


def _invert(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype.kind == "u":
        top = min((1 << bits) - 1, np.iinfo(pixels.dtype).max)
        return np.subtract(pixels.dtype.type(top), pixels)
    # Signed and float data get windowed afterwards, where only the order of levels matters.
    return np.negative(pixels)


def _tiff_colormap(path: Path, page: Any) -> np.ndarray:
    colormap = page.colormap
    if colormap is None:
        raise ImageError(path, "palette image without a ColorMap", permanent=True)
    colormap = np.asarray(colormap, dtype=np.uint32).reshape(3, -1)
    if colormap.max(initial=0) > 255:
        # TIFF colormaps are 16-bit; some writers store 8-bit values, kept as they are.
        colormap = (colormap * 255 + 32767) // 65535
    return colormap.T.astype(np.uint8)


# --------------------------------------------------------------------------- PNG/JPEG/BMP

_PILLOW_CLASSES = MappingProxyType(
    {
        "png": PngImagePlugin.PngImageFile,
        "jpeg": JpegImagePlugin.JpegImageFile,
        "bmp": BmpImagePlugin.BmpImageFile,
    }
)


def _open_pillow(path: Path, fh: Any, kind: str) -> Image.Image:
    # The plugin class is used directly, not Image.open: Image.open applies Pillow's global
    # decompression-bomb limit (a warning from 89 Mpx, an error from 179 Mpx), while the limit
    # that applies here is the caller's max_pixels, checked against the header below.
    try:
        return _PILLOW_CLASSES[kind](fh)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed headers
        if is_system_io_error(exc):
            raise
        raise ImageError(path, f"not a readable {KIND_NAMES[kind]}: {describe(exc)}", permanent=True) from exc


def _decode_pillow(path: Path, data: bytes, kind: str, limits: _Limits, page: int) -> _Decoded:
    # Closed on the way out, as for TIFF: nothing may keep the file's bytes alive.
    with io.BytesIO(data) as stream:
        return _decode_pillow_stream(path, _open_pillow(path, stream, kind), kind, limits, page)


def _decode_pillow_stream(path: Path, image: Image.Image, kind: str, limits: _Limits, page: int) -> _Decoded:
    width, height = image.size
    _check_pixels(path, height, width, limits)
    warnings: tuple[str, ...] = ()
    frames = int(getattr(image, "n_frames", 1))
    if page >= frames:
        raise ImageError(path, f"page {page} requested but the file has {frames} frame(s)", True)
    if frames > 1:
        image.seek(page)
        warnings = (f"multi-frame {KIND_NAMES[kind]}: frame {page} of {frames}",)
    image.load()
    pixels, palette, source_shape, source_dtype = _pillow_pixels(path, image)
    return _Decoded(
        pixels=pixels,
        palette=palette,
        source_shape=source_shape,
        source_dtype=source_dtype,
        metadata=pillow_metadata(image),
        warnings=warnings,
    )


def _pillow_pixels(
    path: Path, image: Image.Image
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...], str]:
    """(pixels, palette table or None, source shape, source dtype)."""
    mode = image.mode
    if mode in ("P", "PA"):
        indices = np.asarray(image)
        lut = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        return indices, lut, tuple(indices.shape), str(indices.dtype)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode not in ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F", "RGB", "RGBA", "RGBX"):
        raise ImageError(path, f"unsupported pixel mode {mode}", permanent=True)
    pixels = np.asarray(image)
    source_shape, source_dtype = tuple(pixels.shape), str(pixels.dtype)
    if pixels.dtype == np.bool_:
        pixels = _bilevel_to_u8(pixels)
    elif not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if source_dtype.startswith((">", "<")):
        source_dtype = pixels.dtype.name
    return pixels, None, source_shape, source_dtype
