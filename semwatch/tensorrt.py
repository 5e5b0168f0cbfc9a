"""The TensorRT backend: the generator compiled by torch-tensorrt, one static-shape engine
per (canvas shape, batch size), cached on disk.

The engine pads every image to one of a few canvas shapes (:func:`semwatch.engine.canvas_shapes`),
so a handful of static-shape engines cover every input; a partial batch is padded with
copies of its last image up to ``batch_size``, so each canvas shape needs one engine, not
one per batch length. Engines are compiled with torch-tensorrt's dynamo path on first use
of a shape (minutes; logged) or ahead with ``semwatch compile``, and saved as exported
programs in ``[engine] cache_dir``. A saved engine is only valid for the exact model,
shape, batch, precision, TensorRT build and GPU it was built for, so all of them are in
its key and file name (torch-tensorrt's own engine cache omits the TensorRT version, the
GPU and its compute capability): a new model, driver stack or GPU just compiles anew.

Reduced precision comes from the model's own dtype (``model.half()``), not from
``enabled_precisions``, which torch-tensorrt's dynamo path ignores since 2.13.

Everything that touches torch-tensorrt goes through a :class:`Toolchain` (compile, save,
load, and the versions and GPU the cache key needs), made by :func:`detect_toolchain`. The
tests replace it with a stand-in (``torch.export``), since TensorRT cannot be installed on
the machines this was written on: this module has not yet run on a GPU with TensorRT.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from semwatch.backends import PRECISION_NAMES, Backend, EagerBackend, EngineError
from semwatch.fsutil import atomic_path
from semwatch.log import get_logger

if TYPE_CHECKING:
    from semwatch.model import LoadedGenerator

log = get_logger(__name__)

ENGINE_SUFFIX = ".pt2"  # a torch.export archive (what torch_tensorrt.save writes)

CompileFn = Callable[[nn.Module, torch.Tensor], nn.Module]
SaveFn = Callable[[nn.Module, Path, torch.Tensor], None]
LoadFn = Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Toolchain:
    """What compiles, saves and loads engines, and what an engine's validity depends on."""

    tensorrt_version: str
    torch_tensorrt_version: str
    gpu_name: str
    capability: tuple[int, int]  # CUDA compute capability (major, minor)
    compile: CompileFn  # (model in its dtype on the GPU, example input) -> compiled module
    save: SaveFn  # (compiled module, path, example input) -> file at path
    load: LoadFn  # path -> callable engine


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine is valid for."""

    model_sha256: str
    batch: int
    channels: int
    height: int
    width: int
    precision: str  # fp16, bf16 or fp32
    tensorrt: str
    torch_tensorrt: str
    gpu: str
    capability: str  # "8.6"

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        """Readable, and unique per key: the fields that tell engines apart at a glance,
        then a digest of the whole key (full model SHA-256, every version)."""
        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu).strip("-") or "gpu"
        return (
            f"{self.model_sha256[:12]}_b{self.batch}_{self.channels}x{self.height}x{self.width}"
            f"_{self.precision}_trt{self.tensorrt}_{gpu}_sm{self.capability.replace('.', '')}"
            f"_{self.digest[:12]}{ENGINE_SUFFIX}"
        )


@dataclass(frozen=True)
class CompileResult:
    shape: tuple[int, int]
    batch: int
    precision: str
    path: Path
    status: str  # "compiled", "cached" or "failed"
    seconds: float


def detect_toolchain(device: torch.device) -> Toolchain:
    """torch-tensorrt on ``device``, or a one-line EngineError naming everything missing."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (PyTorch sees none)")
    elif device.type != "cuda":
        missing.append(f"a CUDA device (engine.device is {str(device)!r})")
    if importlib.util.find_spec("torch_tensorrt") is None:
        missing.append("torch-tensorrt (not installed: pip install 'semwatch[tensorrt]')")
    if missing:
        # Only a GPU that is not visible yet can appear by itself (a driver loading at boot).
        gpu_only = importlib.util.find_spec("torch_tensorrt") is not None
        raise EngineError("the tensorrt backend needs " + " and ".join(missing), retryable=gpu_only)
    try:
        import tensorrt
        import torch_tensorrt
    except ImportError as exc:  # installed but broken (e.g. a TensorRT/CUDA mismatch)
        raise EngineError(f"the tensorrt backend cannot import torch-tensorrt: {exc}") from exc
    index = device.index if device.index is not None else torch.cuda.current_device()
    return Toolchain(
        tensorrt_version=str(tensorrt.__version__),
        torch_tensorrt_version=str(torch_tensorrt.__version__),
        gpu_name=torch.cuda.get_device_name(index),
        capability=tuple(torch.cuda.get_device_capability(index)),
        compile=_trt_compile,
        save=_trt_save,
        load=_trt_load,
    )


def _trt_compile(model: nn.Module, example: torch.Tensor) -> nn.Module:
    import torch_tensorrt

    # Static shape, taken from the example; its dtype and the model's (fp16 after
    # model.half()) decide the precision on the dynamo path.
    return torch_tensorrt.compile(model, ir="dynamo", inputs=[example])


def _trt_save(compiled: nn.Module, path: Path, example: torch.Tensor) -> None:
    import torch_tensorrt

    torch_tensorrt.save(compiled, str(path), output_format="exported_program", inputs=[example])


def _trt_load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch_tensorrt  # noqa: F401 - registers the TensorRT engine class the program refers to

    # torch.export.load reads an archive that semwatch itself wrote into its own cache folder
    # (a graph, tensors and the serialized TensorRT engine); files from elsewhere are never
    # loaded this way. Generator files stay safetensors.
    return torch.export.load(str(path)).module()


class TensorRTBackend(Backend):
    """The generator as TensorRT engines, one per canvas shape at the engine's batch size."""

    name = "tensorrt"

    def __init__(
        self,
        generator: LoadedGenerator,
        device: torch.device,
        dtype: torch.dtype,
        *,
        cache_dir: Path | None,
        toolchain: Toolchain,
    ):
        if cache_dir is None:
            raise EngineError(
                "engine.cache_dir is not set: the tensorrt backend keeps its compiled engines there"
            )
        self.generator = generator
        self.device = device
        self.dtype = dtype
        self.cache_dir = Path(cache_dir)
        self.toolchain = toolchain
        self.batch_size: int | None = None
        self._engines: dict[tuple[int, int], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._model: nn.Module | None = None
        self._eager: EagerBackend | None = None

    # -- keys and files ----------------------------------------------------------------

    def key(self, shape: tuple[int, int], batch: int | None = None) -> EngineKey:
        tc = self.toolchain
        return EngineKey(
            model_sha256=self.generator.sha256,
            batch=batch or self.batch_size or 1,
            channels=self.generator.config.input_channels,
            height=shape[0],
            width=shape[1],
            precision=PRECISION_NAMES[self.dtype],
            tensorrt=tc.tensorrt_version,
            torch_tensorrt=tc.torch_tensorrt_version,
            gpu=tc.gpu_name,
            capability=f"{tc.capability[0]}.{tc.capability[1]}",
        )

    def engine_path(self, shape: tuple[int, int]) -> Path:
        return self.cache_dir / self.key(shape).file_name()

    # -- Backend ------------------------------------------------------------------------

    def prepare(self, shapes: Sequence[tuple[int, int]], batch_size: int) -> None:
        # Engines are compiled on first use of a shape, not here: all canvas shapes at once
        # would take many minutes at every start. `semwatch compile` builds them ahead.
        self.batch_size = batch_size

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n, _, height, width = batch.shape
        size = self.batch_size or n
        if n > size:
            raise ValueError(f"batch of {n} for an engine built for {size}")
        engine = self._engine((height, width))
        x = batch.to(self.device, self.dtype, non_blocking=True)
        if n < size:  # static shapes: pad with copies of the last image, drop their answers
            x = torch.cat((x, x[-1:].expand(size - n, -1, -1, -1)))
        with torch.inference_mode():
            out = engine(x)
        if isinstance(out, (tuple, list)):  # a compiled graph may return its one output boxed
            out = out[0]
        return out[:n]

    def compile_ahead(self, shapes: Iterable[tuple[int, int]]) -> list[CompileResult]:
        """Load or compile the engine of every shape (``semwatch compile``)."""
        results = []
        for shape in shapes:
            started = time.perf_counter()
            status = self._load_or_compile(shape)
            results.append(
                CompileResult(
                    shape,
                    self.key(shape).batch,
                    PRECISION_NAMES[self.dtype],
                    self.engine_path(shape),
                    status,
                    time.perf_counter() - started,
                )
            )
        return results

    # -- engines ------------------------------------------------------------------------

    def _engine(self, shape: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
        if shape not in self._engines:
            self._load_or_compile(shape)
        return self._engines[shape]

    def _load_or_compile(self, shape: tuple[int, int]) -> str:
        if shape in self._engines:
            return "cached"
        path = self.engine_path(shape)
        if path.is_file():
            try:
                self._engines[shape] = self.toolchain.load(path)
                log.info("TensorRT engine loaded", path=str(path))
                return "cached"
            except Exception as exc:  # noqa: BLE001 - any unreadable engine is rebuilt
                log.warning(
                    "cached TensorRT engine cannot be loaded; compiling it again",
                    path=str(path),
                    error=f"{type(exc).__name__}: {exc}",
                )
        return self._compile(shape, path)

    def _compile(self, shape: tuple[int, int], path: Path) -> str:
        key = self.key(shape)
        example = torch.zeros((key.batch, key.channels, *shape), dtype=self.dtype, device=self.device)
        log.info(
            "compiling a TensorRT engine for this canvas shape (first use; takes minutes, "
            "`semwatch compile` does it ahead)",
            shape=f"{shape[0]}x{shape[1]}",
            batch=key.batch,
            precision=key.precision,
            path=str(path),
        )
        started = time.perf_counter()
        try:
            compiled = self.toolchain.compile(self._compile_model(), example)
        except Exception as exc:  # noqa: BLE001 - the service keeps going on eager PyTorch
            log.error(
                "TensorRT compilation failed; this canvas shape runs in eager PyTorch",
                shape=f"{shape[0]}x{shape[1]}",
                error=f"{type(exc).__name__}: {exc}",
            )
            self._engines[shape] = self._eager_fallback()
            return "failed"
        try:
            with atomic_path(path, ENGINE_SUFFIX) as tmp:
                self.toolchain.save(compiled, tmp, example)
        except Exception as exc:  # noqa: BLE001 - the engine still works in this process
            log.warning(
                "compiled TensorRT engine not saved; it will be compiled again next start",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
            )
        self._engines[shape] = compiled
        log.info("TensorRT engine compiled", path=str(path), seconds=round(time.perf_counter() - started, 1))
        return "compiled"

    def _compile_model(self) -> nn.Module:
        """The generator in the engine's dtype on the GPU (a copy; made once)."""
        if self._model is None:
            model = copy.deepcopy(self.generator.model).eval()
            self._model = model.to(device=self.device, dtype=self.dtype)
        return self._model

    def _eager_fallback(self) -> EagerBackend:
        if self._eager is None:
            self._eager = EagerBackend(self.generator, self.device, self.dtype, channels_last=True)
        return self._eager
