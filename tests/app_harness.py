"""Shared pieces of the web UI tests: a configuration in a temporary folder, generated
uploads, and the bytes behind a download button."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import tifffile
from helpers import textured_gray
from PIL import Image


def write_app_config(
    root: Path, model: Path, *, max_upload_mb: int = 1, port: int = 8501, max_image_mb: int = 0
) -> Path:
    """A config.toml for the app under ``root`` (inbox, outbox, var), with ``model``."""
    config = root / "config.toml"
    config.write_text(
        '[watch]\ninput_dir = "inbox"\n'
        '[output]\ndir = "outbox"\n'
        '[queue]\ndatabase_url = "sqlite:///var/semwatch.db"\n'
        f'[engine]\nmodel = "{model}"\ndevice = "cpu"\nchroma_size = 128\nmax_image_mb = {max_image_mb}\n'
        f"[app]\nmax_upload_mb = {max_upload_mb}\nport = {port}\npreview_size = 256\n"
        '[logging]\nlevel = "warning"\n'
    )
    (root / "inbox").mkdir(exist_ok=True)
    return config


def png_bytes(height: int = 240, width: int = 320, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(textured_gray(height, width, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def provenance_of_tiff(data: bytes) -> dict:
    """The semwatch record of a TIFF: in the XMP packet (newer outputs) or ImageDescription."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        xmp = page.tags.get(700)
        if xmp is not None:
            text = bytes(xmp.value).decode("utf-8", "replace")
            start = text.find('{"semwatch"')
            if start >= 0:
                return json.JSONDecoder().raw_decode(text[start:])[0]
        return json.loads(page.description)


def tiff_rgb(data: bytes) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return tif.pages[0].asarray()
