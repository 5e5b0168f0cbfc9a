"""The provenance record written into every output, and reading it back from an output.

Where it lives in each format: the TIFF's XMP packet (older outputs: ImageDescription), a
PNG text chunk `semwatch`, the JPEG comment (encode.py writes it; semwatch.imaging.metadata builds
and parses the XMP packet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tifffile
from PIL import Image

from semwatch import __version__
from semwatch.imaging.decode import DecodedImage
from semwatch.imaging.metadata import provenance_from_json, provenance_from_xmp
from semwatch.imaging.source import sniff


def build_provenance(
    image: DecodedImage,
    *,
    source_path: str,
    model_name: str,
    model_sha256: str,
    backend: str,
    device: str,
    chroma_size: int,
    precision: str | None = None,
    refinement: Mapping[str, Any] | None = None,
    hints: Sequence[Mapping[str, Any]] | None = None,
    style: Mapping[str, str] | None = None,
    palette: Mapping[str, Any] | None = None,
    spread: bool = False,
) -> dict:
    """The provenance record written into every output (DESIGN.md "Input and output").

    ``refinement``: the engine's colour post-processing settings (hue coherence, guided
    filter), which change the output as much as the model does; ``precision`` (fp32, bf16,
    fp16), the network's number format, changes it slightly too. ``hints``: the colour
    hints given ({"x", "y", "color"} each), recorded only when there were any; ``style``:
    the style applied ({"name", "sha256"} of its file), only when there was one;
    ``palette``: the global palette ({"colors": [{"color", "weight"}], "from": "given" or
    "style", "applied": true; earlier versions wrote false where the model took no palette}),
    only when there was one; ``spread``: recorded (true) only when hints were asked to pull
    every other region toward them (``--spread``), since it changes the whole frame's colour.
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
            "precision": precision,
            "refinement": dict(refinement) if refinement is not None else None,
            "databar_row": image.databar_row,
        }
    }
    if hints:
        record["semwatch"]["hints"] = [dict(h) for h in hints]
    if style:
        record["semwatch"]["style"] = dict(style)
    if palette:
        record["semwatch"]["palette"] = dict(palette)
    if spread:
        record["semwatch"]["spread"] = True
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
        kind = sniff(path, fh.read(16))
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
