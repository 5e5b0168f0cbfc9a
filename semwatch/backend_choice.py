"""The backend for a name: eager here, TensorRT only when asked for.

Kept out of :mod:`semwatch.backends` because :mod:`semwatch.tensorrt` builds on that module:
the choice between them sits above both, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from semwatch.backends import (
    Backend,
    ChannelsLastSetting,
    EagerBackend,
    EngineError,
    resolve_channels_last,
    resolve_precision,
)

if TYPE_CHECKING:
    from semwatch.model import LoadedGenerator


def make_backend(
    name: str,
    generator: LoadedGenerator,
    device: torch.device,
    *,
    precision: str = "fp32",
    channels_last: ChannelsLastSetting = False,
    cache_dir: Path | None = None,
) -> Backend:
    """The backend for ``name`` (``auto`` is eager: tensorrt compiles for minutes on first
    use of each canvas shape, so it is chosen explicitly)."""
    if name not in ("auto", "eager", "tensorrt"):
        raise EngineError(f"unknown backend {name!r} (auto, eager or tensorrt)")
    if name == "tensorrt":
        # Imported here: torch-tensorrt is looked for only when TensorRT is chosen.
        from semwatch import tensorrt

        toolchain = tensorrt.detect_toolchain(device)  # one-line EngineError naming what is missing
        return tensorrt.TensorRTBackend(
            generator, device, resolve_precision(precision, device), cache_dir=cache_dir, toolchain=toolchain
        )
    return EagerBackend(
        generator, device, resolve_precision(precision, device), resolve_channels_last(channels_last, device)
    )
