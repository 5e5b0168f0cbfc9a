"""Acquisition metadata carried from a source TIFF into its colorized output, and the XMP
packet that holds semwatch's provenance record.

A colorized SEM image is still a measurement, so the rule is a deny-list (DESIGN.md "Input
and output"): every tag of the source page survives unchanged, except the tags that
describe how the SOURCE's pixels are stored or how their values are to be read
(`LAYOUT_TAGS`). The output has pixels of its own (8-bit RGB, uncompressed) whose layout
tifffile writes; carried over, those tags would describe the wrong pixels or point at
nothing. A few tags are carried with care instead of byte for byte:

- ImageDescription (270) is kept. An ImageJ description loses only its layout keys
  (`IMAGEJ_LAYOUT_KEYS`), so unit= and spacing= stay and Fiji opens the output calibrated;
  tifffile's own JSON record loses its "shape"/"axes" (tifffile would reshape the RGB output
  by them); an OME-XML description describes the whole dataset's pixel layout and is not
  carried (a warning says so).
- ImageJ's IJMetadata (50838/50839) is rebuilt without its per-channel display entries
  (Ranges, LUTs); Info, Properties, this page's Label, ROIs, overlays and plots stay.
- The EXIF and GPS IFDs (34665, 34853, and the Interoperability IFD inside EXIF) are read
  entry by entry here. tifffile's writer cannot write them, so `append_sub_ifds` adds them
  to the output after tifffile has written it and points the main IFD at them.
- XMP (700): the source's packet is kept, semwatch's provenance is added to it as a property
  in its own namespace (`provenance_xmp`), where it clobbers nothing.
- Resolution (282, 283, 296) is passed to tifffile's own arguments by the writer.

Only struct, xml and tifffile (no torch). Used by semwatch.imaging alone: its decoder gathers
the carried tags (vendor.py), its writer writes them and the XMP packet (encode.py), and
read_provenance parses the packet back (provenance.py).
"""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO
from xml.sax.saxutils import escape

import tifffile

from semwatch.log import get_logger

log = get_logger(__name__)

# (code, dtype, count, value, writeonce), as tifffile's `extratags`. Byte-sized field types
# hold the stored bytes verbatim; wider numeric types hold their decoded values, re-encoded
# in the output's byte order.
TagTuple = tuple[int, int, int, Any, bool]

# Outputs are written little-endian: the rebuilt IJMetadata blob is byte-order specific.
OUTPUT_BYTEORDER = "<"

# Source tags that describe the source's pixels (their storage, or how their values map to
# gray or colour); the output's pixels are described by what tifffile writes for them.
LAYOUT_TAGS: Mapping[int, str] = MappingProxyType(
    {
        # size, samples, bits, planes
        254: "NewSubfileType",
        255: "SubfileType",
        256: "ImageWidth",
        257: "ImageLength",
        258: "BitsPerSample",
        277: "SamplesPerPixel",
        284: "PlanarConfiguration",
        338: "ExtraSamples",
        339: "SampleFormat",
        32995: "Matteing",
        32996: "DataType",
        32997: "ImageDepth",
        # compression
        259: "Compression",
        266: "FillOrder",
        292: "T4Options",
        293: "T6Options",
        317: "Predictor",
        347: "JPEGTables",
        512: "JPEGProc",
        513: "JPEGInterchangeFormat",
        514: "JPEGInterchangeFormatLength",
        515: "JPEGRestartInterval",
        517: "JPEGLosslessPredictors",
        518: "JPEGPointTransforms",
        519: "JPEGQTables",
        520: "JPEGDCTables",
        521: "JPEGACTables",
        50674: "LercParameters",
        # strips and tiles
        273: "StripOffsets",
        278: "RowsPerStrip",
        279: "StripByteCounts",
        288: "FreeOffsets",
        289: "FreeByteCounts",
        322: "TileWidth",
        323: "TileLength",
        324: "TileOffsets",
        325: "TileByteCounts",
        559: "StripRowCounts",
        32998: "TileDepth",
        # what the sample values mean: photometric, colour map, value ranges, YCbCr, inks,
        # colorimetry and the ICC profile (the output is sRGB, whatever the source was)
        262: "PhotometricInterpretation",
        263: "Threshholding",
        264: "CellWidth",
        265: "CellLength",
        280: "MinSampleValue",
        281: "MaxSampleValue",
        290: "GrayResponseUnit",
        291: "GrayResponseCurve",
        301: "TransferFunction",
        318: "WhitePoint",
        319: "PrimaryChromaticities",
        320: "ColorMap",
        321: "HalftoneHints",
        332: "InkSet",
        333: "InkNames",
        334: "NumberOfInks",
        336: "DotRange",
        340: "SMinSampleValue",
        341: "SMaxSampleValue",
        342: "TransferRange",
        529: "YCbCrCoefficients",
        530: "YCbCrSubSampling",
        531: "YCbCrPositioning",
        532: "ReferenceBlackWhite",
        34675: "InterColorProfile",
        # fax transmission quality
        326: "BadFaxLines",
        327: "CleanFaxData",
        328: "ConsecutiveBadFaxLines",
        # IFD pointers: an offset copied into another file points at garbage (EXIF and GPS
        # are carried as sub-IFDs instead, see SUB_IFD_TAGS)
        330: "SubIFDs",
        400: "GlobalParametersIFD",
        34665: "ExifIFD",
        34853: "GPSIFD",
        40965: "InteroperabilityIFD",
    }
)
# Private tags whose value is an offset to a block elsewhere in the source file (TVIPS's
# header, MetaMorph's UIC and FluoView's MM blocks). Copied as a number it would point into
# the output's pixels, so they are dropped with a warning when they hold such an offset (a
# LONG or IFD scalar); their blocks are instrument records tifffile parses, not tags.
OFFSET_TAGS: Mapping[int, str] = MappingProxyType(
    {
        37706: "TVIPS",
        33628: "UIC1tag",
        33629: "UIC2tag",
        33630: "UIC3tag",
        33631: "UIC4tag",
        34361: "MM_Header",
        34362: "MM_Stamp",
        34386: "MM_UserBlock",
    }
)
_OFFSET_FIELD_TYPES = frozenset({4, 13, 16, 18})
# Carried, but not byte for byte (see the module docstring).
_RESOLUTION_TAGS = frozenset({282, 283, 296})
_DESCRIPTION_TAG = 270
_XMP_TAG = 700
_IJ_TAGS = frozenset({50838, 50839})
SUB_IFD_TAGS: Mapping[int, str] = MappingProxyType({34665: "EXIF", 34853: "GPS"})
# Sub-IFDs that may sit inside a carried sub-IFD (the Interoperability IFD inside EXIF).
_NESTED_IFD_TAGS: Mapping[int, frozenset[int]] = MappingProxyType(
    {34665: frozenset({40965}), 34853: frozenset()}
)
_IFD_NAMES = MappingProxyType({34665: "EXIF", 34853: "GPS", 40965: "Interoperability"})
# A real EXIF IFD has a few dozen entries; more is a damaged file, not metadata.
_MAX_IFD_ENTRIES = 1024

# ImageJ description keys that describe the layout of the source's stack and its display
# (hyperstack dimensions, display range, composite mode); the output is one RGB image.
IMAGEJ_LAYOUT_KEYS = frozenset({"images", "slices", "channels", "frames", "min", "max", "hyperstack", "mode"})
# ImageJ's per-channel display metadata inside IJMetadata (50839).
_IMAGEJ_DISPLAY_ENTRIES = frozenset({"Ranges", "LUTs", "ranges", "luts"})
# tifffile's JSON description: these keys are the array's layout.
_TIFFFILE_LAYOUT_KEYS = frozenset({"shape", "axes"})

# TIFF field type -> struct format of one value. IFD pointers (13, 18) and the BigTIFF-only
# 64-bit types (16, 17) are absent on purpose: a pointer copied into another file points at
# garbage, and classic TIFF outputs cannot hold 64-bit fields.
_TIFF_FIELD_FORMATS = MappingProxyType(
    {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 10: "ii", 11: "f", 12: "d"}
)
_BYTE_FIELD_TYPES = frozenset({1, 2, 6, 7})
_TIFF_LONG, _TIFF_IFD, _TIFF_LONG8, _TIFF_IFD8 = 4, 13, 16, 18

XMP_NAMESPACE = "http://ns.semwatch.org/1.0/"
_XMP_PROPERTY = "provenance"
_RDF_NAMESPACE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_RDF_CLOSE = b"</rdf:RDF>"
# Our rdf:Description, always written in exactly this form, so that colorizing an output
# again replaces its provenance instead of stacking a second one.
_PROVENANCE_BLOCK = (
    '<rdf:Description rdf:about="" xmlns:semwatch="' + XMP_NAMESPACE + '">'
    "<semwatch:" + _XMP_PROPERTY + ">{}</semwatch:" + _XMP_PROPERTY + ">"
    "</rdf:Description>"
)
_OUR_BLOCK = re.compile(
    rb'\s*<rdf:Description rdf:about="" xmlns:semwatch="'
    + re.escape(XMP_NAMESPACE.encode())
    + rb'">.*?</rdf:Description>',
    re.DOTALL,
)
_PACKET_HEAD = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    '<rdf:RDF xmlns:rdf="' + _RDF_NAMESPACE + '">\n'
)
_PACKET_TAIL = '\n</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'


@dataclass(frozen=True)
class SubIFD:
    """A sub-IFD of the source page (EXIF, GPS), carried entry by entry.

    pointer: the tag that points at it in its parent IFD (34665, 34853, 40965).
    pointer_dtype: that tag's field type in the source, LONG (4) or IFD (13).
    entries: TagTuples sorted by code; children: sub-IFDs nested inside this one.
    """

    pointer: int
    pointer_dtype: int
    entries: tuple[TagTuple, ...]
    children: tuple[SubIFD, ...] = ()


@dataclass(frozen=True)
class CarriedTags:
    """What of a source page goes into the output, ready for the writer."""

    extratags: tuple[TagTuple, ...] = ()
    xmp: bytes | None = None  # the source's XMP packet, to which the provenance is added
    sub_ifds: tuple[SubIFD, ...] = ()


# --------------------------------------------------------------------------- reading


def carried_tags(path: Path, tf: tifffile.TiffFile, page: Any, data: bytes) -> CarriedTags:
    """Every tag of `page` (read from the file bytes `data`) that the output carries.

    The page's IFD is read entry by entry here rather than through tifffile's tag objects:
    tifffile drops or reinterprets some entries it has its own reader for (a vendor tag with
    a value small enough to sit inside its entry, EXIF decoded to names without field
    types), and the output must carry what the file holds.
    """
    byteorder, layout = tf.byteorder, _IfdLayout(tf.tiff.offsetsize)
    entries = _raw_entries(data, page.offset, byteorder, layout, max_entries=None)
    if isinstance(entries, str):  # tifffile has read this IFD, so this is not expected
        log.warning("tiff tags not copied", path=str(path), reason=entries)
        entries = []
    extratags: list[TagTuple] = []
    xmp: bytes | None = None
    sub_ifds: list[SubIFD] = []
    for entry in entries:
        code = entry.code
        if code in SUB_IFD_TAGS:
            sub_ifd = _read_sub_ifd(path, entry, data, byteorder, layout)
            if sub_ifd is not None:
                sub_ifds.append(sub_ifd)
            continue
        if code in LAYOUT_TAGS or code in _RESOLUTION_TAGS or code in _IJ_TAGS:
            continue
        if code in OFFSET_TAGS and entry.dtype in _OFFSET_FIELD_TYPES:
            log.warning(
                "tiff tag dropped",
                path=str(path),
                code=code,
                name=OFFSET_TAGS[code],
                reason="its value is an offset into the source file, which would point into the output's pixels",
            )
            continue
        copied = _entry_tag(entry, data, byteorder, layout)
        if copied is None:
            log.warning("tiff tag not copied", path=str(path), code=code, dtype=entry.dtype)
        elif code == _XMP_TAG:
            xmp = _mergeable_xmp(path, copied[3])
        elif code == _DESCRIPTION_TAG:
            extratags.extend(_carried_description(path, copied))
        else:
            extratags.append(copied)
    extratags.extend(_imagej_series_tags(path, tf, page, data))
    return CarriedTags(extratags=tuple(extratags), xmp=xmp, sub_ifds=tuple(sub_ifds))


def raw_tag_bytes(tag: Any, data: bytes, byteorder: str, offsetsize: int) -> bytes:
    """The stored bytes of a tifffile tag's value (shorter than its size if the file is
    truncated). Located from the tag's IFD entry, not from tifffile's `valueoffset`, which
    for the tags tifffile has a reader for is an offset even where the value is inline."""
    layout = _IfdLayout(offsetsize)
    entry = _RawEntry(tag.code, int(tag.dtype), tag.count, tag.offset + 4 + offsetsize)
    return _value_bytes(entry, data, byteorder, layout)


@dataclass(frozen=True)
class _RawEntry:
    """One IFD entry as stored: field_at is the file position of its value field."""

    code: int
    dtype: int
    count: int
    field_at: int


def _raw_entries(
    data: bytes, offset: int, byteorder: str, layout: _IfdLayout, max_entries: int | None = _MAX_IFD_ENTRIES
) -> list[_RawEntry] | str:
    """The entries of the IFD at `offset`, or the reason they cannot be read. ``max_entries``
    bounds a sub-IFD (EXIF, GPS); the page's own IFD, which tifffile has read, has none."""
    if not 8 <= offset <= len(data) - layout.count_size:
        return f"IFD offset {offset} outside the file"
    (count,) = struct.unpack(byteorder + layout.count_format, data[offset : offset + layout.count_size])
    table = offset + layout.count_size
    if max_entries is not None and count > max_entries:
        return f"{count} IFD entries, more than the {max_entries} a real one has (a damaged file?)"
    if table + count * layout.entry_size > len(data):
        return f"{count} IFD entries do not fit in the file"
    entries = []
    for index in range(count):
        start = table + index * layout.entry_size
        code, dtype, value_count = struct.unpack(
            byteorder + "HH" + layout.offset_format, data[start : start + 4 + layout.offset_size]
        )
        entries.append(_RawEntry(code, dtype, value_count, start + 4 + layout.offset_size))
    return entries


def _value_bytes(entry: _RawEntry, data: bytes, byteorder: str, layout: _IfdLayout) -> bytes:
    """The entry's value: inside its value field, or where that field points."""
    size = struct.calcsize("<" + _TIFF_FIELD_FORMATS[entry.dtype]) * entry.count
    if size <= layout.offset_size:
        return data[entry.field_at : entry.field_at + size]
    (value_at,) = struct.unpack(
        byteorder + layout.offset_format, data[entry.field_at : entry.field_at + layout.offset_size]
    )
    return data[value_at : value_at + size]


def _entry_tag(entry: _RawEntry, data: bytes, byteorder: str, layout: _IfdLayout) -> TagTuple | None:
    """The entry as a TagTuple for the output, None for field types it cannot carry."""
    if entry.dtype not in _TIFF_FIELD_FORMATS:
        return None
    raw = _value_bytes(entry, data, byteorder, layout)
    value = _decode_value(entry.dtype, entry.count, raw, byteorder)
    return None if value is None else (entry.code, entry.dtype, entry.count, value, True)


def _decode_value(dtype: int, count: int, raw: bytes, byteorder: str) -> Any:
    """Bytes for byte-sized types, else the tuple of values; None if `raw` is short."""
    fmt = _TIFF_FIELD_FORMATS[dtype]
    if len(raw) != struct.calcsize("<" + fmt) * count:
        return None  # value runs past the end of the file
    if dtype in _BYTE_FIELD_TYPES:
        return raw
    return struct.unpack(f"{byteorder}{count * len(fmt)}{fmt[0]}", raw)


def _carried_description(path: Path, tag: TagTuple) -> tuple[TagTuple, ...]:
    """The ImageDescription as the output carries it: () when it is layout only."""
    code, dtype, _count, raw, writeonce = tag
    text = raw.rstrip(b"\x00")  # NUL padding (tifffile reserves room for rewrites) is not text
    kind = _description_kind(text)
    if kind == "imagej":
        text = _without_imagej_layout(text)
    elif kind == "tifffile":
        text = _without_tifffile_layout(text)
    elif kind == "ome":
        # The OME-XML's Pixels element describes the source dataset (sizes, type, planes,
        # often of several files); read against an RGB output it would be wrong.
        log.warning(
            "ome-xml description not carried",
            path=str(path),
            reason="OME-XML describes the source's pixel layout",
        )
        return ()
    if not text:
        return ()
    return ((code, dtype, len(text), text, writeonce),)


def _description_kind(text: bytes) -> str:
    if text.startswith((b"ImageJ=", b"SCIFIO=")):
        return "imagej"
    if (text.startswith(b"{") and b'"shape":' in text) or text.startswith(b"shape=("):
        return "tifffile"  # the forms tifffile itself recognizes as its shape record
    if text.rstrip().endswith(b"OME>") and b"<OME" in text:
        return "ome"
    return "other"


def _without_imagej_layout(text: bytes) -> bytes:
    """ImageJ's key=value lines minus IMAGEJ_LAYOUT_KEYS; every other line byte for byte."""
    kept = [
        line
        for line in text.split(b"\n")
        if line.partition(b"=")[0].strip().decode("latin-1") not in IMAGEJ_LAYOUT_KEYS
    ]
    return b"\n".join(kept)


def _without_tifffile_layout(text: bytes) -> bytes:
    """tifffile's JSON record without its shape; b"" when nothing else is in it."""
    try:
        record = json.loads(text)
    except ValueError:
        return b""  # "shape=(...)", tifffile's pre-JSON form: nothing but the shape
    if not isinstance(record, dict):
        return b""
    rest = {key: value for key, value in record.items() if key not in _TIFFFILE_LAYOUT_KEYS}
    if not rest:
        return b""
    encoded = json.dumps(rest, ensure_ascii=True)
    if '"shape":' in encoded:
        # A nested "shape" would make tifffile take the description for its own record
        # again; ' :' is the same JSON to every parser and is not mistaken.
        encoded = json.dumps(rest, ensure_ascii=True, separators=(", ", " : "))
    return encoded.encode("ascii")


def _imagej_series_tags(path: Path, tf: tifffile.TiffFile, page: Any, data: bytes) -> tuple[TagTuple, ...]:
    """ImageJ keeps its description and IJMetadata on the first page only, for the whole
    stack: a later page that is colorized carries them from there."""
    first = tf.pages[0]
    if page.index == 0 or not first.is_imagej:
        return _imagej_metadata_tags(path, page, page.index)
    description = first.tags.get(_DESCRIPTION_TAG)
    tags: tuple[TagTuple, ...] = ()
    if description is not None and _DESCRIPTION_TAG not in page.tags:
        raw = raw_tag_bytes(description, data, tf.byteorder, tf.tiff.offsetsize)
        tags = _carried_description(path, (_DESCRIPTION_TAG, 2, len(raw), raw, True))
    return tags + _imagej_metadata_tags(path, first, page.index)


def _imagej_metadata_tags(path: Path, page: Any, index: int) -> tuple[TagTuple, ...]:
    """IJMetadata without the display entries, re-encoded for the output; `index` is the
    colorized page's, whose label is kept."""
    tag = page.tags.get(50839)
    if tag is None:
        return ()
    try:
        value = tag.value
    except Exception as exc:  # noqa: BLE001 - a damaged ImageJ blob must not fail the image
        log.warning("imagej metadata not carried", path=str(path), error=str(exc))
        return ()
    if not isinstance(value, dict):
        log.warning(
            "imagej metadata not carried", path=str(path), error="tifffile could not parse IJMetadata"
        )
        return ()
    kept = {key: item for key, item in value.items() if key not in _IMAGEJ_DISPLAY_ENTRIES}
    labels = kept.pop("Labels", None)
    if isinstance(labels, (list, tuple)) and index < len(labels):
        kept["Labels"] = [labels[index]]
    if not kept:
        return ()
    try:
        return tuple(tifffile.imagej_metadata_tag(kept, OUTPUT_BYTEORDER))
    except Exception as exc:  # noqa: BLE001 - entries tifffile cannot re-encode
        log.warning("imagej metadata not carried", path=str(path), error=str(exc))
        return ()


def _read_sub_ifd(
    path: Path, pointer: _RawEntry, data: bytes, byteorder: str, layout: _IfdLayout
) -> SubIFD | None:
    """The sub-IFD `pointer` points at, with the sub-IFDs nested in it; None (logged) when it
    cannot be read."""
    name = _IFD_NAMES[pointer.code]
    fmt = {_TIFF_LONG: "I", _TIFF_IFD: "I", _TIFF_LONG8: "Q", _TIFF_IFD8: "Q"}.get(pointer.dtype)
    if fmt is None or pointer.count != 1:
        log.warning(
            "tiff sub-ifd not copied",
            path=str(path),
            ifd=name,
            reason=f"pointer of type {pointer.dtype}, count {pointer.count}",
        )
        return None
    (offset,) = struct.unpack(
        byteorder + fmt, data[pointer.field_at : pointer.field_at + struct.calcsize(fmt)]
    )
    entries = _raw_entries(data, offset, byteorder, layout)
    if isinstance(entries, str):
        log.warning("tiff sub-ifd not copied", path=str(path), ifd=name, reason=entries)
        return None
    tags: list[TagTuple] = []
    children: list[SubIFD] = []
    stale = sorted(entry.code for entry in entries if _stale_in_sub_ifd(pointer.code, entry.code))
    if stale:
        # A pointer at the main IFD (or a damaged sub-IFD): its strip offsets and pointers
        # would be copied as numbers that mean nothing in the output.
        log.warning("tiff sub-ifd tags dropped", path=str(path), ifd=name, codes=stale, reason="pixel layout")
    for entry in entries:
        if entry.code in stale:
            continue
        if entry.code in _NESTED_IFD_TAGS.get(pointer.code, ()):
            child = _read_sub_ifd(path, entry, data, byteorder, layout)
            if child is not None:
                children.append(child)
            continue
        copied = _entry_tag(entry, data, byteorder, layout)
        if copied is None:
            log.warning("tiff tag not copied", path=str(path), ifd=name, code=entry.code, dtype=entry.dtype)
        else:
            tags.append(copied)
    tags.sort(key=lambda tag: tag[0])
    pointer_dtype = _TIFF_IFD if pointer.dtype in (_TIFF_IFD, _TIFF_IFD8) else _TIFF_LONG
    return SubIFD(pointer.code, pointer_dtype, tuple(tags), tuple(children))


def _stale_in_sub_ifd(pointer: int, code: int) -> bool:
    """A tag that has no place in an EXIF or GPS IFD: the page's pixel layout, an IFD
    pointer other than the ones nested there, an offset-valued private tag."""
    if code in _NESTED_IFD_TAGS.get(pointer, ()):
        return False
    return code in LAYOUT_TAGS or code in OFFSET_TAGS


def _mergeable_xmp(path: Path, packet: bytes) -> bytes | None:
    """The source's XMP packet without any earlier semwatch provenance, or None (with a
    warning) when semwatch's property cannot be added to it."""
    packet = _OUR_BLOCK.sub(b"", packet.rstrip(b"\x00"))
    reason = None
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        reason = "declares a DTD or entities (XMP forbids both)"
    elif packet.count(_RDF_CLOSE) != 1:
        reason = "no single rdf:RDF element"
    else:
        try:
            ET.fromstring(packet)
        except ET.ParseError as exc:
            reason = f"not well-formed XML: {exc}"
    if reason is None:
        return packet
    log.warning("source xmp not carried", path=str(path), reason=reason)
    return None


# --------------------------------------------------------------------------- writing


def provenance_xmp(provenance_json: str, source_xmp: bytes | None = None) -> bytes:
    """An XMP packet holding the provenance JSON as `semwatch:provenance` (exiftool shows it
    as XMP-semwatch:Provenance): the source's packet with it added, or a packet of its own."""
    block = _PROVENANCE_BLOCK.format(escape(provenance_json)).encode("utf-8")
    if source_xmp is not None:
        head, close, tail = source_xmp.rpartition(_RDF_CLOSE)
        return head + block + b"\n" + close + tail
    return (_PACKET_HEAD + block.decode("utf-8") + _PACKET_TAIL).encode("utf-8")


def append_sub_ifds(fh: BinaryIO, sub_ifds: Sequence[SubIFD]) -> None:
    """Add the sub-IFDs to a single-image TIFF that tifffile has just written.

    tifffile's writer refuses EXIF and GPS pointer tags, so the sub-IFDs are appended to the
    file, followed by a copy of the main IFD with their pointers added (entries stay sorted),
    and the header is pointed at that copy. Every other entry's value stays where tifffile
    put it; the superseded main IFD is a few hundred unused bytes. `fh` must be open for
    reading and writing.
    """
    if not sub_ifds:
        return
    fh.seek(0)
    header = fh.read(16)
    byteorder = {b"II": "<", b"MM": ">"}[header[:2]]
    (version,) = struct.unpack(byteorder + "H", header[2:4])
    layout = _IfdLayout(8 if version == 43 else 4)
    first_at = 8 if version == 43 else 4  # where the header holds the main IFD's offset
    (ifd_at,) = struct.unpack(
        byteorder + layout.offset_format, header[first_at : first_at + layout.offset_size]
    )
    rows, next_ifd = _read_entries(fh, ifd_at, byteorder, layout)
    pointers = {sub.pointer for sub in sub_ifds}
    rows = [(code, row) for code, row in rows if code not in pointers]
    for sub in sub_ifds:
        at = _aligned_end(fh)
        fh.write(_ifd_bytes(sub, at, byteorder, layout))
        field = struct.pack(byteorder + layout.offset_format, at)
        dtype = _pointer_dtype(sub, layout.offset_size == 8)
        rows.append((sub.pointer, _entry(sub.pointer, dtype, 1, field, byteorder, layout)))
    rows.sort(key=lambda row: row[0])
    at = _aligned_end(fh)
    fh.write(struct.pack(byteorder + layout.count_format, len(rows)))
    fh.write(b"".join(row for _code, row in rows))
    fh.write(next_ifd)
    fh.seek(first_at)
    fh.write(struct.pack(byteorder + layout.offset_format, at))
    fh.seek(0, 2)


@dataclass(frozen=True)
class _IfdLayout:
    """Sizes of IFD fields in classic (offset_size 4) or BigTIFF (8) files."""

    offset_size: int

    @property
    def offset_format(self) -> str:
        return "Q" if self.offset_size == 8 else "I"

    @property
    def count_format(self) -> str:
        return "Q" if self.offset_size == 8 else "H"

    @property
    def count_size(self) -> int:
        return 8 if self.offset_size == 8 else 2

    @property
    def entry_size(self) -> int:
        return 4 + 2 * self.offset_size


def _pointer_dtype(sub: SubIFD, bigtiff: bool) -> int:
    if bigtiff:
        return _TIFF_IFD8 if sub.pointer_dtype == _TIFF_IFD else _TIFF_LONG8
    return sub.pointer_dtype


def _read_entries(
    fh: BinaryIO, offset: int, byteorder: str, layout: _IfdLayout
) -> tuple[list[tuple[int, bytes]], bytes]:
    """An IFD's entries as (code, raw entry bytes), and its raw next-IFD field."""
    fh.seek(offset)
    (count,) = struct.unpack(byteorder + layout.count_format, fh.read(layout.count_size))
    table = fh.read(count * layout.entry_size)
    rows = []
    for index in range(count):
        row = table[index * layout.entry_size : (index + 1) * layout.entry_size]
        (code,) = struct.unpack(byteorder + "H", row[:2])
        rows.append((code, row))
    return rows, fh.read(layout.offset_size)


def _aligned_end(fh: BinaryIO) -> int:
    # TIFF wants IFDs (and values) on word boundaries.
    end = fh.seek(0, 2)
    if end % 2:
        fh.write(b"\x00")
        end += 1
    return end


def _ifd_bytes(sub: SubIFD, at: int, byteorder: str, layout: _IfdLayout) -> bytes:
    """One IFD placed at file offset `at`: entry table, then values, then nested IFDs."""
    count = len(sub.entries) + len(sub.children)
    table_size = layout.count_size + count * layout.entry_size + layout.offset_size
    values = bytearray()
    rows: list[tuple[int, bytes]] = []  # (code, entry bytes)
    for code, dtype, value_count, value, _writeonce in sub.entries:
        encoded = _encode_value(dtype, value_count, value, byteorder)
        if len(encoded) <= layout.offset_size:
            field = encoded.ljust(layout.offset_size, b"\x00")
        else:
            if len(values) % 2:
                values += b"\x00"
            field = struct.pack(byteorder + layout.offset_format, at + table_size + len(values))
            values += encoded
        rows.append((code, _entry(code, dtype, value_count, field, byteorder, layout)))
    for child in sub.children:
        if len(values) % 2:
            values += b"\x00"
        child_at = at + table_size + len(values)
        values += _ifd_bytes(child, child_at, byteorder, layout)
        field = struct.pack(byteorder + layout.offset_format, child_at)
        dtype = _pointer_dtype(child, layout.offset_size == 8)
        rows.append((child.pointer, _entry(child.pointer, dtype, 1, field, byteorder, layout)))
    rows.sort(key=lambda row: row[0])
    table = struct.pack(byteorder + layout.count_format, count)
    table += b"".join(row for _code, row in rows)
    table += bytes(layout.offset_size)  # no next IFD
    return table + bytes(values)


def _entry(code: int, dtype: int, count: int, field: bytes, byteorder: str, layout: _IfdLayout) -> bytes:
    return struct.pack(byteorder + "HH" + layout.offset_format, code, dtype, count) + field


def _encode_value(dtype: int, count: int, value: Any, byteorder: str) -> bytes:
    if dtype in _BYTE_FIELD_TYPES:
        return bytes(value)
    fmt = _TIFF_FIELD_FORMATS[dtype]
    return struct.pack(f"{byteorder}{count * len(fmt)}{fmt[0]}", *value)


# --------------------------------------------------------------------------- provenance


def provenance_from_xmp(packet: bytes | str) -> dict | None:
    """The provenance record in an XMP packet (element or attribute form), else None.

    Raises ValueError when the packet is not XML or the property is not a JSON object.
    """
    try:
        root = ET.fromstring(packet)
    except ET.ParseError as exc:
        raise ValueError(f"XMP packet is not well-formed XML: {exc}") from exc
    qualified = f"{{{XMP_NAMESPACE}}}{_XMP_PROPERTY}"
    texts = [element.text or "" for element in root.iter(qualified)]
    for description in root.iter(f"{{{_RDF_NAMESPACE}}}Description"):
        if description.get(qualified) is not None:  # the attribute form of the property
            texts.append(description.get(qualified))
    if not texts:
        return None
    record = json.loads(texts[0])
    if not isinstance(record, dict):
        raise ValueError("semwatch:provenance is not a JSON object")
    return record


def provenance_from_json(text: str | bytes | None) -> dict | None:
    """A provenance record stored as plain JSON (PNG text chunk, JPEG comment, and the
    ImageDescription of TIFF outputs written before the XMP packet), else None."""
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None  # some other description: not ours
    return record if isinstance(record, dict) and "semwatch" in record else None
