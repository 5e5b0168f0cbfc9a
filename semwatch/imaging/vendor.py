"""What a source image says about itself: resolution, the vendor's acquisition fields, and
the tags the output carries (gathered here, by the rules of `semwatch.imaging.metadata`).

Vendor fields are parsed for decisions (the FEI data bar, see databar.py) and for display;
they are not what the output carries: that is every tag as stored, by semwatch.imaging.metadata's
deny-list. Parsing stays here, beside the decoder that found the tags, rather than in
semwatch.imaging.metadata, whose one concern is copying tags into an output unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tifffile
from PIL import Image

from semwatch.imaging.errors import describe
from semwatch.imaging.metadata import CarriedTags, SubIFD, carried_tags, raw_tag_bytes
from semwatch.log import get_logger

log = get_logger(__name__)

_FEI_TAGS = (34682, 34680, 34683)
_ZEISS_TAG = 34118
_INI_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class SourceMetadata:
    """What is carried from the source into the output (rules: semwatch.imaging.metadata).

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


def tiff_metadata(
    path: Path, tf: tifffile.TiffFile, page: Any, data: bytes, *, carry: bool = True
) -> SourceMetadata:
    """The metadata of one page of a TIFF read from the file bytes ``data``; ``carry``:
    gather the tags an output carries too (the trainer's reader writes no output)."""
    tags = page.tags
    carried = carried_tags(path, tf, page, data) if carry else CarriedTags()

    resolution = None
    xres, yres = tags.get(282), tags.get(283)
    if xres is not None and yres is not None:
        resolution = (_rational(xres.value), _rational(yres.value))
        if not all(as_float(value) > 0 for value in resolution):
            # Copied as is, a zero denominator would make every write of this image fail.
            log.warning("tiff resolution ignored", path=str(path), resolution=str(resolution))
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


def pillow_metadata(image: Image.Image) -> SourceMetadata:
    """PNG/JPEG/BMP: the resolution, where the file states one."""
    dpi = image.info.get("dpi")
    if dpi and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        return SourceMetadata(resolution=(float(dpi[0]), float(dpi[1])), resolution_unit=2)
    return SourceMetadata()


def as_float(value: Any) -> float:
    """A resolution value (TIFF rational pair or float) as a float; 0.0 for a zero denominator."""
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _rational(value: Any) -> tuple[int, int] | float:
    if isinstance(value, tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return float(value)


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
        log.warning("zeiss metadata not parsed", path=str(path), error=describe(exc))
        return {}
    if not isinstance(value, dict):
        log.warning("zeiss metadata not parsed", path=str(path), error="not a key/value block")
        return {}
    return dict(value)
