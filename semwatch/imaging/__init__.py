"""SEM images in and out, one module per concern; the public names are re-exported here, so
`from semwatch.imaging import read_image` is the import everywhere.

- source.py: reading a file's bytes safely (regular file, bounded, inside the watch folder)
  and telling its format by signature.
- decode.py: TIFF and Pillow decoders; `read_image` (display gray + metadata + data bar:
  the daemon, `semwatch colorize`, the web UI, the benchmarks) and `read_rgb` (display RGB,
  colour kept: trainer.data), `read_header`.
- vendor.py: `SourceMetadata`: resolution, parsed FEI/Zeiss fields, the tags the output
  carries (semwatch.imaging.metadata's deny-list).
- display.py: what a gray level is: palettes, RGB that is gray, luma, the 16-bit/float
  percentile `Window`.
- databar.py: `find_databar`: vendor metadata first, image analysis second.
- encode.py: `write_image`: TIFF/PNG/JPEG with provenance, through semwatch.fsutil's atomic
  writer (also the home of `TEMP_PREFIX` and `sweep_temp_files`, re-exported here).
- naming.py: `output_name`, `FORMAT_EXTENSIONS`.
- provenance.py: `build_provenance`, `read_provenance`.
- metadata.py: the deny-list of tags carried into a TIFF output, the XMP packet that
  holds the provenance, the sub-IFDs (the tag carrying the other modules build on).

numpy, tifffile and Pillow only: no torch, so decode and encode threads stay light.
"""

from semwatch.fsutil import TEMP_PREFIX, sweep_temp_files
from semwatch.imaging.budget import memory_cap
from semwatch.imaging.databar import find_databar
from semwatch.imaging.decode import DEFAULT_MAX_PIXELS, DecodedImage, read_header, read_image, read_rgb
from semwatch.imaging.display import Window
from semwatch.imaging.encode import write_image
from semwatch.imaging.errors import ImageError, ImageTooLarge
from semwatch.imaging.naming import FORMAT_EXTENSIONS, output_name
from semwatch.imaging.provenance import build_provenance, read_provenance
from semwatch.imaging.source import SUPPORTED_SUFFIXES
from semwatch.imaging.vendor import SourceMetadata

__all__ = [
    "ImageTooLarge",
    "memory_cap",
    "DEFAULT_MAX_PIXELS",
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
    "read_rgb",
    "sweep_temp_files",
    "write_image",
]
