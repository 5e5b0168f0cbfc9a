"""Writing a colorized RGB image: TIFF (the source page's acquisition metadata carried by the
deny-list rule of `semwatch.imaging.metadata`, the provenance in the XMP packet), PNG or JPEG, always
through `semwatch.fsutil.atomic_path`, so a reader never sees a partial output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from semwatch import __version__
from semwatch.fsutil import atomic_path
from semwatch.imaging.metadata import OUTPUT_BYTEORDER, append_sub_ifds, provenance_xmp
from semwatch.imaging.naming import check_format
from semwatch.imaging.vendor import SourceMetadata, as_float

_XMP_TAG = 700
_SOFTWARE_TAG = 305
# Test hook, not a setting: seconds each output waits, encoded in its temporary file but not
# yet renamed, so that a test's kill -9 lands while outputs are being written (the ordering
# "output written before the job is marked done" is otherwise hard to hit). Unset: no wait.
TEST_WRITE_DELAY_ENV = "SEMWATCH_TEST_WRITE_DELAY"


def write_image(
    path: Path,
    rgb: np.ndarray,
    *,
    fmt: str,
    metadata: SourceMetadata | None,
    provenance: Mapping[str, Any],
    jpeg_quality: int = 95,
) -> None:
    """Write an RGB uint8 HxWx3 image atomically (semwatch.fsutil.atomic_path: temporary
    file, fsync, rename, folder fsync).

    The provenance goes into the TIFF's XMP packet (`read_provenance` reads it back), a PNG
    text chunk `semwatch` or the JPEG comment. I/O failures propagate as OSError with their
    errno (ENOSPC: disk full) after the temporary file is removed; a reader never sees a
    partial file under `path`.
    """
    path = Path(path)
    check_format(fmt)
    _check_rgb(path, rgb)
    record = json.dumps(provenance, ensure_ascii=True, separators=(",", ":"))
    metadata = metadata or SourceMetadata()
    with atomic_path(path) as temp, temp.open("r+b") as fh:
        # Readable too: the EXIF/GPS IFDs are patched in after tifffile has written the file.
        _encode(fh, np.ascontiguousarray(rgb), fmt, metadata, record, jpeg_quality)
        _test_write_delay()


def _test_write_delay() -> None:
    delay = os.environ.get(TEST_WRITE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _check_rgb(path: Path, rgb: Any) -> None:
    is_rgb = isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.shape[2:] == (3,)
    if is_rgb and rgb.ndim == 3:
        return
    got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
    raise ValueError(f"{path}: write_image needs an RGB uint8 HxWx3 array, got {got}")


def _encode(
    fh: BinaryIO, rgb: np.ndarray, fmt: str, metadata: SourceMetadata, record: str, quality: int
) -> None:
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


def _encode_tiff(fh: BinaryIO, rgb: np.ndarray, metadata: SourceMetadata, record: str) -> None:
    resolution = metadata.resolution
    xmp = provenance_xmp(record, metadata.xmp)
    extratags = (*metadata.extratags, (_XMP_TAG, 1, len(xmp), xmp, True))
    # The source's Software tag is part of its record and travels in extratags; only an
    # output without one names semwatch (the provenance names it in any case).
    has_software = any(tag[0] == _SOFTWARE_TAG for tag in metadata.extratags)
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
    values = [as_float(value) * per_inch for value in metadata.resolution]
    if not all(value > 0 for value in values):
        return None
    return values[0], values[1]
