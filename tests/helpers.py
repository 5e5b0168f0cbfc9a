"""Assertions shared by the test modules."""

from __future__ import annotations

import numpy as np
import torch

from semwatch.color import gray_levels_to_l, rgb_to_lab


def lightness_as_gray(rgb: np.ndarray) -> np.ndarray:
    """The gray level (0..255, fractional) whose sRGB gray has the same CIE L as each pixel."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    lightness = rgb_to_lab(tensor[None])[0, 0].double().numpy()
    table = gray_levels_to_l().numpy()
    return np.interp(lightness, table, np.arange(256, dtype=np.float64))


def max_lightness_error(rgb: np.ndarray, gray: np.ndarray) -> float:
    """Largest |gray level of the output's L - input gray level| over the image."""
    return float(np.abs(lightness_as_gray(rgb) - gray.astype(np.float64)).max())


def textured_gray(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A gray test image with smooth structure, edges and noise, full 0..255 range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)
    img[(x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(height, width) / 4) ** 2] += 70
    img += rng.normal(0, 12, size=img.shape)
    img[: max(1, height // 20)] = 0
    img[-max(1, height // 20) :, : width // 3] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def bomb_tiff_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small, valid-looking little-endian TIFF whose header claims width x height pixels."""
    import struct

    entries = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: just after the IFD
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts (a lie: only 16 bytes follow)
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HHI", tag, typ, count)
        packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def raw_tiff_tag(path, code: int) -> bytes | None:
    """The exact bytes of a TIFF tag's value in the first page (None when absent)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(code)
        if tag is None:
            return None
        fh = tif.filehandle
        fh.seek(tag.valueoffset)
        return fh.read(tag.valuebytecount)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of black pixels: 10000 x 10000 compresses to about 97 KB (the
    issue's upload), written row by row so the test never holds the pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_palette_model(path, seed: int = 2, name: str = "tiny-palette"):  # noqa: ANN001, ANN201 - Path
    """A random hint + palette generator file whose palette network is not zero, so a
    palette visibly changes its answer (an untrained one starts at zero: no effect). Its
    batch norms are calibrated without a palette, which (gated by its presence flag) then
    adds its offsets to statistics that never saw them, as a trained model's would."""
    from semwatch.model import GeneratorConfig, build_generator, save_generator

    torch.manual_seed(seed)
    config = GeneratorConfig(decoder_width=8, in_channels=4, palette_colours=4)
    model = build_generator(config)
    with torch.no_grad():
        model.palette[-1].weight.normal_(0, 4.0)
        # An untrained encoder's activations grow layer by layer (its batch norms are the
        # identity), drowning the palette's bottleneck offsets: calibrate their statistics
        # on a few random frames, as training would, so the palette visibly steers.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over the calibration batches
        model.train()
        planes = config.input_channels - 1
        for _ in range(2):
            model(torch.cat((torch.rand(4, 1, 64, 64) * 2 - 1, torch.zeros(4, planes, 64, 64)), dim=1))
        model.eval()
    save_generator(path, model, config, {"name": name})
    return path
