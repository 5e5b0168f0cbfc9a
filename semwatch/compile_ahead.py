"""`semwatch compile`: build (or find cached) the TensorRT engines a configuration will use.

Apart from :mod:`semwatch.tensorrt` because it needs the engine's canvas shapes, and the
engine builds on the backends: here, above both, no import runs in a circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from semwatch.backend_choice import make_backend
from semwatch.backends import resolve_device
from semwatch.engine import canvas_shapes
from semwatch.model import load_generator
from semwatch.model_file import model_file

if TYPE_CHECKING:
    from semwatch.config import EngineConfig
    from semwatch.tensorrt import CompileResult


def compile_engines(
    cfg: EngineConfig, shapes: Sequence[tuple[int, int]] | None = None, batch_size: int | None = None
) -> list[CompileResult]:
    """Compile (or find cached) the engines ``cfg`` will use: every canvas shape of its
    chroma_size (or ``shapes``) at its batch size (or ``batch_size``). For `semwatch compile`."""
    device = resolve_device(cfg.device)
    model_path = model_file(cfg.model)
    backend = make_backend(
        "tensorrt",
        load_generator(model_path, device=device),
        device,
        precision=cfg.precision,
        cache_dir=cfg.cache_dir,
    )
    batch = batch_size or cfg.batch_size
    backend.prepare(canvas_shapes(cfg.chroma_size), batch)
    return backend.compile_ahead(shapes or canvas_shapes(cfg.chroma_size))
