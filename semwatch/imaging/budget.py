"""The memory one image may take, and the one rule that refuses an image that would take more.

Decoding and colorizing an image holds several full-resolution arrays at once (the decoded
samples, the display gray, L as float32, the up-sampled a,b, Lab -> RGB in float32, the RGB
output, the web UI's previews): memory grows with the pixel count whatever the file's size,
so a 97 KB PNG declaring 10000 x 10000 once took the web UI's server to 4.75 GB. The need is
estimated from the header, before anything is decoded, and compared with `[engine]
max_image_mb`, which the service and the web UI share.
"""

from __future__ import annotations

import os
from pathlib import Path

from semwatch.imaging.errors import ImageTooLarge

# Peak bytes per pixel of a decode plus a colorization at full resolution. Measured (RSS,
# CPU): the web UI 4.75 GB for 100 Mpx (issue 19), the service's pipeline about 24 B/px at
# 36 Mpx; the larger is the rule, so one image fits wherever it is opened.
WORKING_BYTES_PER_PIXEL = 48
_MB = 1 << 20


def memory_cap(max_image_mb: int) -> int:
    """The cap in bytes: ``max_image_mb``, or (0) half of this machine's physical memory."""
    if max_image_mb > 0:
        return max_image_mb * _MB
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def image_memory(height: int, width: int, depth: int = 1) -> int:
    """Estimated peak bytes to decode and colorize an image of this size."""
    return height * width * depth * WORKING_BYTES_PER_PIXEL


def check_image_memory(path: Path, height: int, width: int, max_memory: int | None, depth: int = 1) -> None:
    """ImageTooLarge when the image would need more than ``max_memory`` bytes (None: no cap)."""
    if max_memory is None:
        return
    need = image_memory(height, width, depth)
    if need > max_memory:
        raise ImageTooLarge(
            path,
            f"image is {width}x{height}: decoding and colorizing it needs about {need // _MB} MB, "
            f"more than the {max_memory // _MB} MB one image may take (engine.max_image_mb)",
        )
