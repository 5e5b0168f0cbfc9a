"""Where and how the generator runs: device, numeric precision, memory layout, backend.

The engine (:mod:`semwatch.engine`) hands a batch of network inputs to a :class:`Backend`
and gets ab back; everything else it does is device-agnostic torch. Two backends:

- ``eager``: plain PyTorch on the CPU or a CUDA GPU. In reduced precision (bf16 on a CPU
  that computes bf16 natively, fp16 on CUDA) the network's BatchNorms are folded into the
  convolutions first (in float32, so their scale is not rounded twice) and the weights are
  converted once; on this project's 2-core AVX-512 BF16 CPU that is 0.76x the time of bf16
  autocast, which re-casts every weight on every call. In bf16 the generator's first
  stages stay float32 (:data:`FULL_PRECISION_STAGES`). Channels-last (NHWC) is the layout
  oneDNN and cuDNN convolve fastest.
- ``tensorrt``: a TensorRT-compiled generator per canvas shape (:mod:`semwatch.tensorrt`).

:func:`semwatch.backend_choice.make_backend` picks one by name; it lives apart so that
this module and :mod:`semwatch.tensorrt`, which builds on it, do not import each other.

Precision and layout are engine settings (``[engine] precision``, ``channels_last``) whose
``auto`` resolves here, per device.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from semwatch.hardware import NATIVE_BF16_FLAGS, cpu_has_native_bf16
from semwatch.log import get_logger

if TYPE_CHECKING:
    from semwatch.model import LoadedGenerator

log = get_logger(__name__)

ChannelsLastSetting = Literal["auto"] | bool
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class EngineError(RuntimeError):
    """The engine cannot be set up as configured (device, backend, model).

    ``retryable``: whether the same configuration may work on a later start (a GPU whose
    driver is not loaded yet at boot); the daemon exits with a restartable code for those and
    with EX_CONFIG (78, systemd does not restart) for the rest, which need an admin.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when a GPU is usable, else the CPU; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("engine.device = 'cuda' but no CUDA GPU is available", retryable=True)
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise EngineError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


def resolve_precision(setting: str, device: torch.device, *, native_bf16: bool | None = None) -> torch.dtype:
    """The network's dtype for ``engine.precision`` on ``device``.

    ``auto``: fp16 on CUDA; on a CPU bf16 where the CPU computes it natively (AVX-512 BF16
    or AMX), else fp32 — PyTorch emulates bf16 on other CPUs, slower than fp32, so it is
    never chosen there and refused when asked for. fp16 is for GPUs only: CPUs without
    AVX-512 FP16 emulate it too. ``native_bf16`` overrides the CPU probe (tests).
    """
    if setting not in ("auto", *DTYPES):
        raise EngineError(f"unknown engine.precision {setting!r} (auto, fp32, bf16 or fp16)")
    if device.type == "cuda":
        if setting == "auto":
            return torch.float16
        if setting == "bf16" and not torch.cuda.is_bf16_supported():
            raise EngineError(
                "engine.precision = 'bf16' but this GPU does not compute bf16; use 'auto' (fp16) or 'fp32'"
            )
        return DTYPES[setting]
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if setting == "auto":
        return torch.bfloat16 if native else torch.float32
    if setting == "fp16":
        raise EngineError(
            "engine.precision = 'fp16' is for CUDA GPUs; on the CPU use 'auto', 'bf16' or 'fp32'"
        )
    if setting == "bf16" and not native:
        flags = " or ".join(sorted(NATIVE_BF16_FLAGS))
        raise EngineError(
            f"engine.precision = 'bf16' but this CPU has no native bf16 ({flags}) "
            "and would emulate it, slower than fp32; use 'auto' or 'fp32'"
        )
    return DTYPES[setting]


def resolve_channels_last(setting: ChannelsLastSetting, device: torch.device) -> bool:
    """``auto``: on. Measured on this project's CPU, channels-last fp32 convolutions take
    0.6-0.8x the time of NCHW ones (oneDNN's native layout); on CUDA, tensor cores want NHWC."""
    if setting == "auto":
        return device.type in ("cpu", "cuda")
    if not isinstance(setting, bool):
        raise EngineError(f"engine.channels_last must be 'auto', true or false, got {setting!r}")
    return setting


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``model`` with each BatchNorm folded into the convolution
    before it (torch.fx's conv-bn fusion). A model that cannot be traced is returned
    unchanged (a copy), with a log line: folding only saves time."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model)  # traces and works on a deep copy
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable code
        log.warning(
            "batch norms not folded (model cannot be traced); running it as it is",
            error=f"{type(exc).__name__}: {exc}",
        )
        return copy.deepcopy(model)


# Top-level stages of the generator (semwatch.model.UNetGenerator) that stay float32 when
# the network runs in bf16: the stem and the first residual stage, which see the input's
# fine gray-level steps (bf16 keeps 8 significant bits: half a gray level of L/50 - 1).
# Measured with the bundled model on the sem-real images, the delivered ab differs from
# fp32 by up to 1.9 Lab units with every stage in bf16 (12 at the network's output, where
# the refinements have not yet smoothed it), by at most 0.53 with these three in float32;
# they hold 12 % of the network's multiply-adds. fp16 keeps 11 bits and runs whole (0.16).
FULL_PRECISION_STAGES = ("stem", "pool", "layer1")


class _Stage(nn.Module):
    """One stage of the generator in its own dtype: its tensor inputs are cast to it, so
    float32 and bf16 stages can follow each other (and share skip connections)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.module(*(a.to(self.dtype) for a in args))


def reduced_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of eval-mode ``model`` for inference in ``dtype``, BatchNorms folded.

    bf16: stage by stage, :data:`FULL_PRECISION_STAGES` in float32 (a model without those
    stages, e.g. another architecture, runs wholly in bf16). fp16: the whole model.
    """
    stages = dict(model.named_children())
    if dtype != torch.bfloat16 or not set(FULL_PRECISION_STAGES) <= stages.keys():
        return _Stage(fold_batch_norms(model).to(dtype), dtype)
    mixed = copy.deepcopy(model)
    for name, child in stages.items():
        stage_dtype = torch.float32 if name in FULL_PRECISION_STAGES else dtype
        setattr(mixed, name, _Stage(fold_batch_norms(child).to(stage_dtype), stage_dtype))
    return mixed


class Backend(abc.ABC):
    """Runs the generator on a batch: (N, C, H, W) normalised L (+ hint planes) -> (N, 2, H, W) ab/110.

    The result may be in the backend's reduced precision; the engine converts it to float32.
    """

    name: str
    device: torch.device
    dtype: torch.dtype = torch.float32

    @abc.abstractmethod
    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def prepare(self, shapes: Sequence[tuple[int, int]], batch_size: int) -> None:  # noqa: B027
        """Called once with the canvas shapes that will be used (compile-ahead hook); an
        optional hook, not abstract: eager back-ends have nothing to prepare."""

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.dtype]


class EagerBackend(Backend):
    """Plain PyTorch, CPU or CUDA, under ``inference_mode``."""

    name = "eager"

    def __init__(
        self,
        generator: LoadedGenerator,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        model = generator.model.eval()
        if dtype != torch.float32:
            model = reduced_precision(model, dtype)  # a copy: the caller's stays float32
        elif channels_last:
            model = copy.deepcopy(model)  # the layout change below is in place
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=memory_format)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # non_blocking: a batch built on the host in pinned memory is copied while the
        # GPU still works on the previous one (a no-op for a batch already on the device).
        # The input stays float32: the model's stages cast it to their own dtype.
        x = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            # .to, not .contiguous: with one channel both layouts count as contiguous and
            # .contiguous keeps NCHW strides, so the decoder's concatenation with the
            # input came out NCHW and was copied back to NHWC (12 % of the network's time).
            x = x.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(x)
