"""Acquisition metadata through colorization (semwatch.imaging.metadata via read_image/write_image).

Sources are written with tifffile (with Pillow where tifffile cannot: EXIF and GPS IFDs),
outputs are read back with tifffile, Pillow and, where installed, exiftool: every tag of the
source page except its pixel layout survives, and the provenance round-trips.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import cannot_run
from PIL import Image, TiffImagePlugin
from structlog.testing import capture_logs

import semwatch
from semwatch.imaging import build_provenance, read_image, read_provenance, write_image
from semwatch.imaging.metadata import (
    IMAGEJ_LAYOUT_KEYS,
    XMP_NAMESPACE,
    append_sub_ifds,
    provenance_from_xmp,
)

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.usefixtures("exiftool")


@pytest.fixture
def exiftool() -> str:
    """exiftool's path: the second, independent reader of the carried tags; cannot_run without it."""
    if EXIFTOOL is None:
        cannot_run("exiftool not installed (Debian: apt-get install libimage-exiftool-perl)")
    return EXIFTOOL


FEI_TEXT = (
    b"[User]\r\nDate=05/06/2024\r\nUser=supervisor\r\n[Image]\r\nResolutionY=48\r\n"
    b"[PrivateFei]\r\nDatabarHeight=0\r\n\x00"
)
ZEISS_TEXT = b"\r\n0\r\nAP_PIXEL_SIZE\r\nPixel Size = 2.6 nm\r\nDP_DETECTOR_TYPE\r\nSE2\r\n\x00"
HAMAMATSU_DESCRIPTION = (
    b"[Application]\r\nName = HCImage\r\nVersion = 4.4.1.2\r\n"
    b"[Camera]\r\nExposure = 0.0125 s\r\nBinning = 2x2\r\n"
)
# Tags every instrument record of the issue carries: (code, dtype, count, value).
RECORD_TAGS = [
    (271, 2, 0, "Hitachi High-Tech"),  # Make
    (272, 2, 0, "SU8230"),  # Model
    (306, 2, 0, "2024:05:06 07:08:09"),  # DateTime
    (315, 2, 0, "Dr. A. Microscopist"),  # Artist
    (274, 3, 1, 6),  # Orientation
    (286, 5, 1, (3, 2)),  # XPosition
    (287, 5, 1, (5, 4)),  # YPosition
    (37706, 4, 1, 7),  # TVIPS: an offset to a header block, dropped (see OFFSET_DROPPED)
    (37707, 1, 5, b"\x01\x02\x03\x04\x05"),
    (50431, 7, 9, b"TESCAN\x00\x01\x02"),  # TESCAN
    (34682, 2, len(FEI_TEXT), FEI_TEXT),  # FEI_HELIOS
    (34680, 2, len(FEI_TEXT), FEI_TEXT),  # FEI_SFEG
    (34683, 2, len(FEI_TEXT), FEI_TEXT),  # FEI/Thermo, the README's third
    (34118, 2, len(ZEISS_TEXT), ZEISS_TEXT),  # CZ_SEM
    (65010, 3, 3, (1, 2, 65535)),  # a reusable private tag
    (42016, 2, 0, "0123456789abcdef"),  # ImageUniqueID
]
# What must come through, written out here rather than computed from the code's LAYOUT_TAGS
# (a tag wrongly added to the deny-list would drop out of both sides of such a check): every
# tag RECORD_TAGS and test_every_tag_and_description_line_survives put in the source, which
# covers the README's FEI/Thermo (34682, 34680, 34683), Zeiss (34118), TESCAN (50431), TVIPS
# (37706/37707), XPosition/YPosition, Make, Model, DateTime, Artist and Software.
MUST_CARRY = frozenset(
    {
        270,
        271,
        272,
        274,
        286,
        287,
        305,
        306,
        315,
        34118,
        34680,
        34682,
        34683,
        37707,
        42016,
        50431,
        65010,
    }
)
# Tags whose value is an offset into the source file (TVIPS): dropped with a warning, since
# copied as a number they would point into the output's pixels.
OFFSET_DROPPED = frozenset({37706})
# Carried too, but through the writer's resolution arguments rather than byte for byte.
RESOLUTION_TAGS = frozenset({282, 283, 296})
# How tifffile stored the source's 8-bit gray strips: the only tags that may stay behind.
SOURCE_LAYOUT = frozenset({256, 257, 258, 259, 262, 273, 277, 278, 279})


def gray(height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 230, (height, width), dtype=np.uint8)


def colorize(source: Path, out: Path, page: int = 0) -> Path:
    """What the pipeline does with a source's metadata: decode, write an RGB output."""
    image = read_image(source, page=page)
    provenance = build_provenance(
        image,
        source_path=source.name,
        model_name="tiny",
        model_sha256="ab" * 32,
        backend="eager",
        device="cpu",
        chroma_size=512,
    )
    write_image(out, np.dstack([image.gray] * 3), fmt="tiff", metadata=image.metadata, provenance=provenance)
    return out


def raw_ifd(path: Path) -> dict[int, list[tuple[int, int, object]]]:
    """The first IFD of a classic TIFF as stored: code -> [(dtype, count, value)], bytes for
    byte-sized types, else the decoded numbers. Parsed here, independently of tifffile's
    tag objects (which skip entries tifffile cannot interpret)."""
    data = path.read_bytes()
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    sizes = {
        1: "B",
        2: "s",
        3: "H",
        4: "I",
        5: "II",
        6: "b",
        7: "B",
        8: "h",
        9: "i",
        10: "ii",
        11: "f",
        12: "d",
        13: "I",
    }
    ifd: dict[int, list[tuple[int, int, object]]] = {}
    for index in range(count):
        at = offset + 2 + 12 * index
        code, dtype, n = struct.unpack(order + "HHI", data[at : at + 8])
        fmt = sizes[dtype]
        size = struct.calcsize("<" + fmt) * n
        where = at + 8 if size <= 4 else struct.unpack(order + "I", data[at + 8 : at + 12])[0]
        raw = data[where : where + size]
        if dtype not in (1, 2, 6, 7):
            raw = struct.unpack(f"{order}{n * len(fmt)}{fmt[0]}", raw)
        value = raw
        ifd.setdefault(code, []).append((dtype, n, value))
    return ifd


def tag_codes(path: Path) -> list[int]:
    return list(raw_ifd(path))


def exiftool_json(path: Path) -> dict:
    result = subprocess.run(
        [EXIFTOOL, "-j", "-a", "-G1", "-n", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)[0]


# --------------------------------------------------------------------------- the deny-list


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_every_tag_and_description_line_survives(tmp_path: Path, byteorder: str) -> None:
    source = tmp_path / "sem.tif"
    tifffile.imwrite(
        source,
        gray(),
        byteorder=byteorder,
        description=HAMAMATSU_DESCRIPTION,
        software="HCImage 4.4",
        metadata=None,
        resolution=((1000, 1), (1000, 1)),
        resolutionunit=3,
        extratags=[(*tag, True) for tag in RECORD_TAGS],
    )
    out = colorize(source, tmp_path / "out" / "sem.tif")

    before, after = raw_ifd(source), raw_ifd(out)
    # the lists cover the source
    assert set(before) == MUST_CARRY | RESOLUTION_TAGS | SOURCE_LAYOUT | OFFSET_DROPPED
    assert not MUST_CARRY - set(after), "dropped: " + ", ".join(map(str, sorted(MUST_CARRY - set(after))))
    assert not OFFSET_DROPPED & set(after), "a dangling offset was copied"
    for code in MUST_CARRY:
        if code == 270:  # the NUL padding at its end is not part of the text
            assert [(d, v.rstrip(b"\0")) for d, _n, v in after[code]] == [
                (d, v.rstrip(b"\0")) for d, _n, v in before[code]
            ]
        else:
            assert after[code] == before[code], code
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        assert page.shape == (64, 80, 3) and page.photometric == 2
        assert page.tags[270].value == HAMAMATSU_DESCRIPTION.decode().rstrip()
        assert page.tags[305].value == "HCImage 4.4"  # the source's Software, not ours
        assert page.tags[274].value == 6
        assert page.tags[282].value == (1000, 1) and page.tags[296].value == 3
    record = read_provenance(out)["semwatch"]
    assert record["source"]["sha256"] == read_image(source).sha256
    assert record["version"] == semwatch.__version__


def test_layout_tags_stay_behind(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    source = tmp_path / "palette.tif"
    tifffile.imwrite(
        source,
        gray(),
        photometric="palette",
        colormap=ramp,
        compression="zlib",
        predictor=True,
        tile=(32, 32),
        subfiletype=0,
        metadata=None,
        extratags=[(280, 3, 1, 20, True), (281, 3, 1, 229, True), (34675, 7, 4, b"icc!", True)],
    )
    out = colorize(source, tmp_path / "out.tif")
    codes = set(tag_codes(out))
    assert not codes & {254, 280, 281, 317, 320, 322, 323, 324, 325, 34675}
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        assert page.compression == 1 and page.photometric == 2 and page.bitspersample == 8
        assert np.array_equal(page.asarray()[..., 0], read_image(source).gray)
    assert read_image(out).gray.shape == (64, 80)


def test_private_tags_holding_an_offset_are_dropped_with_a_warning(tmp_path: Path) -> None:
    """TVIPS (37706) is a LONG offset to a header block: copied as the number, it pointed
    into the output's pixels and tifffile read garbage there."""
    source = tmp_path / "tvips.tif"
    tifffile.imwrite(
        source, gray(), metadata=None, extratags=[(37706, 4, 1, 8, True), (65010, 4, 1, 8, True)]
    )
    with capture_logs() as logs:
        out = colorize(source, tmp_path / "out.tif")
    codes = set(tag_codes(out))
    assert 37706 not in codes and 65010 in codes  # a plain private number stays
    dropped = [e for e in logs if e["event"] == "tiff tag dropped"]
    assert [(e["code"], e["name"], e["log_level"]) for e in dropped] == [(37706, "TVIPS", "warning")]


def test_a_page_with_more_than_1024_tags_keeps_them(tmp_path: Path) -> None:
    """All were dropped with a wrong reason ("do not fit in the file")."""
    source = tmp_path / "many.tif"
    private = [(60000 + i, 3, 1, i, True) for i in range(1100)]
    tifffile.imwrite(source, gray(), metadata=None, extratags=private)
    with capture_logs() as logs:
        out = colorize(source, tmp_path / "out.tif")
    assert {60000 + i for i in range(1100)} <= set(tag_codes(out))
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_an_exif_pointer_at_the_main_ifd_copies_no_strip_offsets(tmp_path: Path) -> None:
    """EXIF pointing at the main IFD copied its stale strip offsets into the output's EXIF."""
    source = tmp_path / "loop.tif"
    tifffile.imwrite(
        source, gray(), metadata=None, extratags=[(34666, 4, 1, 0, True), (271, 2, 0, "Hitachi", True)]
    )
    data = bytearray(source.read_bytes())
    (main,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[main : main + 2])
    for index in range(count):  # the private tag becomes an EXIF pointer at the main IFD
        at = main + 2 + 12 * index
        if struct.unpack("<H", data[at : at + 2])[0] == 34666:
            data[at : at + 2] = struct.pack("<H", 34665)
            data[at + 8 : at + 12] = struct.pack("<I", main)
    source.write_bytes(bytes(data))
    with capture_logs() as logs:
        out = colorize(source, tmp_path / "out.tif")
    with tifffile.TiffFile(out) as tf:
        exif = tf.pages[0].tags["ExifTag"].value
        assert not {"StripOffsets", "StripByteCounts", "ImageWidth", "ExifTag"} & set(exif), exif
        assert exif.get("Make") == "Hitachi"  # the rest of what it points at is carried
    assert [e["codes"] for e in logs if e["event"] == "tiff sub-ifd tags dropped"]


def test_software_names_semwatch_only_when_the_source_has_none(tmp_path: Path) -> None:
    source = tmp_path / "plain.tif"
    tifffile.imwrite(source, gray(), software=False, metadata=None)
    out = colorize(source, tmp_path / "out.tif")
    with tifffile.TiffFile(out) as tf:
        assert tf.pages[0].tags[305].value == f"semwatch {semwatch.__version__}"


# --------------------------------------------------------------------------- descriptions


def test_imagej_output_opens_with_the_source_calibration(tmp_path: Path) -> None:
    stack = np.stack([gray(seed=seed) for seed in range(3)])
    source = tmp_path / "fiji.tif"
    tifffile.imwrite(
        source,
        stack,
        imagej=True,
        resolution=(1 / 0.0125, 1 / 0.0125),
        metadata={
            "axes": "ZYX",
            "unit": "micron",
            "spacing": 0.25,
            "Info": "AcceleratingVoltage=5 kV\nWD=4.1 mm",
            "Labels": ["z0", "z1", "z2"],
            "Ranges": (0.0, 255.0),
            "min": 0.0,
            "max": 255.0,
        },
    )
    out = colorize(source, tmp_path / "out" / "fiji.tif", page=1)

    with tifffile.TiffFile(source) as src, tifffile.TiffFile(out) as dst:
        before, after = src.imagej_metadata, dst.imagej_metadata
        assert dst.is_imagej
        for key in ("ImageJ", "unit", "spacing", "Info"):
            assert after[key] == before[key], key
        assert after["Labels"] == "z1"  # the label of the colorized page
        assert "Ranges" not in after and not IMAGEJ_LAYOUT_KEYS & set(after)
        for code in (282, 283, 296):
            assert dst.pages[0].tags[code].value == src.pages[0].tags[code].value
        source_lines = src.pages[0].tags[270].value.splitlines()
        kept = [line for line in source_lines if line.split("=")[0] not in IMAGEJ_LAYOUT_KEYS]
        assert dst.pages[0].tags[270].value.splitlines() == kept
        assert dst.series[0].shape == (64, 80, 3)
    assert tifffile.imread(out).shape == (64, 80, 3)


def test_tifffile_shape_record_is_dropped_and_its_metadata_kept(tmp_path: Path) -> None:
    source = tmp_path / "shaped.tif"
    tifffile.imwrite(source, gray(), metadata={"PixelSizeNm": 2.6, "Detector": "SE2"})
    out = colorize(source, tmp_path / "out.tif")
    with tifffile.TiffFile(out) as tf:
        assert json.loads(tf.pages[0].tags[270].value) == {"PixelSizeNm": 2.6, "Detector": "SE2"}
        assert not tf.is_shaped
    assert tifffile.imread(out).shape == (64, 80, 3)

    only_shape = tmp_path / "only-shape.tif"
    tifffile.imwrite(only_shape, gray())  # tifffile's default record: {"shape": [64, 80]}
    assert 270 not in tag_codes(colorize(only_shape, tmp_path / "out2.tif"))


def test_ome_description_is_not_carried(tmp_path: Path) -> None:
    source = tmp_path / "ome.tif"
    tifffile.imwrite(source, gray(), ome=True, metadata={"PhysicalSizeX": 0.5})
    out = colorize(source, tmp_path / "out.tif")
    assert 270 not in tag_codes(out)
    assert tifffile.imread(out).shape == (64, 80, 3)


# --------------------------------------------------------------------------- EXIF and GPS


def pillow_exif_tiff(path: Path) -> Path:
    """A TIFF with EXIF (holding an Interoperability IFD) and GPS IFDs: tifffile's writer
    cannot write sub-IFDs, Pillow's can."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[271] = "JEOL"
    info[272] = "JSM-IT800"
    info[306] = "2024:05:06 07:08:09"
    info[0x8769] = {
        36867: "2024:05:06 07:08:09",  # DateTimeOriginal
        33434: TiffImagePlugin.IFDRational(1, 4),  # ExposureTime
        42033: "SN-4711",  # BodySerialNumber
        37510: b"ASCII\x00\x00\x00accelerating voltage 15 kV",  # UserComment
        0xA005: {1: "R98"},  # Interoperability IFD
    }
    info[0x8825] = {
        0: b"\x02\x03\x00\x00",  # GPSVersionID
        1: "N",
        2: (
            TiffImagePlugin.IFDRational(48, 1),
            TiffImagePlugin.IFDRational(8, 1),
            TiffImagePlugin.IFDRational(61, 2),
        ),
    }
    Image.fromarray(gray()).save(path, tiffinfo=info)
    return path


def test_exif_and_gps_ifds_are_carried(tmp_path: Path) -> None:
    source = pillow_exif_tiff(tmp_path / "jeol.tif")
    out = colorize(source, tmp_path / "out" / "jeol.tif")
    with Image.open(source) as src, Image.open(out) as dst:
        before, after = src.getexif(), dst.getexif()
        for ifd in (0x8769, 0x8825, 0xA005):  # EXIF, GPS, Interoperability inside EXIF
            pointers = (0xA005,)  # offsets differ by nature
            expected = {k: v for k, v in before.get_ifd(ifd).items() if k not in pointers}
            assert (
                expected and {k: v for k, v in after.get_ifd(ifd).items() if k not in pointers} == expected
            ), hex(ifd)
        assert after[271] == "JEOL" and after[306] == "2024:05:06 07:08:09"
    with tifffile.TiffFile(source) as src, tifffile.TiffFile(out) as dst:
        source_exif = dict(src.pages[0].tags[34665].value)
        output_exif = dict(dst.pages[0].tags[34665].value)
        source_exif.pop("InteroperabilityTag"), output_exif.pop("InteroperabilityTag")
        assert output_exif == source_exif
        assert dst.pages[0].tags[34853].value == src.pages[0].tags[34853].value
        assert np.array_equal(dst.pages[0].asarray()[..., 2], read_image(source).gray)
    assert read_provenance(out)["semwatch"]["source"]["path"] == "jeol.tif"


@needs_exiftool
def test_exiftool_reads_the_same_record_and_the_provenance(tmp_path: Path) -> None:
    source = pillow_exif_tiff(tmp_path / "jeol.tif")
    out = colorize(source, tmp_path / "out" / "jeol.tif")
    before, after = exiftool_json(source), exiftool_json(out)
    for key, value in before.items():
        group = key.split(":")[0]
        if group in ("ExifIFD", "GPS", "InteropIFD") or key in ("IFD0:Make", "IFD0:Model", "IFD0:ModifyDate"):
            assert after.get(key) == value, key
    assert json.loads(after["XMP-semwatch:Provenance"]) == read_provenance(out)


def test_damaged_exif_pointer_is_logged_and_the_image_still_written(tmp_path: Path) -> None:
    data = bytearray(pillow_exif_tiff(tmp_path / "jeol.tif").read_bytes())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tf:
        entry = tf.pages[0].tags[34665].offset
    data[entry + 8 : entry + 12] = struct.pack("<I", 10**9)  # points far past the end
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(bytes(data))
    out = colorize(damaged, tmp_path / "out.tif")
    codes = tag_codes(out)
    assert 34665 not in codes and 34853 in codes and 271 in codes


# --------------------------------------------------------------------------- XMP provenance


def test_provenance_joins_the_source_xmp_and_replaces_an_earlier_one(tmp_path: Path) -> None:
    packet = (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        b"<dc:creator><rdf:Seq><rdf:li>Lab 3</rdf:li></rdf:Seq></dc:creator>"
        b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    source = tmp_path / "xmp.tif"
    tifffile.imwrite(source, gray(), metadata=None, extratags=[(700, 1, len(packet), packet, True)])
    first = colorize(source, tmp_path / "first.tif")
    again = colorize(first, tmp_path / "again.tif")  # an output colorized once more

    for out, expected_source in ((first, "xmp.tif"), (again, "first.tif")):
        with tifffile.TiffFile(out) as tf:
            xmp = tf.pages[0].tags[700].value
        assert b"<rdf:li>Lab 3</rdf:li>" in xmp
        assert xmp.count(XMP_NAMESPACE.encode()) == 1
        assert provenance_from_xmp(xmp)["semwatch"]["source"]["path"] == expected_source
        assert read_provenance(out)["semwatch"]["source"]["path"] == expected_source


def test_provenance_json_is_escaped_in_the_xmp(tmp_path: Path) -> None:
    source = tmp_path / "a&b <c>.tif"
    tifffile.imwrite(source, gray(), metadata=None)
    out = colorize(source, tmp_path / "out.tif")
    assert read_provenance(out)["semwatch"]["source"]["path"] == "a&b <c>.tif"


def test_unusable_source_xmp_is_replaced_by_ours(tmp_path: Path) -> None:
    packet = b"<x:xmpmeta><not closed"
    source = tmp_path / "bad-xmp.tif"
    tifffile.imwrite(source, gray(), metadata=None, extratags=[(700, 1, len(packet), packet, True)])
    out = colorize(source, tmp_path / "out.tif")
    assert read_provenance(out)["semwatch"]["source"]["path"] == "bad-xmp.tif"


def test_provenance_of_outputs_written_before_the_xmp_packet(tmp_path: Path) -> None:
    old = tmp_path / "old.tif"
    record = {"semwatch": {"version": "0.0.9", "source": {"shape": [2, 3]}}}
    tifffile.imwrite(
        old,
        np.zeros((2, 3, 3), np.uint8),
        metadata=None,
        description=json.dumps(record, separators=(",", " :")),
    )
    assert read_provenance(old) == record
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, gray(), description="not ours", metadata=None)
    assert read_provenance(plain) is None


def test_sub_ifds_are_appended_to_bigtiff_outputs_too(tmp_path: Path) -> None:
    # tifffile writes BigTIFF for outputs over ~4 GB; the sub-IFDs then need 64-bit offsets.
    sub_ifds = read_image(pillow_exif_tiff(tmp_path / "jeol.tif")).metadata.sub_ifds
    out = tmp_path / "big.tif"
    with out.open("xb+") as fh:
        tifffile.imwrite(fh, np.zeros((8, 8, 3), np.uint8), photometric="rgb", bigtiff=True)
        append_sub_ifds(fh, sub_ifds)
    with tifffile.TiffFile(out) as tf, tifffile.TiffFile(tmp_path / "jeol.tif") as src:
        assert tf.is_bigtiff
        assert tf.pages[0].tags[34853].value == src.pages[0].tags[34853].value
        exif = tf.pages[0].tags[34665].value
        assert exif["BodySerialNumber"] == "SN-4711" and "InteroperabilityTag" in exif
        assert tf.pages[0].asarray().shape == (8, 8, 3)
