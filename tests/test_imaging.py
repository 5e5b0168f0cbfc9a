"""semwatch.imaging on generated files (tmp_path) and on the real SEM samples in ../shared.

Nothing is mocked: files are written with tifffile/Pillow (or byte by byte for malformed
ones), read back from disk, and outputs are re-read with tifffile/Pillow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SEM_REAL
from helpers import bomb_tiff_bytes, png_of_zeros
from PIL import Image

import semwatch
from semwatch.imaging import (
    FORMAT_EXTENSIONS,
    SUPPORTED_SUFFIXES,
    TEMP_PREFIX,
    DecodedImage,
    ImageError,
    ImageTooLarge,
    SourceMetadata,
    Window,
    build_provenance,
    find_databar,
    memory_cap,
    output_name,
    read_header,
    read_image,
    read_provenance,
    sweep_temp_files,
    write_image,
)
from semwatch.imaging.metadata import provenance_from_xmp

REAL = SEM_REAL
needs_real = pytest.mark.usefixtures("sem_real")  # skips here, fails under CI, when absent

# Expected first data-bar rows of the real samples. FEI: [Image] ResolutionY (1024 for the
# Helios RBC file, 442 for the 16-bit ebeam file); pollen: rows 1920-2047 per the data README;
# Zeiss: the black rule that opens the white banner (looked at: row 691 of 768, 350 of 384).
REAL_BARS = {
    "pollen-hibiscus-300x.png": (1920, 0),
    "pollen-1062-550x.png": (1920, 0),
    "fei-helios-rbc.tif": (1024, 0),
    "fei-helios-ebeam-16bit.tif": (442, 0),
    "zeiss-sem-1k.tif": (691, 4),
    "zeiss-sem-512.tif": (350, 3),
}
VENDOR_TAGS = {
    "fei-helios-rbc.tif": 34682,
    "fei-helios-ebeam-16bit.tif": 34682,
    "zeiss-sem-1k.tif": 34118,
    "zeiss-sem-512.tif": 34118,
}
# Every tag of each real file's first page that its output must hold, written out (read off
# the files with tifffile) rather than computed from the code's deny-list, which a wrongly
# denied tag would leave out of both sides: resolution, the vendor record, FEI's EXIF IFD.
REAL_CARRIED = {
    "fei-helios-rbc.tif": {282, 283, 296, 34665, 34682},
    "fei-helios-ebeam-16bit.tif": {282, 283, 296, 34665, 34682},
    "zeiss-sem-1k.tif": {282, 283, 296, 34118},
    "zeiss-sem-512.tif": {282, 283, 296, 34118},
}


# --------------------------------------------------------------------------- helpers


def texture(height: int, width: int, seed: int = 0, noise: float = 6.0) -> np.ndarray:
    """An SEM-like gray texture: smooth blobs plus detector noise, levels 40..210."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(height, width))
    for _ in range(3):  # repeated separable box blur ~ a gaussian
        k = 12
        c = np.cumsum(np.pad(field, ((k, k), (0, 0)), mode="edge"), axis=0)
        field = (c[2 * k :] - c[: -2 * k]) / (2 * k)
        c = np.cumsum(np.pad(field, ((0, 0), (k, k)), mode="edge"), axis=1)
        field = (c[:, 2 * k :] - c[:, : -2 * k]) / (2 * k)
    field = (field - field.min()) / (field.max() - field.min())
    return np.clip(40 + 170 * field + rng.normal(0, noise, field.shape), 0, 255).astype(np.uint8)


def banner(gray: np.ndarray, top: int, background: int, ink: int, seed: int = 0) -> np.ndarray:
    """Paint an instrument-style data bar: a rule, then two lines of glyph-like text."""
    rng = np.random.default_rng(seed)
    height, width = gray.shape
    gray[top:] = background
    gray[top] = ink
    middle = top + 4 + (height - top - 10) // 2
    for y0, y1 in ((top + 4, middle), (middle + 2, height - 3)):
        x = 8
        while x < width - 40:
            for _ in range(rng.integers(3, 9)):
                glyph_width = int(rng.integers(5, 9))
                glyph = rng.random((y1 - y0, glyph_width)) < 0.45
                gray[y0:y1, x : x + glyph_width][glyph] = ink
                x += glyph_width + 2
            x += int(rng.integers(10, 30))
    return gray


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def save_tiff(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.write_bytes(tiff_bytes(array, **kwargs))
    return path


def save_pillow(path: Path, image: Image.Image, fmt: str, **kwargs) -> Path:
    image.save(path, format=fmt, **kwargs)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed-looking PNG whose IHDR claims the given size (8-bit gray)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def raw_tag_bytes(path: Path, code: int) -> bytes:
    """The stored bytes of one tag's value, read straight from the file."""
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[code]
        size = (
            tag.count
            * {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}[int(tag.dtype)]
        )
        tf.filehandle.seek(tag.valueoffset)
        return tf.filehandle.read(size)


def assert_image_error(exc: ImageError, path: Path, permanent: bool = True) -> None:
    message = str(exc)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "Traceback" not in message, message
    assert len(message) < len(str(path)) + 230, message
    assert exc.permanent is permanent, message
    assert exc.path == path


def provenance_for(image: DecodedImage) -> dict:
    return build_provenance(
        image,
        source_path="in/" + image.path.name,
        model_name="tiny",
        model_sha256="ab" * 32,
        backend="eager",
        device="cpu",
        chroma_size=512,
    )


# --------------------------------------------------------------------------- TIFF round trips


def test_8bit_gray_tiff_round_trip(tmp_path: Path) -> None:
    gray = texture(96, 128)
    path = save_tiff(tmp_path / "a.tif", gray, resolution=(300, 300), resolutionunit=2)
    image = read_image(path)
    assert image.gray.dtype == np.uint8 and image.gray.flags.c_contiguous
    assert np.array_equal(image.gray, gray)
    assert image.window is None and image.warnings == ()
    assert image.source_shape == (96, 128) and image.source_dtype == "uint8"
    data = path.read_bytes()
    assert image.sha256 == hashlib.sha256(data).hexdigest() and image.size == len(data)
    assert image.metadata.resolution == ((300, 1), (300, 1)) and image.metadata.resolution_unit == 2
    assert image.databar_row is None
    assert read_header(path) == (96, 128)


def test_16bit_tiff_is_windowed_by_percentiles_and_recorded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(10_000, 20_000, size=(120, 160)).astype(np.uint16)
    values[0, :5] = [0, 65535, 0, 65535, 0]  # outliers must not set the window
    image = read_image(save_tiff(tmp_path / "w.tif", values))
    window = image.window
    assert isinstance(window, Window) and window.method == "percentile 0.1/99.9"
    assert 10_000 <= window.low < 10_100 and 19_900 < window.high <= 20_000
    expected = np.clip((values - window.low) * 255 / (window.high - window.low) + 0.5, 0, 255)
    assert np.abs(image.gray.astype(int) - expected.astype(np.uint8)).max() <= 1
    assert image.gray.min() == 0 and image.gray.max() == 255
    assert image.source_dtype == "uint16"
    assert window.as_dict() == {"low": window.low, "high": window.high, "method": window.method}


def test_16bit_fei_window_ignores_the_data_bar(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = rng.integers(1_000, 2_000, size=(60, 80)).astype(np.uint16)
    values[40:] = 0
    values[45:50, 10:70] = 65535  # the bar's white text
    fei_text = b"[Image]\r\nResolutionX=80\r\nResolutionY=40\r\n\x00"
    path = save_tiff(tmp_path / "fei16.tif", values, extratags=[(34682, 2, len(fei_text), fei_text, True)])
    image = read_image(path)
    assert image.databar_row == 40
    assert image.window.method == "percentile 0.1/99.9 of rows 0-39"
    assert image.window.high < 2_000  # not stretched to the text's 65535
    assert image.gray[:40].max() == 255 and image.gray[:40].min() == 0


def test_float32_tiff_is_windowed_and_nan_is_black(tmp_path: Path) -> None:
    values = np.linspace(-1.0, 1.0, 64 * 80, dtype=np.float32).reshape(64, 80)
    values[3, 3] = np.nan
    image = read_image(save_tiff(tmp_path / "f.tif", values))
    assert image.source_dtype == "float32" and image.window is not None
    assert image.gray[3, 3] == 0
    assert image.gray[0, 0] == 0 and image.gray[-1, -1] == 255
    assert np.all(np.diff(image.gray[10].astype(int)) >= 0)  # monotone mapping


def test_constant_16bit_image_does_not_divide_by_zero(tmp_path: Path) -> None:
    image = read_image(save_tiff(tmp_path / "c.tif", np.full((40, 50), 1234, np.uint16)))
    assert image.window is not None and image.window.high > image.window.low
    assert image.gray.shape == (40, 50) and len(np.unique(image.gray)) == 1


def test_palette_tiff_gray_ramp_and_custom_gray_and_colored(tmp_path: Path) -> None:
    indices = texture(64, 64)
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    image = read_image(save_tiff(tmp_path / "p.tif", indices, photometric="palette", colormap=ramp))
    assert np.array_equal(image.gray, indices) and image.warnings == ()

    inverted = ramp[:, ::-1].copy()
    image = read_image(save_tiff(tmp_path / "i.tif", indices, photometric="palette", colormap=inverted))
    assert np.array_equal(image.gray, 255 - indices) and image.warnings == ()

    colored = ramp.copy()
    level = int(indices[5, 5])
    colored[:, level] = (0, 65535, 0)  # pure green, used by at least one pixel
    image = read_image(save_tiff(tmp_path / "c.tif", indices, photometric="palette", colormap=colored))
    assert image.gray[5, 5] == 150  # Rec.601 luma of (0, 255, 0)
    assert any("luminance" in w for w in image.warnings)

    unused = ramp.copy()
    unused[:, 0] = (65535, 0, 0)  # a colored entry no pixel uses: still a gray image
    gray = np.maximum(indices, 1)
    image = read_image(save_tiff(tmp_path / "u.tif", gray, photometric="palette", colormap=unused))
    assert np.array_equal(image.gray, gray) and image.warnings == ()


def test_multipage_tiff_reads_requested_page_with_warning(tmp_path: Path) -> None:
    stack = np.stack([np.full((32, 48), 10 * (k + 1), np.uint8) for k in range(3)])
    path = save_tiff(tmp_path / "s.tif", stack, photometric="minisblack")
    first = read_image(path)
    assert first.gray[0, 0] == 10 and first.source_shape == (3, 32, 48)
    assert "multi-page TIFF: page 0 of 3" in first.warnings
    third = read_image(path, page=2)
    assert third.gray[0, 0] == 30 and "multi-page TIFF: page 2 of 3" in third.warnings
    with pytest.raises(ImageError) as caught:
        read_image(path, page=3)
    assert_image_error(caught.value, path)
    assert "page 3" in caught.value.reason


def test_rgb_tiff_that_is_gray_is_read_silently(tmp_path: Path) -> None:
    gray = texture(50, 70)
    rgb = np.dstack([gray, gray, gray])
    image = read_image(save_tiff(tmp_path / "g.tif", rgb, photometric="rgb"))
    assert np.array_equal(image.gray, gray) and image.warnings == ()
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    image = read_image(save_tiff(tmp_path / "ga.tif", rgba, photometric="rgb"))
    assert np.array_equal(image.gray, gray) and image.warnings == ()
    planar = np.stack([gray, gray, gray])
    image = read_image(save_tiff(tmp_path / "pl.tif", planar, photometric="rgb", planarconfig="separate"))
    assert np.array_equal(image.gray, gray)


def test_colored_rgb_tiff_uses_rec601_luma_with_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    image = read_image(save_tiff(tmp_path / "c.tif", rgb, photometric="rgb"))
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(image.gray, expected)
    assert "RGB input: using its luminance (Rec.601 luma)" in image.warnings


def test_miniswhite_tiff_is_inverted(tmp_path: Path) -> None:
    stored = texture(30, 40)
    image = read_image(save_tiff(tmp_path / "mw.tif", stored, photometric="miniswhite"))
    assert np.array_equal(image.gray, 255 - stored)


def test_volume_with_samples_is_refused_naming_its_shape(tmp_path: Path) -> None:
    path = save_tiff(tmp_path / "v.tif", np.zeros((2, 3, 64, 64, 3), np.uint8))
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert_image_error(caught.value, path)
    assert "(2, 3, 64, 64, 3)" in str(caught.value)


def test_a_stack_that_is_not_an_image_plane_is_refused_naming_its_shape(tmp_path: Path) -> None:
    # Once read as its first page: a 64x5 "image".
    path = tmp_path / "stack4d.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64, 5), np.uint16))
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert_image_error(caught.value, path)
    assert "(3, 64, 64, 5)" in caught.value.reason
    # A plain stack of 2-D pages is still read (its first page).
    plain = save_tiff(tmp_path / "pages.tif", np.zeros((4, 32, 40), np.uint16), photometric="minisblack")
    assert read_image(plain).gray.shape == (32, 40)


@pytest.mark.parametrize("fill", [np.nan, np.inf], ids=["nan", "inf"])
def test_an_image_without_a_finite_pixel_is_refused(tmp_path: Path, fill: float) -> None:
    # Once colorized as a black picture, with no word.
    path = save_tiff(tmp_path / "empty.tif", np.full((48, 64), fill, np.float32))
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert_image_error(caught.value, path)
    assert "no finite pixel" in caught.value.reason


# --------------------------------------------------------------------------- what is read


def _bytes_read_by_this_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_garbage_is_refused_on_its_first_bytes_without_reading_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tif"
    with path.open("wb") as f:
        f.write(b"not an image at all")
        f.truncate(256 << 20)  # 256 MB (sparse): once read whole before its first bytes
    before = _bytes_read_by_this_process()
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert _bytes_read_by_this_process() - before < 1 << 20
    assert_image_error(caught.value, path)
    assert "not a TIFF, PNG, JPEG or BMP" in caught.value.reason


def _ifd(entries: list[tuple[int, int, int, int]], next_ifd: int = 0) -> bytes:
    """A little-endian classic IFD: (tag, type, count, value) entries, values inline."""
    packed = b"".join(struct.pack("<HHII", *entry) for entry in sorted(entries))
    return struct.pack("<H", len(entries)) + packed + struct.pack("<I", next_ifd)


_GIGABYTE = 1 << 30


def _garbage_tiffs() -> list[tuple[str, bytes, str]]:
    """(name, head, words of the reason): TIFF-signed heads of 1 GB sparse files."""
    rng = np.random.default_rng(19)
    image = [(256, 4, 1, 64), (257, 4, 1, 64), (258, 3, 1, 8), (262, 3, 1, 1), (277, 3, 1, 1)]
    return [
        ("zeros.tif", b"II*\x00", "no image directory"),
        ("far-ifd.tif", b"II*\x00" + struct.pack("<I", 3 * _GIGABYTE), "lies outside the file"),
        (
            "random.tif",
            b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + rng.bytes(4096),
            "not a readable TIFF",
        ),
        (
            "far-strip.tif",
            b"II*\x00" + struct.pack("<I", 8) + _ifd([*image, (273, 4, 1, 2 * _GIGABYTE), (279, 4, 1, 4096)]),
            "image data needs",
        ),
        (
            "huge.tif",
            b"II*\x00"
            + struct.pack("<I", 8)
            + _ifd([(256, 4, 1, 100_000), (257, 4, 1, 100_000), (273, 4, 1, 512)]),
            "more than max_pixels",
        ),
        ("loop.tif", b"II*\x00" + struct.pack("<I", 8) + _ifd(image, next_ifd=8), "loops back"),
    ]


@pytest.mark.parametrize("name, head, words", _garbage_tiffs(), ids=[case[0] for case in _garbage_tiffs()])
def test_a_gigabyte_of_garbage_behind_a_tiff_signature_is_refused_unread(
    tmp_path: Path, name: str, head: bytes, words: str
) -> None:
    """Issue 19: a 1 GB file that starts with the TIFF signature was read whole (+1.05 GB
    RSS) before tifffile refused it. Its IFDs and strip offsets are checked first."""
    path = tmp_path / name
    with path.open("wb") as f:
        f.write(head)
        f.truncate(_GIGABYTE)  # sparse: the test writes kilobytes
    before = _bytes_read_by_this_process()
    with pytest.raises(ImageError) as caught:
        read_image(path, page=1 if name == "loop.tif" else 0)
    assert _bytes_read_by_this_process() - before < 1 << 20, "the file was read, not just its structure"
    assert_image_error(caught.value, path)
    assert words in caught.value.reason


def test_a_file_that_is_no_image_is_refused_without_quoting_its_bytes(tmp_path: Path) -> None:
    """The reason once quoted the first bytes (`starts with b'root:x:0'`), shown in logs,
    `status` and the web UI: whatever file it is, its content is not echoed."""
    path = tmp_path / "x.tif"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert "root" not in caught.value.reason and "not a TIFF, PNG, JPEG or BMP" in caught.value.reason


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped.tif"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_image(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): a writer end releases it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not reader.is_alive() and outcome, "reading a FIFO blocked"
    (error,) = outcome
    assert isinstance(error, ImageError) and "not a regular file (a FIFO)" in error.reason


_READ_DEVICE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GB: a runaway read stops here
from semwatch.imaging import ImageError, read_image
try:
    read_image(sys.argv[1])
except ImageError as exc:
    print(exc.reason)
except BaseException as exc:
    print(type(exc).__name__)
"""


def test_a_device_is_never_read(tmp_path: Path) -> None:
    # In a child with bounded memory: reading /dev/zero without a bound never ends.
    link = tmp_path / "zero.tif"
    link.symlink_to("/dev/zero")
    result = subprocess.run(
        [sys.executable, "-c", _READ_DEVICE, str(link)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert result.stdout.strip() == "not a regular file (a device); not read", result.stderr


def test_inside_a_folder_symlinks_must_stay_inside(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    real = save_tiff(inbox / "real.tif", texture(30, 40))
    outside = save_tiff(tmp_path / "outside.tif", texture(30, 40, seed=1))
    (inbox / "alias.tif").symlink_to(real)
    (inbox / "escape.tif").symlink_to(outside)
    (inbox / "sub").symlink_to(tmp_path, target_is_directory=True)
    assert read_image(inbox / "alias.tif", inside=inbox).sha256 == read_image(real).sha256
    for path in (inbox / "escape.tif", inbox / "sub" / "outside.tif"):
        with pytest.raises(ImageError) as caught:
            read_image(path, inside=inbox)
        assert_image_error(caught.value, path)
        assert "leads outside the watched folder" in caught.value.reason
    assert read_image(inbox / "escape.tif").gray.shape == (30, 40)  # a path the user named


# --------------------------------------------------------------------------- Pillow formats


def test_png_round_trips_gray_16bit_rgb_palette_la(tmp_path: Path) -> None:
    gray = texture(48, 64)
    image = read_image(save_pillow(tmp_path / "g.png", Image.fromarray(gray), "PNG", dpi=(254, 254)))
    assert np.array_equal(image.gray, gray) and image.window is None
    assert image.gray.flags.writeable and image.gray.flags.c_contiguous
    assert image.metadata.resolution_unit == 2
    assert image.metadata.resolution == pytest.approx((254, 254), rel=1e-3)

    deep = gray.astype(np.uint16) * 200
    image = read_image(save_pillow(tmp_path / "d.png", Image.fromarray(deep), "PNG"))
    assert image.source_dtype == "uint16" and image.window is not None

    rgb = np.dstack([gray, gray, gray])
    image = read_image(save_pillow(tmp_path / "r.png", Image.fromarray(rgb), "PNG"))
    assert np.array_equal(image.gray, gray) and image.warnings == ()

    palette = Image.fromarray(gray).convert("P")  # Pillow's gray palette of 256 levels
    image = read_image(save_pillow(tmp_path / "p.png", palette, "PNG"))
    assert np.array_equal(image.gray, gray) and image.warnings == ()

    la = Image.fromarray(np.dstack([gray, np.full_like(gray, 128)]), mode="LA")
    image = read_image(save_pillow(tmp_path / "la.png", la, "PNG"))
    assert np.array_equal(image.gray, gray)


def test_bilevel_png_and_tiff_are_black_and_white(tmp_path: Path) -> None:
    bits = texture(24, 32) > 128
    png = save_pillow(tmp_path / "bits.png", Image.fromarray(bits), "PNG")
    assert np.array_equal(read_image(png).gray, np.where(bits, 255, 0))
    tifffile.imwrite(tmp_path / "bits.tif", bits)  # stored MinIsWhite: a set bit is black ink
    assert np.array_equal(read_image(tmp_path / "bits.tif").gray, np.where(bits, 0, 255))


def test_jpeg_and_bmp_round_trips(tmp_path: Path) -> None:
    gray = texture(64, 80, noise=0)
    image = read_image(save_pillow(tmp_path / "g.jpg", Image.fromarray(gray), "JPEG", quality=95))
    assert np.abs(image.gray.astype(int) - gray).mean() < 2.0
    gray_rgb = Image.fromarray(np.dstack([gray] * 3))
    rgb_jpeg = read_image(save_pillow(tmp_path / "r.jpg", gray_rgb, "JPEG"))
    assert rgb_jpeg.warnings == ()  # chroma noise of a gray JPEG is not "colored"
    image = read_image(save_pillow(tmp_path / "g.bmp", Image.fromarray(gray), "BMP"))
    assert np.array_equal(image.gray, gray)
    rgb = np.dstack([gray, 255 - gray, gray])
    image = read_image(save_pillow(tmp_path / "c.bmp", Image.fromarray(rgb), "BMP"))
    assert any("luminance" in w for w in image.warnings)
    assert read_header(tmp_path / "c.bmp") == (64, 80)


def test_content_decides_format_and_name_mismatch_is_a_warning(tmp_path: Path) -> None:
    gray = texture(20, 30)
    path = tmp_path / "really-png.tif"
    Image.fromarray(gray).save(path, format="PNG")
    image = read_image(path)
    assert np.array_equal(image.gray, gray)
    assert any("content is PNG" in w for w in image.warnings)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.tif", b"", "empty file"),
        ("random.png", np.random.default_rng(3).bytes(4096), "not a TIFF, PNG, JPEG or BMP"),
        ("text.tif", b"hello, this is not an image\n" * 20, "not a TIFF, PNG, JPEG or BMP"),
    ],
)
def test_undecodable_files_are_permanent_one_line_errors(
    tmp_path: Path, name: str, content: bytes, words: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert_image_error(caught.value, path)
    assert words in caught.value.reason


def test_truncated_tiff_and_png_are_permanent_errors(tmp_path: Path) -> None:
    data = tiff_bytes(texture(100, 120))  # tifffile puts the IFD first: data can be cut
    cut_data = tmp_path / "cut-data.tif"
    cut_data.write_bytes(data[: len(data) // 2])
    cut_ifd = tmp_path / "cut-ifd.tif"
    cut_ifd.write_bytes(tiff_bytes(texture(100, 120), byteorder=">")[:12])  # inside the IFD
    png = io.BytesIO()
    Image.fromarray(texture(100, 120)).save(png, format="PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    for path in (cut_data, cut_ifd, cut_png):
        with pytest.raises(ImageError) as caught:
            read_image(path)
        assert_image_error(caught.value, path)
    with pytest.raises(ImageError, match="truncated"):
        read_image(cut_data)


@pytest.mark.parametrize(
    "name, content",
    [("huge.tif", bomb_tiff_bytes(100_000, 100_000)), ("huge.png", png_claiming(100_000, 100_000))],
)
def test_header_over_max_pixels_is_refused_before_decoding(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert read_header(path) == (100_000, 100_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as caught:
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_image_error(caught.value, path)
    assert "max_pixels=200000000" in caught.value.reason
    assert peak < 5_000_000  # nothing near the 10 GB the header claims was allocated


def test_an_image_needing_more_memory_than_the_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    """Issue 19: a 97 KB PNG declaring 10000 x 10000 (under max_pixels) took a server to
    4.75 GB. The memory it would need is checked against engine.max_image_mb first."""
    png, tif = tmp_path / "dark.png", tmp_path / "dark.tif"
    png.write_bytes(png_of_zeros(10_000, 10_000))
    tif.write_bytes(bomb_tiff_bytes(10_000, 10_000))
    assert len(png.read_bytes()) < 100_000
    cap = memory_cap(1024)
    assert cap == 1 << 30
    tracemalloc.start()
    try:
        for path in (png, tif):
            with pytest.raises(ImageTooLarge) as caught:
                read_image(path, max_memory=cap)
            assert_image_error(caught.value, path)
            reason = caught.value.reason
            assert "10000x10000" in reason and "about 4577 MB" in reason, reason
            assert "more than the 1024 MB one image may take (engine.max_image_mb)" in reason, reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # nothing near the 100 MB of pixels, let alone the 4.6 GB
    assert read_image(png, max_memory=memory_cap(8192)).gray.shape == (10_000, 10_000)
    # 0: half of this machine's memory, whatever that is.
    assert memory_cap(0) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def test_pillow_decompression_bomb_check_never_leaks(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(10_000, 9_000))  # 90 Mpx: past Pillow's warning limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would surface as an exception
        with pytest.raises(ImageError) as caught:
            read_image(path, max_pixels=50_000_000)
        assert "max_pixels=50000000" in caught.value.reason
        with pytest.raises(ImageError) as caught:
            read_image(path)  # within our limit: decoding fails on the missing data instead
    assert_image_error(caught.value, path)
    assert "decompression" not in caught.value.reason.lower()


def test_missing_file_is_transient_and_directory_is_permanent(tmp_path: Path) -> None:
    missing = tmp_path / "gone.tif"
    with pytest.raises(ImageError) as caught:
        read_image(missing)
    assert_image_error(caught.value, missing, permanent=False)
    with pytest.raises(ImageError) as caught:
        read_header(missing)
    assert caught.value.permanent is False
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(ImageError) as caught:
        read_image(folder)
    assert_image_error(caught.value, folder, permanent=True)


def test_image_error_is_one_line_and_survives_pickling(tmp_path: Path) -> None:
    error = ImageError(tmp_path / "x.tif", "first line\nsecond   line", permanent=True)
    assert str(error) == f"{tmp_path / 'x.tif'}: first line second line"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.permanent is True and copy.reason == error.reason


# --------------------------------------------------------------------------- data bar


@pytest.mark.parametrize("top, background, ink", [(440, 0, 255), (470, 255, 0), (490, 60, 250)])
def test_databar_found_on_generated_banners(top: int, background: int, ink: int) -> None:
    gray = banner(texture(512, 640, seed=top), top, background, ink)
    assert find_databar(gray) == top


def _negatives() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    h, w = 512, 640
    cases = {
        "noise": rng.integers(0, 256, (h, w), dtype=np.uint8),
        "texture": texture(h, w),
        "smooth": texture(h, w, seed=1, noise=0),
        "vertical gradient": np.repeat(np.linspace(0, 255, h).astype(np.uint8)[:, None], w, 1),
        "horizontal gradient": np.repeat(np.linspace(0, 255, w).astype(np.uint8)[None, :], h, 0),
        "constant": np.full((h, w), 128, np.uint8),
        "tiny": texture(24, 40),
    }
    dark = texture(h, w, seed=2)
    dark[-60:] = np.clip(rng.normal(5, 4, (60, w)), 0, 255).astype(np.uint8)
    cases["dark specimen bottom"] = dark
    specks = texture(h, w, seed=3)
    specks[-60:] = np.clip(rng.normal(0, 3, (60, w)), 0, 255).astype(np.uint8)
    for _ in range(30):
        y, x = rng.integers(h - 60, h - 3), rng.integers(0, w - 3)
        specks[y : y + 3, x : x + 3] = 230  # bright dust on a clipped black region
    cases["dark bottom with dust"] = specks
    wavy = texture(h, w, seed=5)
    edge = (h - 70 + 15 * np.sin(np.arange(w) / 23)).astype(int)
    shadow = np.arange(h)[:, None] >= edge[None, :]
    wavy[shadow] = np.clip(rng.normal(0, 3, int(shadow.sum())), 0, 255).astype(np.uint8)
    for _ in range(400):
        y, x = rng.integers(h - 50, h - 3), rng.integers(0, w - 3)
        wavy[y : y + 3, x : x + 3] = 230
    cases["irregular shadow with dust"] = wavy
    strip = texture(h, w, seed=6)
    strip[-50:] = 0
    cases["black strip without text"] = strip
    bright = texture(h, w, seed=7)
    bright[-70:] = np.clip(bright[-70:].astype(int) + 150, 0, 255).astype(np.uint8)
    cases["saturated bottom"] = bright
    return cases


NEGATIVE_NAMES = (
    "noise",
    "texture",
    "smooth",
    "vertical gradient",
    "horizontal gradient",
    "constant",
    "tiny",
    "dark specimen bottom",
    "dark bottom with dust",
    "irregular shadow with dust",
    "black strip without text",
    "saturated bottom",
)


@pytest.fixture(scope="module")
def negatives() -> dict[str, np.ndarray]:
    cases = _negatives()
    assert sorted(cases) == sorted(NEGATIVE_NAMES)
    return cases


@pytest.mark.parametrize("name", NEGATIVE_NAMES)
def test_databar_does_not_fire_on_ordinary_images(negatives: dict[str, np.ndarray], name: str) -> None:
    assert find_databar(negatives[name]) is None


def test_databar_from_fei_metadata_first() -> None:
    gray = texture(300, 200)
    fields = {"Image": {"ResolutionY": 256}, "PrivateFei": {"DatabarHeight": 0}}
    assert find_databar(gray, fields, "fei") == 256
    assert find_databar(gray, {"Image": {"ResolutionY": 300}}, "fei") is None  # no bar below
    assert find_databar(gray, {"Image": {"ResolutionY": "256"}}, "fei") == 256
    # The same fields without the vendor, or nonsense values, leave it to the pixels.
    assert find_databar(gray, fields, None) is None
    assert find_databar(gray, {"Image": {"ResolutionY": 20}}, "fei") is None
    with pytest.raises(ValueError):
        find_databar(gray.astype(np.uint16))


# --------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real_images(sem_real: Path) -> dict[str, DecodedImage]:
    return {name: read_image(REAL / name) for name in REAL_BARS}


@needs_real
@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_BARS))
def test_real_file_decodes_with_its_databar(real_images: dict[str, DecodedImage], name: str) -> None:
    image = real_images[name]
    expected, tolerance = REAL_BARS[name]
    assert image.databar_row is not None and abs(image.databar_row - expected) <= tolerance
    assert image.gray.dtype == np.uint8 and image.gray.flags.c_contiguous
    assert image.gray.shape == read_header(REAL / name)
    assert image.sha256 == hashlib.sha256((REAL / name).read_bytes()).hexdigest()
    # Nothing above the bar looks like a bar.
    assert find_databar(np.ascontiguousarray(image.gray[: image.databar_row])) is None


@needs_real
@pytest.mark.realdata
def test_real_vendor_metadata_is_parsed(real_images: dict[str, DecodedImage]) -> None:
    rbc = real_images["fei-helios-rbc.tif"].metadata
    assert rbc.vendor == "fei"
    assert rbc.fields["Image"]["ResolutionY"] == 1024
    assert rbc.fields["PrivateFei"]["DatabarHeight"] == 0
    assert rbc.resolution == ((96, 1), (96, 1)) and rbc.resolution_unit == 2
    ebeam = real_images["fei-helios-ebeam-16bit.tif"]
    assert ebeam.source_dtype == "uint16" and ebeam.window is not None
    assert ebeam.metadata.fields["Image"]["ResolutionY"] == 442 == ebeam.databar_row
    zeiss = real_images["zeiss-sem-512.tif"]
    assert zeiss.metadata.vendor == "zeiss" and zeiss.metadata.fields
    assert any("luminance" in w for w in zeiss.warnings)  # its palette has colored overlay entries
    assert real_images["zeiss-sem-1k.tif"].warnings == ()  # a pure gray ramp
    assert real_images["pollen-1062-550x.png"].metadata.vendor is None


@needs_real
@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(VENDOR_TAGS))
def test_real_vendor_tags_are_copied_byte_identical(
    tmp_path: Path, real_images: dict[str, DecodedImage], name: str
) -> None:
    image = real_images[name]
    out = tmp_path / output_name(name, "tiff")
    write_image(
        out,
        np.dstack([image.gray] * 3),
        fmt="tiff",
        metadata=image.metadata,
        provenance=provenance_for(image),
    )
    code = VENDOR_TAGS[name]
    assert raw_tag_bytes(out, code) == raw_tag_bytes(REAL / name, code)
    with tifffile.TiffFile(out) as tf:
        page = tf.pages[0]
        assert page.shape == (*image.gray.shape, 3) and page.photometric == 2
        assert 320 not in page.tags  # the palette describes the source's pixels only
        source = tifffile.TiffFile(REAL / name)
        with source:
            assert page.tags[282].value == source.pages[0].tags[282].value
            assert page.tags[296].value == source.pages[0].tags[296].value
            if 34665 in source.pages[0].tags:  # FEI's EXIF IFD (ImageUniqueID)
                assert page.tags[34665].value == source.pages[0].tags[34665].value
            assert REAL_CARRIED[name] <= {tag.code for tag in source.pages[0].tags.values()}
            assert REAL_CARRIED[name] <= {tag.code for tag in page.tags.values()}
        assert np.array_equal(page.asarray()[..., 1], image.gray)
    assert read_provenance(out)["semwatch"]["source"]["sha256"] == image.sha256


# --------------------------------------------------------------------------- writing


def test_private_and_big_endian_tags_survive_and_structure_does_not(tmp_path: Path) -> None:
    fei_text = b"[Image]\r\nResolutionY=40\r\n[PrivateFei]\r\nDatabarHeight=0\r\n\x00"
    extratags = [
        (34682, 2, len(fei_text), fei_text, True),
        (65010, 3, 3, (1, 2, 65535), True),
        (65020, 7, 4, b"\x00\x01\x02\xff", True),
    ]
    gray = texture(48, 32)
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    source = save_tiff(
        tmp_path / "be.tif", gray, byteorder=">", extratags=extratags, photometric="palette", colormap=ramp
    )
    image = read_image(source)
    assert image.metadata.vendor == "fei" and image.databar_row == 40
    out = tmp_path / "out" / "be.tif"
    write_image(
        out,
        np.dstack([image.gray] * 3),
        fmt="tiff",
        metadata=image.metadata,
        provenance=provenance_for(image),
    )
    assert raw_tag_bytes(out, 34682) == fei_text
    assert raw_tag_bytes(out, 65020) == b"\x00\x01\x02\xff"
    with tifffile.TiffFile(out) as tf:
        tags = tf.pages[0].tags
        assert tags[65010].value == (1, 2, 65535)
        assert 320 not in tags


def test_provenance_is_readable_from_tiff_png_and_jpeg(tmp_path: Path) -> None:
    values = texture(40, 60).astype(np.uint16) * 100
    image = read_image(save_tiff(tmp_path / "src.tif", values, resolution=(118.11, 118.11), resolutionunit=3))
    provenance = provenance_for(image)
    rgb = np.dstack([image.gray] * 3)
    read_back = {}
    for fmt in FORMAT_EXTENSIONS:
        out = tmp_path / "out" / output_name("src.tif", fmt)
        write_image(out, rgb, fmt=fmt, metadata=image.metadata, provenance=provenance)
        if fmt == "tiff":
            with tifffile.TiffFile(out) as tf:
                xmp = tf.pages[0].tags[700].value
                assert b'xmlns:semwatch="http://ns.semwatch.org/1.0/"' in xmp
                read_back[fmt] = provenance_from_xmp(xmp)
                assert 270 not in tf.pages[0].tags  # tifffile's shape record is not carried
            assert np.array_equal(tifffile.imread(out), rgb)
        else:
            with Image.open(out) as written:
                assert written.size == (60, 40) and written.mode == "RGB"
                if fmt == "png":
                    read_back[fmt] = json.loads(written.text["semwatch"])
                else:
                    read_back[fmt] = json.loads(written.info["comment"].decode())
                assert written.info["dpi"] == pytest.approx((300, 300), rel=1e-3)  # 118.11/cm
        assert read_provenance(out) == read_back[fmt]
    for _fmt, written_record in read_back.items():
        record = written_record["semwatch"]
        assert record["version"] == semwatch.__version__
        assert record["created"].endswith("+00:00")
        assert record["source"] == {
            "path": "in/src.tif",
            "sha256": image.sha256,
            "size": image.size,
            "shape": [40, 60],
            "dtype": "uint16",
            "window": image.window.as_dict(),
        }
        assert record["model"] == {"name": "tiny", "sha256": "ab" * 32}
        assert (record["backend"], record["device"], record["chroma_size"]) == ("eager", "cpu", 512)
        assert record["databar_row"] is None


def test_atomic_write_leaves_no_temp_file_on_success_or_failure(tmp_path: Path) -> None:
    rgb = np.dstack([texture(30, 40)] * 3)
    out = tmp_path / "deep" / "er" / "x.tif"
    write_image(out, rgb, fmt="tiff", metadata=None, provenance={"semwatch": {}})
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.tif"]
    before = out.read_bytes()

    broken = SourceMetadata(extratags=((65001, 99, 1, 1, True),))  # unknown TIFF field type
    with pytest.raises(ValueError):
        write_image(out, rgb[::2], fmt="tiff", metadata=broken, provenance={})
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.tif"]
    assert out.read_bytes() == before  # the previous output is untouched

    blocker = tmp_path / "deep" / "er" / "dir.png"
    (blocker / "inside").mkdir(parents=True)  # os.replace cannot replace a non-empty folder
    with pytest.raises(OSError):
        write_image(blocker, rgb, fmt="png", metadata=None, provenance={})
    assert not [p for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]

    with pytest.raises(ValueError):
        write_image(out, rgb.astype(np.uint16), fmt="tiff", metadata=None, provenance={})
    with pytest.raises(ValueError):
        write_image(out, rgb, fmt="gif", metadata=None, provenance={})


def test_sweep_removes_only_our_temp_files(tmp_path: Path) -> None:
    ours = [tmp_path / f"{TEMP_PREFIX}abc-x.tif", tmp_path / "a" / "b" / f"{TEMP_PREFIX}0-y.png"]
    theirs = [tmp_path / "x.tif", tmp_path / ".other-tmp-x.tif", tmp_path / "a" / f"x{TEMP_PREFIX}z"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert sweep_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert sweep_temp_files(tmp_path) == 0
    assert sweep_temp_files(tmp_path / "missing") == 0


def test_write_is_readable_by_read_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    for fmt in ("tiff", "png"):
        out = tmp_path / output_name("r.bmp", fmt)
        write_image(out, rgb, fmt=fmt, metadata=None, provenance={})
        expected = np.asarray(Image.fromarray(rgb).convert("L"))
        assert np.array_equal(read_image(out).gray, expected)


# --------------------------------------------------------------------------- naming


def test_output_name_rules() -> None:
    assert output_name("x.png", "tiff") == "x.tif"
    assert output_name("x.TIFF", "tiff") == "x.tif"
    assert output_name("x.tif", "jpeg") == "x.jpg"
    assert output_name("noext", "png") == "noext.png"
    assert output_name("a.b.tif", "png") == "a.b.png"
    siblings = ["x.tif", "x.png", "y.png"]
    assert output_name("x.tif", "tiff", sibling_names=siblings) == "x.tif"
    assert output_name("x.png", "tiff", sibling_names=siblings) == "x.png.tif"
    assert output_name("y.png", "tiff", sibling_names=siblings) == "y.tif"
    # Stems are compared ignoring case (SMB shares are case-insensitive).
    assert output_name("X.PNG", "tiff", sibling_names=["x.tif"]) == "X.PNG.tif"
    assert output_name("x.png", "png", sibling_names=["x.tif"]) == "x.png"
    assert output_name("x.tif", "png", sibling_names=["x.png"]) == "x.tif.png"
    assert output_name("x.png", "tiff", sibling_names=["x.txt", "x.png"]) == "x.tif"  # not a source
    assert output_name("x.tiff", "tiff", sibling_names=["x.tif"]) == "x.tiff.tif"
    # The same rule for the extension's case: x.tif and x.TIF once wrote one output.
    both = ["x.tif", "x.TIF"]
    assert output_name("x.tif", "tiff", sibling_names=both) == "x.tif"
    assert output_name("x.TIF", "tiff", sibling_names=both) == "x.TIF.tif"
    assert output_name("x.TIF", "tiff", sibling_names=["x.TIF", "x.png"]) == "x.tif"
    assert output_name("x.Tif", "tiff", sibling_names=["x.TIF", "x.Tif"]) == "x.Tif.tif"
    assert output_name("X.tif", "tiff", sibling_names=["X.tif", "x.tif"]) == "X.tif"
    assert output_name("x.tif", "tiff", sibling_names=["X.tif", "x.tif"]) == "x.tif.tif"
    names = ["x.tif", "x.TIF", "x.TIFF", "X.png", "x.jpg"]
    outputs = {output_name(n, "tiff", sibling_names=names).lower() for n in names}
    assert len(outputs) == len(names)  # distinct also on a case-insensitive share
    with pytest.raises(ValueError):
        output_name("dir/x.png", "tiff")
    with pytest.raises(ValueError):
        output_name("x.png", "webp")
    assert set(FORMAT_EXTENSIONS.values()) <= SUPPORTED_SUFFIXES
