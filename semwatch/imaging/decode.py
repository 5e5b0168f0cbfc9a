"""Reading, metadata, data-bar detection and atomic writing of SEM images.

numpy, tifffile and Pillow only: this module is shared by the daemon (decode/encode threads)
and the trainer, and must not pull in torch.

Reading: the file is read into memory once, hashed, and decoded from that buffer, so the
SHA-256 recorded in the output is that of the bytes that were actually decoded. Only a
regular file is read (opened without blocking, so a FIFO cannot hang the reader; a device
is never read), its signature is checked before the rest is read, and the read is bounded
by what `max_pixels` can need. Given `inside`, the file must also lie inside that folder,
reached without following a symlink out of it. Formats are recognized by their signature,
not by their name. Every image becomes display gray levels
(uint8): 8-bit gray as is; palette images through their colormap; RGB that is really gray as
that gray; colored RGB as its Rec.601 luma (the weights of Pillow's "L" mode, on the encoded
values), with a warning; 16-bit and float through a robust percentile window recorded in
`Window`.

Writing: RGB uint8 to TIFF (the source page's acquisition metadata carried by the deny-list
rule of `semwatch.metadata`, the provenance in the XMP packet), PNG or JPEG, always through a
temporary file in the target folder that is fsynced and renamed, so a reader never sees a
partial output.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

import numpy as np
import tifffile
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

from semwatch import __version__
from semwatch.log import get_logger
from semwatch.metadata import (
    OUTPUT_BYTEORDER,
    SubIFD,
    append_sub_ifds,
    carried_tags,
    provenance_from_json,
    provenance_from_xmp,
    provenance_xmp,
    raw_tag_bytes,
)

log = get_logger(__name__)

FORMAT_EXTENSIONS: Mapping[str, str] = MappingProxyType({"tiff": ".tif", "png": ".png", "jpeg": ".jpg"})
SUPPORTED_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})

# Temporary outputs start with a dot so that watchers and scans (which ignore hidden files)
# never pick them up, and with our own marker so that sweeping never touches anyone else's.
TEMP_PREFIX = ".semwatch-tmp-"

_SUFFIX_KIND = MappingProxyType(
    {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp"}
)
_KIND_NAMES = MappingProxyType({"tiff": "TIFF", "png": "PNG", "jpeg": "JPEG", "bmp": "BMP"})

_FEI_TAGS = (34682, 34680, 34683)
_ZEISS_TAG = 34118
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_MINISBLACK = 1
_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_YCBCR = 6
_COMPRESSION_JPEG = (6, 7)

# Around 262k samples keep the percentiles stable to a fraction of a gray level while the
# window of a 5-megapixel frame costs a few milliseconds.
_WINDOW_SAMPLES = 1 << 18
_WINDOW_PERCENTILES = (0.1, 99.9)

# JPEG round trips and resampling leave a gray image's channels a level or two apart; that
# is still a gray image, not a colored one worth a warning.
_GRAY_RGB_TOLERANCE = 2

_MAX_REASON = 200


class ImageError(Exception):
    """An image that could not be read; str(exc) == "<path>: <reason>" on one line.

    permanent=True when retrying can never help (undecodable, too many pixels, unsupported
    layout); False for transient I/O (file vanished, EIO, permission).
    """

    def __init__(self, path: Path | str, reason: str, permanent: bool) -> None:
        super().__init__(path, reason, permanent)
        self.path = Path(path)
        self.reason = _one_line(reason)
        self.permanent = permanent

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Window:
    """How a 16-bit or float image was mapped to display gray 0..255 (linear, clipped)."""

    low: float
    high: float
    method: str

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "method": self.method}


@dataclass(frozen=True)
class SourceMetadata:
    """What is carried from the source into the output (rules: semwatch.metadata).

    extratags: tifffile extratags tuples (code, dtype, count, value, writeonce): every tag of
        the source page except those describing its pixel layout, with the ImageDescription
        minus its layout keys. Byte-sized field types (BYTE, ASCII, SBYTE, UNDEFINED) hold
        the stored bytes verbatim; wider numeric types hold their decoded values, so they are
        re-encoded in the output's byte order (byte-identical whenever source and output
        byte order agree, as for every little-endian file). An ASCII value stored without
        its terminating NUL gains one on writing (tifffile enforces what TIFF requires).
    xmp: the source's XMP packet, to which the writer adds the provenance.
    sub_ifds: the source's EXIF and GPS IFDs, appended to the output by the writer.
    resolution: (x, y) pixels per unit: TIFF rationals as (numerator, denominator) or floats
        (PNG/JPEG dpi, unit 2 = inch).
    fields: parsed vendor fields. FEI: {section: {key: value}} from the INI-like tag, numbers
        as int/float, everything else as str (e.g. fields["Image"]["ResolutionY"] == 1024).
        Zeiss: tifffile's parse of CZ_SEM.
    """

    extratags: tuple = ()
    xmp: bytes | None = None
    sub_ifds: tuple[SubIFD, ...] = ()
    resolution: tuple | None = None
    resolution_unit: int | None = None
    vendor: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


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
    """A decoder's result before the display mapping: gray-like HxW or color HxWxC pixels."""

    pixels: np.ndarray
    source_shape: tuple[int, ...]
    source_dtype: str
    metadata: SourceMetadata
    warnings: tuple[str, ...]


# --------------------------------------------------------------------------- reading


def read_header(path: Path) -> tuple[int, int]:
    """(height, width) of the first image, from the header only (nothing is decoded)."""
    path = Path(path)
    try:
        with open(path, "rb", opener=lambda name, _flags: _open_regular(Path(name), None)) as fh:
            _regular_size(path, os.fstat(fh.fileno()))
            kind = _sniff(path, fh.read(16))
            fh.seek(0)
            if kind == "tiff":
                return _tiff_header(path, fh)
            image = _open_pillow(path, fh, kind)
            width, height = image.size
            return height, width
    except OSError as exc:
        raise _io_error(path, exc) from exc


def read_image(
    path: Path, *, max_pixels: int = 200_000_000, page: int = 0, inside: Path | None = None
) -> DecodedImage:
    """Decode an SEM image to display gray levels, with its metadata and data bar.

    Raises ImageError (permanent or transient, see its docstring); a header claiming more
    than `max_pixels` pixels is refused before anything is decoded. `inside`: the folder
    the file must be in (the daemon's watch folder), symlinks never leading out of it.
    """
    path = Path(path)
    if page < 0:
        raise ValueError(f"page must be >= 0, got {page}")
    data, kind = _read_source(path, max_pixels, inside)
    digest = hashlib.sha256(data).hexdigest()
    warnings = _name_warnings(path, kind)
    try:
        if kind == "tiff":
            decoded = _decode_tiff(path, data, max_pixels, page)
        else:
            decoded = _decode_pillow(path, data, kind, max_pixels, page)
    except ImageError:
        raise
    except MemoryError as exc:
        # The pixel count was within limits, so this is memory pressure, not the file.
        raise ImageError(path, "out of memory while decoding", permanent=False) from exc
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise anything
        reason = f"cannot decode {_KIND_NAMES[kind]}: {_describe(exc)}"
        raise ImageError(path, reason, permanent=True) from exc

    meta = decoded.metadata
    vendor_decided, vendor_row = _vendor_databar(meta.fields, meta.vendor, decoded.pixels.shape[0])
    gray, window, display_warnings = _to_display(path, decoded.pixels, vendor_row)
    if not gray.flags.writeable:
        # Pillow hands out read-only views; consumers (torch.from_numpy) expect an ordinary array.
        gray = gray.copy()
    databar = vendor_row if vendor_decided else _find_databar_by_content(gray)
    return DecodedImage(
        path=path,
        gray=gray,
        sha256=digest,
        size=len(data),
        source_shape=decoded.source_shape,
        source_dtype=decoded.source_dtype,
        window=window,
        databar_row=databar,
        metadata=meta,
        warnings=(*warnings, *decoded.warnings, *display_warnings),
    )


def _read_source(path: Path, max_pixels: int, inside: Path | None) -> tuple[bytes, str]:
    """The file's bytes and format: a regular file's, signature first, bounded."""
    # Even 16 bytes per pixel (RGBA float32) plus generous metadata cannot need more; a larger
    # file is refused before it is pulled into memory.
    max_bytes = max_pixels * 16 + (64 << 20)
    try:
        with open(
            path, "rb", buffering=0, opener=lambda name, _flags: _open_regular(Path(name), inside)
        ) as fh:
            fd = fh.fileno()
            size = _regular_size(path, os.fstat(fd))
            if size > max_bytes:
                raise ImageError(path, f"file is {size} bytes, too large for max_pixels={max_pixels}", True)
            # A gigabyte of garbage is refused on its first bytes, not after reading it all.
            kind = _sniff(path, os.pread(fd, 16, 0))
            data = _read_at_most(fh, size, max_bytes)
    except OSError as exc:
        raise _io_error(path, exc) from exc
    if len(data) > max_bytes:
        raise ImageError(
            path,
            f"file grew beyond {max_bytes} bytes while it was read (max_pixels={max_pixels})",
            permanent=False,
        )
    return data, kind


def _open_regular(path: Path, inside: Path | None) -> int:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
    # (it changes nothing for regular files). The caller checks the type with fstat.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if inside is None:
        return os.open(path, flags)  # a path named by the user: its symlinks are followed
    return _open_beneath(path, Path(inside), flags)


def _open_beneath(path: Path, root: Path, flags: int) -> int:
    """Open `path` only as a file inside `root`: its symlinks are resolved first and must
    stay inside; the resolved path is then walked from the root with O_NOFOLLOW, so a
    symlink swapped in meanwhile makes the open fail instead of leading out."""
    real_root = os.path.realpath(root)
    rel = os.path.relpath(os.path.realpath(path), real_root)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ImageError(
            path,
            f"leads outside the watched folder {root} (symbolic link to {os.path.realpath(path)})",
            permanent=True,
        )
    *folders, name = rel.split(os.sep)
    dir_fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            parent_fd = dir_fd
            dir_fd = os.open(
                folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
            )
            os.close(parent_fd)
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _regular_size(path: Path, st: os.stat_result) -> int:
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a directory, not an image file", permanent=True)
    kind = (
        "a FIFO"
        if stat.S_ISFIFO(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "a special file"
    )
    raise ImageError(path, f"not a regular file ({kind}); not read", permanent=True)


def _read_at_most(fh: Any, expected: int, limit: int) -> bytes:
    """Up to limit + 1 bytes (one more tells the caller it was exceeded)."""
    data = fh.read(min(expected, limit) + 1)  # the whole file in one read, as a rule
    if len(data) <= expected or len(data) > limit:
        return data
    chunks = [data]
    total = len(data)
    while total <= limit:  # it grew since fstat: read on, but never past the bound
        chunk = fh.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _io_error(path: Path, exc: OSError) -> ImageError:
    if isinstance(exc, IsADirectoryError):
        return ImageError(path, "is a directory, not an image file", permanent=True)
    if isinstance(exc, FileNotFoundError):
        return ImageError(path, "file not found (it may have been moved or deleted)", False)
    if exc.errno == errno.ELOOP:
        # O_NOFOLLOW met a symlink that appeared after the path was resolved.
        return ImageError(path, "a symbolic link was swapped in while opening; not followed", permanent=True)
    reason = exc.strerror or _describe(exc)
    return ImageError(path, f"cannot read: {reason}", permanent=False)


def _sniff(path: Path, head: bytes) -> str:
    if not head:
        raise ImageError(path, "empty file (0 bytes)", permanent=True)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    raise ImageError(path, f"not a TIFF, PNG, JPEG or BMP image (starts with {head[:8]!r})", permanent=True)


def _name_warnings(path: Path, kind: str) -> tuple[str, ...]:
    named = _SUFFIX_KIND.get(path.suffix.lower())
    if named is not None and named != kind:
        return (f"content is {_KIND_NAMES[kind]} although the name ends in {path.suffix}",)
    return ()


def _check_pixels(path: Path, height: int, width: int, max_pixels: int, depth: int = 1) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})", permanent=True)
    pixels = height * width * depth
    if pixels > max_pixels:
        raise ImageError(
            path,
            f"image is {width}x{height}"
            + (f"x{depth}" if depth > 1 else "")
            + f" = {pixels} pixels, more than max_pixels={max_pixels}",
            permanent=True,
        )


# --------------------------------------------------------------------------- TIFF


def _tiff_header(path: Path, fh: Any) -> tuple[int, int]:
    try:
        with tifffile.TiffFile(fh) as tf:
            first = tf.pages[0]
            return int(first.imagelength), int(first.imagewidth)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        if _is_system_io_error(exc):
            raise
        raise ImageError(path, f"not a readable TIFF: {_describe(exc)}", permanent=True) from exc


def _decode_tiff(path: Path, data: bytes, max_pixels: int, page_index: int) -> _Decoded:
    # Our own stream, closed on the way out: tifffile's objects form reference cycles that
    # would otherwise keep the whole file's bytes until the cyclic garbage collector runs.
    with io.BytesIO(data) as stream:
        return _decode_tiff_stream(path, stream, data, max_pixels, page_index)


def _decode_tiff_stream(
    path: Path, stream: io.BytesIO, data: bytes, max_pixels: int, page_index: int
) -> _Decoded:
    try:
        tf = tifffile.TiffFile(stream)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on malformed files
        raise ImageError(path, f"not a readable TIFF: {_describe(exc)}", permanent=True) from exc
    with tf:
        page_count = len(tf.pages)
        if page_index >= page_count:
            raise ImageError(path, f"page {page_index} requested but the TIFF has {page_count} page(s)", True)
        page = tf.pages[page_index]
        _check_pixels(path, page.imagelength, page.imagewidth, max_pixels, page.imagedepth)
        series_shape = _series_shape(tf, page_index) or tuple(page.shape)
        _check_tiff_layout(path, page, series_shape)
        _check_tiff_extent(path, page, len(data))
        metadata = _tiff_metadata(path, tf, page, data)
        pixels = _tiff_pixels(path, page)
        warnings: tuple[str, ...] = ()
        if page_count > 1:
            warnings = (f"multi-page TIFF: page {page_index} of {page_count}",)
        if page.photometric == _PHOTOMETRIC_PALETTE:
            pixels, palette_warnings = _apply_palette(pixels, _tiff_colormap(path, page))
            warnings += palette_warnings
        return _Decoded(
            pixels=pixels,
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
        pixels = pixels.view(np.uint8) * np.uint8(255)
        bits = 8
    else:
        bits = int(page.bitspersample)
    if photometric == _PHOTOMETRIC_MINISWHITE:
        pixels = _invert(pixels, bits)
    return pixels


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


def _apply_palette(indices: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map palette indices through an (N, 3) uint8 RGB table to gray levels."""
    if indices.ndim != 2:
        indices = indices[..., 0]
    entries = 1 << (8 * indices.dtype.itemsize)
    table = np.zeros((max(entries, len(lut)), 3), np.uint8)
    table[: len(lut)] = lut
    gray_entries = (table[:, 0] == table[:, 1]) & (table[:, 1] == table[:, 2])
    if gray_entries.all():
        colored_in_use = False
    else:
        used = np.bincount(indices.ravel(), minlength=len(table)) > 0
        colored_in_use = bool((used & ~gray_entries).any())
    if colored_in_use:
        levels = _luma_u8(table)
        warnings: tuple[str, ...] = ("palette with colored entries: using its luminance",)
    else:
        levels = table[:, 0].copy()
        warnings = ()
    if np.array_equal(levels[:256], np.arange(256)) and indices.dtype == np.uint8:
        return indices, warnings  # the usual gray ramp (Zeiss): the indices are the levels
    return levels[indices], warnings


def _tiff_metadata(path: Path, tf: tifffile.TiffFile, page: Any, data: bytes) -> SourceMetadata:
    tags = page.tags
    carried = carried_tags(path, tf, page, data)

    resolution = None
    xres, yres = tags.get(282), tags.get(283)
    if xres is not None and yres is not None:
        resolution = (_rational(xres.value), _rational(yres.value))
        if not all(_as_float(value) > 0 for value in resolution):
            # Copied as is, a zero denominator would make every write of this image fail.
            log.warning("tiff_resolution_ignored", path=str(path), resolution=str(resolution))
            resolution = None
    unit_tag = tags.get(296)
    unit = int(unit_tag.value) if unit_tag is not None else (2 if resolution else None)

    vendor, fields = None, {}
    fei = next((tags.get(code) for code in _FEI_TAGS if code in tags), None)
    if fei is not None:
        vendor = "fei"
        fields = _parse_fei_metadata(raw_tag_bytes(fei, data, tf.byteorder, tf.tiff.offsetsize))
    elif _ZEISS_TAG in tags:
        vendor = "zeiss"
        fields = _zeiss_fields(path, tags[_ZEISS_TAG])
    return SourceMetadata(
        extratags=carried.extratags,
        xmp=carried.xmp,
        sub_ifds=carried.sub_ifds,
        resolution=resolution,
        resolution_unit=unit,
        vendor=vendor,
        fields=fields,
    )


def _rational(value: Any) -> tuple[int, int] | float:
    if isinstance(value, tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return float(value)


_INI_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_fei_metadata(raw: bytes) -> dict[str, dict[str, Any]]:
    """Parse FEI/Thermo's INI-like tag text into {section: {key: value}}."""
    text = raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = sections.setdefault("", {})
    for line in text.splitlines():
        line = line.strip()
        header = _INI_SECTION.match(line)
        if header:
            current = sections.setdefault(header.group("name").strip(), {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = _ini_value(value.strip())
    if not sections[""]:
        del sections[""]
    return sections


def _ini_value(text: str) -> Any:
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _zeiss_fields(path: Path, tag: Any) -> dict[str, Any]:
    try:
        value = tag.value
    except Exception as exc:  # noqa: BLE001 - a vendor parse failure must not fail the image
        log.warning("zeiss_metadata_unparsed", path=str(path), error=_describe(exc))
        return {}
    if not isinstance(value, dict):
        log.warning("zeiss_metadata_unparsed", path=str(path), error="not a key/value block")
        return {}
    return dict(value)


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
        if _is_system_io_error(exc):
            raise
        raise ImageError(
            path, f"not a readable {_KIND_NAMES[kind]}: {_describe(exc)}", permanent=True
        ) from exc


def _decode_pillow(path: Path, data: bytes, kind: str, max_pixels: int, page: int) -> _Decoded:
    # Closed on the way out, as for TIFF: nothing may keep the file's bytes alive.
    with io.BytesIO(data) as stream:
        return _decode_pillow_stream(path, _open_pillow(path, stream, kind), kind, max_pixels, page)


def _decode_pillow_stream(path: Path, image: Image.Image, kind: str, max_pixels: int, page: int) -> _Decoded:
    width, height = image.size
    _check_pixels(path, height, width, max_pixels)
    warnings: tuple[str, ...] = ()
    frames = int(getattr(image, "n_frames", 1))
    if page >= frames:
        raise ImageError(path, f"page {page} requested but the file has {frames} frame(s)", True)
    if frames > 1:
        image.seek(page)
        warnings = (f"multi-frame {_KIND_NAMES[kind]}: frame {page} of {frames}",)
    image.load()
    pixels, source_shape, source_dtype, palette_warnings = _pillow_pixels(path, image)
    return _Decoded(
        pixels=pixels,
        source_shape=source_shape,
        source_dtype=source_dtype,
        metadata=_pillow_metadata(image),
        warnings=warnings + palette_warnings,
    )


def _pillow_pixels(
    path: Path, image: Image.Image
) -> tuple[np.ndarray, tuple[int, ...], str, tuple[str, ...]]:
    mode = image.mode
    if mode in ("P", "PA"):
        indices = np.asarray(image)
        palette = image.getpalette("RGB") or []
        lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        gray, warnings = _apply_palette(indices, lut)
        return gray, tuple(indices.shape), str(indices.dtype), warnings
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode not in ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F", "RGB", "RGBA", "RGBX"):
        raise ImageError(path, f"unsupported pixel mode {mode}", permanent=True)
    pixels = np.asarray(image)
    source_shape, source_dtype = tuple(pixels.shape), str(pixels.dtype)
    if pixels.dtype == np.bool_:
        pixels = pixels.view(np.uint8) * np.uint8(255)
    elif not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if source_dtype.startswith((">", "<")):
        source_dtype = pixels.dtype.name
    return pixels, source_shape, source_dtype, ()


def _pillow_metadata(image: Image.Image) -> SourceMetadata:
    dpi = image.info.get("dpi")
    if dpi and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        return SourceMetadata(resolution=(float(dpi[0]), float(dpi[1])), resolution_unit=2)
    return SourceMetadata()


# --------------------------------------------------------------------------- display mapping


def _to_display(
    path: Path, pixels: np.ndarray, databar_row: int | None
) -> tuple[np.ndarray, Window | None, tuple[str, ...]]:
    """Any decoded pixels -> uint8 HxW C-contiguous display gray, its window, warnings."""
    warnings: tuple[str, ...] = ()
    if pixels.ndim == 3:
        pixels, warnings = _color_to_gray(pixels)
    if pixels.ndim != 2:
        raise ImageError(path, f"unsupported layout: decoded shape {pixels.shape}", permanent=True)
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels), None, warnings
    window = _choose_window(path, pixels, databar_row)
    return _apply_window(pixels, window), window, warnings


def _color_to_gray(pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    channels = pixels.shape[2]
    if channels < 3:
        return pixels[..., 0], ()  # gray + alpha
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return red, ()
    gray = _luma_u8(pixels) if pixels.dtype == np.uint8 else _luma_float(pixels)
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


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------- data bar

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
    decided, row = _vendor_databar(fields or {}, vendor, gray.shape[0])
    if decided:
        return row
    return _find_databar_by_content(gray)


def _vendor_databar(fields: Mapping[str, Any], vendor: str | None, height: int) -> tuple[bool, int | None]:
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


def _find_databar_by_content(gray: np.ndarray) -> int | None:
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


# --------------------------------------------------------------------------- writing


def write_image(
    path: Path,
    rgb: np.ndarray,
    *,
    fmt: str,
    metadata: SourceMetadata | None,
    provenance: Mapping[str, Any],
    jpeg_quality: int = 95,
) -> None:
    """Write an RGB uint8 HxWx3 image atomically (temp file, fsync, rename, fsync folder).

    The provenance goes into the TIFF's XMP packet (`read_provenance` reads it back), a PNG
    text chunk `semwatch` or the JPEG comment. I/O failures propagate as OSError with their
    errno (ENOSPC: disk full) after the temporary file is removed; a reader never sees a
    partial file under `path`.
    """
    path = Path(path)
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(FORMAT_EXTENSIONS)})")
    _check_rgb(path, rgb)
    record = json.dumps(provenance, ensure_ascii=True, separators=(",", ":"))
    metadata = metadata or SourceMetadata()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / _temp_name(path.name)
    try:
        # Readable too: the EXIF/GPS IFDs are patched in after tifffile has written the file.
        with temp.open("xb+") as fh:
            _encode(fh, np.ascontiguousarray(rgb), fmt, metadata, record, jpeg_quality)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove_temp(temp)
        raise
    _fsync_directory(folder)


def _check_rgb(path: Path, rgb: Any) -> None:
    is_rgb = isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.shape[2:] == (3,)
    if is_rgb and rgb.ndim == 3:
        return
    got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
    raise ValueError(f"{path}: write_image needs an RGB uint8 HxWx3 array, got {got}")


def _temp_name(name: str) -> str:
    prefix = f"{TEMP_PREFIX}{secrets.token_hex(6)}-"
    # Stay within NAME_MAX (255 bytes) however long the final name is.
    room = 255 - len(prefix.encode())
    encoded = name.encode("utf-8", errors="surrogateescape")[:room]
    return prefix + encoded.decode("utf-8", errors="ignore")


def _encode(fh: Any, rgb: np.ndarray, fmt: str, metadata: SourceMetadata, record: str, quality: int) -> None:
    if fmt == "tiff":
        _encode_tiff(fh, rgb, metadata, record)
        return
    image = Image.fromarray(rgb)
    options: dict[str, Any] = {}
    dpi = _dpi(metadata)
    if dpi is not None:
        options["dpi"] = dpi
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("semwatch", record)
        image.save(fh, format="PNG", pnginfo=info, compress_level=1, **options)
    else:
        image.save(fh, format="JPEG", quality=quality, comment=record.encode("ascii"), **options)


def _encode_tiff(fh: Any, rgb: np.ndarray, metadata: SourceMetadata, record: str) -> None:
    resolution = metadata.resolution
    xmp = provenance_xmp(record, metadata.xmp)
    extratags = (*metadata.extratags, (700, 1, len(xmp), xmp, True))
    # The source's Software tag is part of its record and travels in extratags; only an
    # output without one names semwatch (the provenance names it in any case).
    has_software = any(tag[0] == 305 for tag in metadata.extratags)
    tifffile.imwrite(
        fh,
        rgb,
        photometric="rgb",
        planarconfig="contig",
        compression=None,
        description=None,  # the source's, if any, is in extratags
        metadata=None,  # no tifffile shape record: the carried description is the only one
        software=False if has_software else f"semwatch {__version__}",
        resolution=resolution,
        resolutionunit=metadata.resolution_unit if resolution else None,
        extratags=extratags,
        byteorder=OUTPUT_BYTEORDER,
    )
    append_sub_ifds(fh, metadata.sub_ifds)


def _dpi(metadata: SourceMetadata) -> tuple[float, float] | None:
    if not metadata.resolution or metadata.resolution_unit not in (2, 3):
        return None
    per_inch = 2.54 if metadata.resolution_unit == 3 else 1.0
    values = [_as_float(value) * per_inch for value in metadata.resolution]
    if not all(value > 0 for value in values):
        return None
    return values[0], values[1]


def _as_float(value: Any) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _remove_temp(temp: Path) -> None:
    try:
        temp.unlink(missing_ok=True)
    except OSError as exc:
        log.error("temp_file_not_removed", path=str(temp), error=_describe(exc))


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        log.warning("directory_fsync_skipped", path=str(folder), error=_describe(exc))
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network filesystems refuse fsync on a directory; the rename itself is done.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
        log.debug("directory_fsync_unsupported", path=str(folder), error=_describe(exc))
    finally:
        os.close(fd)


def sweep_temp_files(root: Path) -> int:
    """Remove our temporary outputs (TEMP_PREFIX) left under an output root; returns count."""
    root = Path(root)
    removed = 0
    for folder, _dirs, files in os.walk(root, onerror=_log_walk_error):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            temp = Path(folder, name)
            try:
                temp.unlink()
            except FileNotFoundError:
                continue  # gone already: nothing to sweep
            except OSError as exc:
                log.warning("temp_file_not_swept", path=str(temp), error=_describe(exc))
                continue
            removed += 1
            log.info("temp_file_swept", path=str(temp))
    return removed


def _log_walk_error(exc: OSError) -> None:
    if not isinstance(exc, FileNotFoundError):
        log.warning("sweep_walk_error", path=str(exc.filename), error=_describe(exc))


# --------------------------------------------------------------------------- naming, provenance


def output_name(src_name: str, fmt: str, *, sibling_names: Iterable[str] = ()) -> str:
    """Output file name for a source: extension replaced by the format's.

    Sources in one folder whose stems are equal ignoring case would share an output name
    (on a case-insensitive share too). One keeps the plain name: a source with the output's
    own extension (x.tif for TIFF), else one with it in another case (x.TIF), the first by
    name; every other keeps its own extension before the new one:
    x.tif + x.TIF + x.png -> x.tif, x.TIF.tif and x.png.tif.
    """
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(FORMAT_EXTENSIONS)})")
    if not src_name or PurePath(src_name).name != src_name:
        raise ValueError(f"output_name needs a bare file name, got {src_name!r}")
    extension = FORMAT_EXTENSIONS[fmt]
    source = PurePath(src_name)
    if not source.suffix:
        return src_name + extension
    if _yields_plain_name(source, extension, sibling_names):
        return src_name + extension
    return source.stem + extension


def _plain_name_rank(name: str, extension: str) -> int:
    """0: the output's own extension; 1: it in another case; 2: another extension."""
    suffix = PurePath(name).suffix
    return 0 if suffix == extension else 1 if suffix.lower() == extension else 2


def _yields_plain_name(source: PurePath, extension: str, sibling_names: Iterable[str]) -> bool:
    stem = source.stem.lower()
    mine = (_plain_name_rank(source.name, extension), source.name)
    for name in sibling_names:
        other = PurePath(name)
        if (
            name == source.name
            or other.suffix.lower() not in SUPPORTED_SUFFIXES
            or other.stem.lower() != stem
        ):
            continue
        if mine[0] == 2:
            return True  # another extension never takes the plain name from a sibling
        rank = _plain_name_rank(name, extension)
        if rank < 2 and (rank, name) < mine:
            return True
    return False


def build_provenance(
    image: DecodedImage,
    *,
    source_path: str,
    model_name: str,
    model_sha256: str,
    backend: str,
    device: str,
    chroma_size: int,
    refinement: Mapping[str, Any] | None = None,
    hints: Sequence[Mapping[str, Any]] | None = None,
) -> dict:
    """The provenance record written into every output (DESIGN.md "Input and output").

    ``refinement``: the engine's colour post-processing settings (hue coherence, guided
    filter), which change the output as much as the model does. ``hints``: the colour
    hints given ({"x", "y", "color"} each), recorded only when there were any.
    """
    record = {
        "semwatch": {
            "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "path": source_path,
                "sha256": image.sha256,
                "size": image.size,
                "shape": list(image.source_shape),
                "dtype": image.source_dtype,
                "window": image.window.as_dict() if image.window else None,
            },
            "model": {"name": model_name, "sha256": model_sha256},
            "backend": backend,
            "device": device,
            "chroma_size": chroma_size,
            "refinement": dict(refinement) if refinement is not None else None,
            "databar_row": image.databar_row,
        }
    }
    if hints:
        record["semwatch"]["hints"] = [dict(h) for h in hints]
    return record


def read_provenance(path: Path) -> dict | None:
    """The provenance record of an output written by `write_image` ({"semwatch": {...}}), or
    None when the file carries none.

    TIFF: the XMP packet's semwatch:provenance; outputs written before the XMP packet have
    the record as JSON in their ImageDescription. PNG: the text chunk `semwatch`. JPEG: the
    comment. Raises OSError when the file cannot be read, ImageError when it is not an
    image, ValueError when the record is there but damaged.
    """
    path = Path(path)
    with path.open("rb") as fh:
        kind = _sniff(path, fh.read(16))
    if kind == "tiff":
        return _tiff_provenance(path)
    with Image.open(path) as image:
        if kind == "png":
            return provenance_from_json(image.text.get("semwatch"))
        return provenance_from_json(image.info.get("comment"))


def _tiff_provenance(path: Path) -> dict | None:
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        xmp = tags.get(700)
        if xmp is not None:
            record = provenance_from_xmp(xmp.value)
            if record is not None:
                return record
        for description in tags.getall(270, ()):
            record = provenance_from_json(description.value)
            if record is not None:
                return record
    return None


# --------------------------------------------------------------------------- helpers


def _is_system_io_error(exc: BaseException) -> bool:
    # A failing disk or share carries an errno; the libraries' complaints about bad data
    # (Pillow's "cannot identify", "truncated") are OSErrors without one.
    return isinstance(exc, OSError) and exc.errno is not None


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    # A bare "'ResolutionY'" or "0" says nothing without the exception's type.
    return text if len(text) >= 12 else f"{type(exc).__name__}: {text}".rstrip(": ")


def _one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    if len(flat) > _MAX_REASON:
        flat = flat[: _MAX_REASON - 3] + "..."
    return flat
