"""Device, precision and layout resolution, and the eager backend in each precision.

CUDA cannot run here: its decisions (fp16 by default, bf16 only where the GPU has it) are
tested through the pure resolution functions; the fp16 model itself is run on the CPU,
which PyTorch emulates slowly but exactly enough to check the plumbing.
"""

import numpy as np
import pytest
import torch
from helpers import max_lightness_error, textured_gray
from structlog.testing import capture_logs
from torch import nn

from semwatch import backends
from semwatch.backend_choice import make_backend
from semwatch.backends import (
    FULL_PRECISION_STAGES,
    EagerBackend,
    EngineError,
    fold_batch_norms,
    reduced_precision,
    resolve_channels_last,
    resolve_precision,
)
from semwatch.config import EngineConfig
from semwatch.engine import Colorizer, GrayImage
from semwatch.model import load_generator

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_precision_on_the_cpu_follows_native_bf16():
    assert resolve_precision("auto", CPU, native_bf16=True) == torch.bfloat16
    assert resolve_precision("auto", CPU, native_bf16=False) == torch.float32
    assert resolve_precision("fp32", CPU, native_bf16=True) == torch.float32
    assert resolve_precision("bf16", CPU, native_bf16=True) == torch.bfloat16


def test_the_real_cpu_probe_decides_auto(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == torch.float32
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == torch.bfloat16


def test_emulated_bf16_and_cpu_fp16_are_refused_with_the_reason():
    with pytest.raises(EngineError, match="no native bf16.*avx512_bf16.*slower than fp32"):
        resolve_precision("bf16", CPU, native_bf16=False)
    with pytest.raises(EngineError, match="'fp16' is for CUDA"):
        resolve_precision("fp16", CPU, native_bf16=True)
    with pytest.raises(EngineError, match="unknown engine.precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_cuda_precision_decisions(monkeypatch):
    assert resolve_precision("auto", CUDA) == torch.float16
    assert resolve_precision("fp32", CUDA) == torch.float32
    assert resolve_precision("fp16", CUDA) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("bf16", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(EngineError, match="GPU does not compute bf16"):
        resolve_precision("bf16", CUDA)


def test_channels_last_resolution():
    assert resolve_channels_last("auto", CPU) is True
    assert resolve_channels_last("auto", CUDA) is True
    assert resolve_channels_last(False, CPU) is False
    assert resolve_channels_last(True, CPU) is True
    with pytest.raises(EngineError, match="channels_last"):
        resolve_channels_last("yes", CPU)  # type: ignore[arg-type]


def test_unknown_backend_is_refused(tiny_model):
    with pytest.raises(EngineError, match="unknown backend 'onnx'"):
        make_backend("onnx", load_generator(tiny_model), CPU)


def test_folding_batch_norms_keeps_the_answer(tiny_model):
    model = load_generator(tiny_model).model.eval()
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


def test_an_untraceable_model_runs_unfolded_with_a_log_line():
    model = Untraceable().eval()
    with capture_logs() as logs:
        out = fold_batch_norms(model)
    assert out is not model and isinstance(out, Untraceable)
    assert [entry["log_level"] for entry in logs if "batch norms not folded" in entry["event"]] == ["warning"]


def test_bf16_keeps_the_first_stages_in_float32(tiny_model):
    generator = load_generator(tiny_model)
    mixed = reduced_precision(generator.model.eval(), torch.bfloat16)
    for name, stage in mixed.named_children():
        expected = torch.float32 if name in FULL_PRECISION_STAGES else torch.bfloat16
        assert stage.dtype == expected, name
        assert all(p.dtype == expected for p in stage.parameters()), name
    assert all(p.dtype == torch.float32 for p in generator.model.parameters())  # caller's copy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_backends_answer_like_fp32(tiny_model, dtype):
    generator = load_generator(tiny_model)
    reference = EagerBackend(generator, CPU, torch.float32, channels_last=False)
    fast = EagerBackend(generator, CPU, dtype, channels_last=True)
    assert fast.precision == {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    x = torch.rand(3, 1, 64, 96) * 2 - 1
    out = fast(x)
    assert out.dtype == dtype and out.shape == (3, 2, 64, 96)
    # ab/110 units: 0.03 is 3.3 Lab units on a random tiny network, far above the bundled
    # model's real-data difference (tests/test_precision_realdata.py); this checks wiring.
    assert (out.float() - reference(x)).abs().max() < 0.03
    assert generator.model.stem[0].weight.dtype == torch.float32
    assert generator.model.stem[0].weight.is_contiguous()  # layout of the caller's model kept


def test_channels_last_input_really_is_nhwc(tiny_model):
    """A one-channel batch must get NHWC strides, or the decoder's concatenation with the
    input falls back to NCHW and is copied for the next convolution."""
    backend = EagerBackend(load_generator(tiny_model), CPU, torch.float32, channels_last=True)
    seen = []
    stage = backend.model.up0
    handle = stage.register_forward_pre_hook(lambda module, args: seen.append(args[1].stride()))
    try:
        backend(torch.zeros(1, 1, 64, 96))
    finally:
        handle.remove()
    assert seen == [(64 * 96, 1, 96, 1)]


def test_colorizer_reports_and_applies_the_precision(tiny_model, monkeypatch):
    fp32 = Colorizer.from_config(
        EngineConfig(model=tiny_model, device="cpu", chroma_size=64, precision="fp32", channels_last=False)
    )
    assert fp32.precision == "fp32"
    # What auto gives on a CPU with native bf16, on any CPU (PyTorch emulates it elsewhere).
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    auto = Colorizer.from_config(EngineConfig(model=tiny_model, device="cpu", chroma_size=64))
    assert auto.precision == "bf16"
    gray = textured_gray(90, 120)
    out = auto.colorize([GrayImage(gray)])[0]
    assert max_lightness_error(out, gray) <= 1.0
    assert np.abs(out.astype(int) - fp32.colorize([GrayImage(gray)])[0].astype(int)).mean() < 2


def test_engine_error_names_the_setting(tiny_model):
    with pytest.raises(EngineError, match="engine.precision = 'fp16'"):
        Colorizer.from_config(EngineConfig(model=tiny_model, device="cpu", precision="fp16"))
