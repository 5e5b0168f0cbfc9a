"""A TIFF's structure checked against its file before its bytes are read.

A file that starts with the TIFF signature may be anything after it (a gigabyte of
garbage). Before the file is read whole, the IFD chain up to the requested page and that
page's image data (strip or tile offsets and byte counts) are read with small positioned
reads and checked against the file's size, and the declared dimensions against
`max_pixels`: a file that cannot be a readable image is refused having read kilobytes.
Only what the decoder needs is checked here; tags it does not need (a broken private tag)
are tifffile's business, as before.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from semwatch.imaging.budget import check_image_memory
from semwatch.imaging.errors import ImageError, ImageTooLarge

# TIFF field types -> bytes per value (TIFF 6.0 and BigTIFF).
_TYPE_SIZES = MappingProxyType(
    {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
)
_INTEGER_TYPES = MappingProxyType(
    {1: "u1", 3: "u2", 4: "u4", 6: "i1", 8: "i2", 9: "i4", 13: "u4", 16: "u8", 17: "i8"}
)
_IMAGE_WIDTH, _IMAGE_LENGTH = 256, 257
_SAMPLES_PER_PIXEL, _ROWS_PER_STRIP, _PLANAR = 277, 278, 284
_STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 273, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTE_COUNTS = 322, 323, 324, 325
# More IFDs than this before the requested page: a loop or garbage, not an acquisition.
_MAX_CHAIN = 1 << 16
# Offset/byte-count arrays are streamed in pieces of this many values: bounded memory.
_CHUNK_VALUES = 1 << 16


@dataclass(frozen=True)
class _Layout:
    big: bool
    order: str  # "<" or ">"

    @property
    def offset_size(self) -> int:
        return 8 if self.big else 4

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def count_size(self) -> int:
        return 8 if self.big else 2


@dataclass(frozen=True)
class _Entry:
    tag: int
    type: int
    count: int
    field: bytes  # the inline value or the offset of the values, as stored


def check_tiff_structure(
    path: Path, fd: int, size: int, max_pixels: int, page: int = 0, max_memory: int | None = None
) -> None:
    """Raise ImageError unless the IFD chain up to ``page`` lies in the file, that page
    declares at most ``max_pixels`` pixels (and fits ``max_memory``, budget.py), and its
    image data lies in the file."""
    layout, first = _header(path, fd, size)
    offset = first
    seen: set[int] = set()
    for index in range(page + 1):
        if offset == 0:
            return  # fewer pages than asked: the decoder names the page count
        if index >= _MAX_CHAIN:
            raise ImageError(path, f"not a readable TIFF: more than {_MAX_CHAIN} IFDs in its chain", True)
        if offset in seen:
            raise ImageError(path, f"not a readable TIFF: its IFD chain loops back to offset {offset}", True)
        seen.add(offset)
        entries, offset = _read_ifd(path, fd, size, layout, offset, index)
    _check_page(path, fd, size, layout, entries, max_pixels, max_memory)


def _header(path: Path, fd: int, size: int) -> tuple[_Layout, int]:
    head = os.pread(fd, 16, 0)
    order = "<" if head[:2] == b"II" else ">"
    version = struct.unpack(order + "H", head[2:4])[0] if len(head) >= 4 else 0
    if version == 43:
        if len(head) < 16:
            raise ImageError(path, f"not a readable TIFF: BigTIFF header cut short ({size} bytes)", True)
        layout, first = _Layout(True, order), struct.unpack(order + "Q", head[8:16])[0]
    else:
        if len(head) < 8:
            raise ImageError(path, f"not a readable TIFF: header cut short ({size} bytes)", True)
        layout, first = _Layout(False, order), struct.unpack(order + "I", head[4:8])[0]
    if first == 0:
        raise ImageError(path, "not a readable TIFF: it has no image directory (first IFD offset 0)", True)
    return layout, first


def _read_ifd(
    path: Path, fd: int, size: int, layout: _Layout, offset: int, index: int
) -> tuple[list[_Entry], int]:
    """The entries of the IFD at ``offset`` and the offset of the next one."""
    where = f"IFD {index} at offset {offset}"
    if offset < 8 or offset + layout.count_size > size:
        raise ImageError(path, f"not a readable TIFF: {where} lies outside the file ({size} bytes)", True)
    count_format = layout.order + ("Q" if layout.big else "H")
    count = struct.unpack(count_format, os.pread(fd, layout.count_size, offset))[0]
    if count == 0:
        raise ImageError(path, f"not a readable TIFF: {where} has no entries", True)
    table = offset + layout.count_size
    end = table + count * layout.entry_size + layout.offset_size
    if end > size:
        raise ImageError(
            path,
            f"not a readable TIFF: {where} declares {count} entries, beyond the file's {size} bytes",
            True,
        )
    raw = os.pread(fd, end - table, table)
    entry_format = layout.order + ("HHQ8s" if layout.big else "HHI4s")
    entries = [_Entry(*struct.unpack_from(entry_format, raw, i * layout.entry_size)) for i in range(count)]
    next_format = layout.order + ("Q" if layout.big else "I")
    return entries, struct.unpack_from(next_format, raw, count * layout.entry_size)[0]


def _check_page(
    path: Path,
    fd: int,
    size: int,
    layout: _Layout,
    entries: list[_Entry],
    max_pixels: int,
    max_memory: int | None,
) -> None:
    tags = {entry.tag: entry for entry in entries}
    width = _scalar(path, fd, size, layout, tags, _IMAGE_WIDTH, "ImageWidth")
    length = _scalar(path, fd, size, layout, tags, _IMAGE_LENGTH, "ImageLength")
    if width <= 0 or length <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{length})", permanent=True)
    if width * length > max_pixels:
        raise ImageTooLarge(
            path, f"image is {width}x{length} = {width * length} pixels, more than max_pixels={max_pixels}"
        )
    check_image_memory(path, length, width, max_memory)
    if _TILE_OFFSETS in tags:
        offsets, counts, what = _TILE_OFFSETS, _TILE_BYTE_COUNTS, "tile"
    else:
        offsets, counts, what = _STRIP_OFFSETS, _STRIP_BYTE_COUNTS, "strip"
    if offsets not in tags:
        raise ImageError(path, f"not a readable TIFF: no {what} offsets (no image data)", True)
    if counts not in tags:
        return  # tifffile can derive byte counts of uncompressed data; it checks them itself
    starts, sizes = tags[offsets], tags[counts]
    if starts.count != sizes.count:
        raise ImageError(
            path, f"not a readable TIFF: {starts.count} {what} offsets but {sizes.count} byte counts", True
        )
    end = _data_end(path, fd, size, layout, starts, sizes, what)
    if end > size:
        raise ImageError(path, f"truncated TIFF: image data needs {end} bytes, the file has {size}", True)


def _scalar(
    path: Path, fd: int, size: int, layout: _Layout, tags: dict[int, _Entry], tag: int, name: str
) -> int:
    entry = tags.get(tag)
    if entry is None:
        raise ImageError(path, f"not a readable TIFF: no {name} tag", True)
    if entry.count < 1:
        raise ImageError(path, f"not a readable TIFF: empty {name} tag", True)
    values = _values(path, fd, size, layout, entry, name, 0, 1)
    return int(values[0])


def _values(
    path: Path, fd: int, size: int, layout: _Layout, entry: _Entry, name: str, start: int, n: int
) -> np.ndarray:
    """Values start..start+n of an integer-typed entry, read where they are stored."""
    dtype = _INTEGER_TYPES.get(entry.type)
    if dtype is None:
        raise ImageError(path, f"not a readable TIFF: {name} has non-integer field type {entry.type}", True)
    itemsize = _TYPE_SIZES[entry.type]
    total = entry.count * itemsize
    if total <= layout.offset_size:  # stored in the entry itself
        return np.frombuffer(entry.field, layout.order + dtype, count=entry.count)[start : start + n]
    at = struct.unpack(layout.order + ("Q" if layout.big else "I"), entry.field)[0]
    if at + total > size:
        raise ImageError(
            path,
            f"not a readable TIFF: its {entry.count} {name} values at offset {at} lie beyond the file ({size} bytes)",
            True,
        )
    raw = os.pread(fd, n * itemsize, at + start * itemsize)
    return np.frombuffer(raw, layout.order + dtype, count=len(raw) // itemsize)


def _data_end(
    path: Path, fd: int, size: int, layout: _Layout, starts: _Entry, sizes: _Entry, what: str
) -> int:
    """The end of the furthest non-empty strip or tile, the arrays read in pieces."""
    end = 0
    for first in range(0, starts.count, _CHUNK_VALUES):
        n = min(_CHUNK_VALUES, starts.count - first)
        offsets = _values(path, fd, size, layout, starts, f"{what} offsets", first, n).astype(np.uint64)
        counts = _values(path, fd, size, layout, sizes, f"{what} byte counts", first, n).astype(np.uint64)
        used = counts > 0
        if used.any():
            end = max(end, int((offsets[used] + counts[used]).max()))
    return end
