"""The acquisition settings worth showing beside an image: pixel size, high voltage,
magnification, working distance, detector; from the FEI/Thermo or Zeiss fields that
imaging parses (SourceMetadata.fields). Only what the file carries is shown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from semwatch.imaging import SourceMetadata


def acquisition_summary(metadata: SourceMetadata) -> list[tuple[str, str]]:
    """[(label, value with unit)] in a fixed order; empty for files without vendor fields."""
    if metadata.vendor == "fei":
        rows = _fei(metadata.fields)
    elif metadata.vendor == "zeiss":
        rows = _zeiss(metadata.fields)
    else:
        rows = []
    return [(label, value) for label, value in rows if value]


def _fei(fields: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    def get(section: str, key: str) -> Any:
        value = fields.get(section, {}).get(key) if isinstance(fields.get(section), Mapping) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    pixel = get("Scan", "PixelWidth") or get("EScan", "PixelWidth")
    hv = get("Beam", "HV") or get("EBeam", "HV")
    wd = get("EBeam", "WD") or get("Stage", "WorkingDistance")
    hfw = get("EBeam", "HFW") or get("Scan", "HorFieldsize")
    # FEI files store no magnification; xT defines it as the reference display width over
    # the horizontal field width (MagCanvasRealWidth / HFW), which is what the bar shows.
    canvas = get("Image", "MagCanvasRealWidth")
    detectors = fields.get("Detectors", {}) if isinstance(fields.get("Detectors"), Mapping) else {}
    name, mode = detectors.get("Name"), detectors.get("Mode")
    detector = " ".join(str(v) for v in (name, f"({mode})" if mode else None) if v) or None
    return [
        ("Pixel size", _length(pixel)),
        ("High voltage", _kilovolts(hv)),
        ("Magnification", f"{canvas / hfw:,.0f} x" if canvas and hfw else None),
        ("Horizontal field width", _length(hfw)),
        ("Working distance", f"{wd * 1e3:.2f} mm" if wd else None),
        ("Detector", detector),
    ]


def _zeiss(fields: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    def text(*keys: str) -> str | None:
        # tifffile parses CZ_SEM entries as (label, value[, unit]).
        for key in keys:
            entry = fields.get(key)
            if isinstance(entry, tuple) and len(entry) >= 2 and entry[1] not in ("", None):
                return " ".join(str(part) for part in entry[1:3])
        return None

    return [
        ("Pixel size", text("ap_pixel_size")),
        ("High voltage", text("ap_actualkv", "ap_manualkv")),
        ("Magnification", text("ap_mag")),
        ("Working distance", text("ap_wd")),
        ("Detector", text("dp_detector_channel", "dp_implied_detector")),
    ]


def _length(metres: float | None) -> str | None:
    if not metres:
        return None
    for unit, scale in (("nm", 1e9), ("µm", 1e6), ("mm", 1e3)):
        value = metres * scale
        if value < 1000:
            return f"{value:.4g} {unit}"
    return f"{metres:.4g} m"


def _kilovolts(volts: float | None) -> str | None:
    return f"{volts / 1000:g} kV" if volts else None


def databar_text(height: int, databar_row: int | None) -> str:
    """One line on the detected data bar (it stays gray in every output)."""
    if databar_row is None or databar_row >= height:
        return "No data bar detected: the whole frame is colorized."
    rows = height - databar_row
    return (
        f"Data bar detected: rows {databar_row}-{height - 1} ({rows} rows) at the bottom; "
        "it stays gray and hints there are ignored."
    )
