"""SEM images in and out (see decode.py until the split by concern lands)."""

from semwatch.imaging.decode import (
    FORMAT_EXTENSIONS,
    SUPPORTED_SUFFIXES,
    TEMP_PREFIX,
    DecodedImage,
    ImageError,
    SourceMetadata,
    Window,
    build_provenance,
    find_databar,
    output_name,
    read_header,
    read_image,
    read_provenance,
    sweep_temp_files,
    write_image,
)

__all__ = [
    "FORMAT_EXTENSIONS",
    "SUPPORTED_SUFFIXES",
    "TEMP_PREFIX",
    "DecodedImage",
    "ImageError",
    "SourceMetadata",
    "Window",
    "build_provenance",
    "find_databar",
    "output_name",
    "read_header",
    "read_image",
    "read_provenance",
    "sweep_temp_files",
    "write_image",
]
