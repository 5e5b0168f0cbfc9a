"""The TensorRT backend's machinery, with a STAND-IN compiler.

torch-tensorrt and a CUDA GPU cannot be had on the machines these tests run on, so nothing
here runs TensorRT. Everything around it does run: cache keys and file names, compile on
first use, reload from the cache, static-shape padding, recompiling a broken cache file,
falling back to eager PyTorch when compilation fails, the one-line errors, and
`semwatch compile`. The stand-in replaces exactly the three torch-tensorrt calls
(compile, save, load) through the :class:`Toolchain` seam: it "compiles" with
torch.export (an ahead-of-time program for one static shape, run on the CPU) and saves and
loads with torch.export.save/load, as the real path saves and loads torch-tensorrt's
exported programs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import textured_gray
from structlog.testing import capture_logs

from semwatch import backends, tensorrt
from semwatch.backends import EngineError
from semwatch.cli import main
from semwatch.config import EngineConfig
from semwatch.engine import Colorizer, GrayImage
from semwatch.model import load_generator
from semwatch.tensorrt import EngineKey, TensorRTBackend, Toolchain

CHROMA = 64  # canvas sides 32 and 64: four shapes


class StandInEngine(torch.nn.Module):
    """What the stand-in compiler returns: an exported program (NOT TensorRT)."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self.program = program
        self.run = program.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


class StandIn:
    """A stand-in for torch-tensorrt: records its calls; can be told to fail."""

    def __init__(
        self,
        *,
        gpu: str = "Stand-in GPU 24GB",
        tensorrt_version: str = "10.0-standin",
        capability: tuple[int, int] = (8, 6),
        fail_compile: bool = False,
        fail_save: bool = False,
    ):
        self.calls: list[tuple] = []
        self.fail_compile = fail_compile
        self.fail_save = fail_save
        self.toolchain = Toolchain(
            tensorrt_version=tensorrt_version,
            torch_tensorrt_version="2.99-standin",
            gpu_name=gpu,
            capability=capability,
            compile=self.compile,
            save=self.save,
            load=self.load,
        )

    def compile(self, model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
        dtypes = {p.dtype for p in model.parameters()}
        self.calls.append(("compile", tuple(example.shape), example.dtype, dtypes))
        if self.fail_compile:
            raise RuntimeError("stand-in compiler: unsupported operator")
        return StandInEngine(torch.export.export(model, (example,)))

    def save(self, compiled: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
        self.calls.append(("save", Path(path).suffix))
        if self.fail_save:
            raise OSError(28, "No space left on device")
        torch.export.save(compiled.program, str(path))

    def load(self, path: Path):
        self.calls.append(("load", Path(path).name))
        return torch.export.load(str(path)).module()

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


@pytest.fixture
def stand_in(monkeypatch) -> StandIn:
    fake = StandIn()
    monkeypatch.setattr(tensorrt, "detect_toolchain", lambda device: fake.toolchain)
    return fake


def engine_config(tiny_model: Path, cache: Path, **changes) -> EngineConfig:
    base = EngineConfig(
        model=tiny_model,
        device="cpu",
        backend="tensorrt",
        chroma_size=CHROMA,
        batch_size=2,
        precision="fp32",
        cache_dir=cache,
        hue_scale=0.0,
        guide_radius=0,
    )
    return replace(base, **changes)


def images(*shapes: tuple[int, int]) -> list[GrayImage]:
    return [GrayImage(textured_gray(h, w, seed=i)) for i, (h, w) in enumerate(shapes)]


def key(**changes) -> EngineKey:
    base = EngineKey(
        model_sha256="ab" * 32,
        batch=4,
        channels=1,
        height=384,
        width=512,
        precision="fp16",
        tensorrt="10.13.0",
        torch_tensorrt="2.14.0",
        gpu="NVIDIA RTX A4000",
        capability="8.6",
    )
    return replace(base, **changes)


# -- keys and names ---------------------------------------------------------------------


def test_file_name_shows_what_the_engine_is_for():
    name = key().file_name()
    assert name.startswith("abababababab_b4_1x384x512_fp16_trt10.13.0_NVIDIA-RTX-A4000_sm86_")
    assert name.endswith(".pt2") and "/" not in name and " " not in name


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"model_sha256": "ab" * 31 + "cd"},
        {"batch": 2},
        {"channels": 4},
        {"height": 288},
        {"width": 384},
        {"precision": "fp32"},
        {"tensorrt": "10.14.0"},
        {"torch_tensorrt": "2.15.0"},
        {"gpu": "NVIDIA RTX A5000"},
        {"capability": "8.9"},
    ],
)
def test_every_key_field_gives_its_own_file(change):
    assert key(**change).file_name() != key().file_name()


def test_a_gpu_name_with_odd_characters_makes_a_safe_file_name():
    name = key(gpu="NVIDIA GeForce RTX 4090 (24 GB) / MIG 1g.5gb").file_name()
    assert "/" not in name and "(" not in name and " " not in name


# -- compile, cache, reload -------------------------------------------------------------


def events(logs: list[dict]) -> str:
    return " | ".join(f"{entry['log_level']}: {entry['event']}" for entry in logs)


@pytest.mark.slow  # a stand-in compile of every canvas shape
def test_compiles_each_canvas_shape_once_then_loads_from_the_cache(tiny_model, tmp_path, stand_in):
    cache = tmp_path / "engines"
    first = Colorizer.from_config(engine_config(tiny_model, cache))
    assert first.backend_name == "tensorrt" and first.precision == "fp32"
    assert stand_in.count("compile") == 0  # nothing compiled at start-up
    batch = images((60, 64), (30, 62), (64, 60))  # canvases 64x64 (two images) and 32x64
    with capture_logs() as logs:
        out = first.colorize(batch)
    compiles = [c for c in stand_in.calls if c[0] == "compile"]
    assert sorted(c[1] for c in compiles) == [(2, 1, 32, 64), (2, 1, 64, 64)]  # static batch 2
    assert all(c[2] == torch.float32 for c in compiles)
    assert {p.name for p in cache.iterdir()} == {
        first.backend.engine_path(s).name for s in [(32, 64), (64, 64)]
    }
    assert events(logs).count("info: compiling a TensorRT engine") == 2

    again = Colorizer.from_config(engine_config(tiny_model, cache))  # e.g. the next start
    assert [np.array_equal(a, b) for a, b in zip(again.colorize(batch), out)] == [True] * 3
    assert stand_in.count("compile") == 2 and stand_in.count("load") == 2

    eager = Colorizer.from_config(engine_config(tiny_model, cache, backend="eager", channels_last=False))
    for got, want in zip(out, eager.colorize(batch)):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.slow
def test_a_partial_batch_is_padded_to_the_engine_batch(tiny_model, tmp_path, stand_in):
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path, batch_size=3))
    seen = []
    backend = colorizer.backend
    original = backend._engine

    def spy(shape):
        engine = original(shape)
        return lambda x: (seen.append(tuple(x.shape)), engine(x))[1]

    backend._engine = spy
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    out = backend(x)
    assert seen == [(3, 1, 64, 64)] and out.shape == (1, 2, 64, 64)
    eager = colorizer.generator.model.eval()
    with torch.inference_mode():
        assert torch.allclose(out, eager(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_auto_compiles_in_the_dtype_this_cpu_runs(tiny_model, tmp_path, stand_in, monkeypatch, native_bf16):
    """The stand-in runs on the CPU, where bf16 is the reduced precision of a CPU that has
    the instructions and fp32 the fallback of one without. The CPU probe is set, so both
    are checked on any CPU (PyTorch emulates bf16 where the instructions are missing)."""
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: native_bf16)
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path, precision="auto"))
    colorizer.colorize(images((64, 64)))
    dtype, name = (torch.bfloat16, "bf16") if native_bf16 else (torch.float32, "fp32")
    assert colorizer.precision == name
    ((_, shape, example, weights),) = [c for c in stand_in.calls if c[0] == "compile"]
    assert example == dtype and weights == {dtype}
    assert f"_{name}_" in colorizer.backend.engine_path((64, 64)).name
    assert colorizer.generator.model.stem[0].weight.dtype == torch.float32  # caller's model kept


@pytest.mark.slow
def test_fp16_the_gpu_default_is_compiled_in_fp16(tiny_model, tmp_path, stand_in):
    """What auto gives on a CUDA GPU (resolve_precision: test_backends.py), compiled here on
    the CPU, which runs fp16 through PyTorch's own kernels."""
    generator = load_generator(tiny_model)
    backend = TensorRTBackend(
        generator, torch.device("cpu"), torch.float16, cache_dir=tmp_path, toolchain=stand_in.toolchain
    )
    out = backend(torch.rand(1, 1, 64, 64) * 2 - 1)
    ((_, shape, example, weights),) = [c for c in stand_in.calls if c[0] == "compile"]
    assert example == torch.float16 and weights == {torch.float16} and out.dtype == torch.float16
    assert backend.precision == "fp16" and "_fp16_" in backend.engine_path((64, 64)).name
    assert generator.model.stem[0].weight.dtype == torch.float32


@pytest.mark.slow  # stand-in compiles for two builds
def test_a_new_gpu_or_tensorrt_build_compiles_anew(tiny_model, tmp_path, monkeypatch):
    steps = [
        ("GPU A", "10.0", "compile"),
        ("GPU A", "10.0", "load"),
        ("GPU B", "10.0", "compile"),
        ("GPU B", "10.1", "compile"),
    ]
    for gpu, version, expected in steps:
        fake = StandIn(gpu=gpu, tensorrt_version=version)
        monkeypatch.setattr(tensorrt, "detect_toolchain", lambda device, fake=fake: fake.toolchain)
        Colorizer.from_config(engine_config(tiny_model, tmp_path)).colorize(images((64, 64)))
        assert (fake.count("compile"), fake.count("load")) == ((1, 0) if expected == "compile" else (0, 1))
    assert len(list(tmp_path.glob("*.pt2"))) == 3


@pytest.mark.slow
def test_an_unreadable_cache_file_is_compiled_again(tiny_model, tmp_path, stand_in):
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path))
    path = colorizer.backend.engine_path((64, 64))
    path.write_bytes(b"not an exported program")
    with capture_logs() as logs:
        colorizer.colorize(images((64, 64)))
    assert stand_in.count("compile") == 1
    assert "warning: cached TensorRT engine cannot be loaded; compiling it again" in events(logs)
    assert path.stat().st_size > 100
    torch.export.load(str(path))  # the replacement is whole


@pytest.mark.slow
def test_a_failed_compilation_runs_that_shape_in_eager_pytorch(tiny_model, tmp_path, monkeypatch):
    fake = StandIn(fail_compile=True)
    monkeypatch.setattr(tensorrt, "detect_toolchain", lambda device: fake.toolchain)
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path))
    with capture_logs() as logs:
        out = colorizer.colorize(images((64, 64), (64, 60)))
    eager = Colorizer.from_config(engine_config(tiny_model, tmp_path, backend="eager", channels_last=False))
    for got, want in zip(out, eager.colorize(images((64, 64), (64, 60)))):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert fake.count("compile") == 1  # not retried for every batch
    assert "error: TensorRT compilation failed; this canvas shape runs in eager PyTorch" in events(logs)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_an_engine_that_cannot_be_saved_still_runs(tiny_model, tmp_path, monkeypatch):
    fake = StandIn(fail_save=True)
    monkeypatch.setattr(tensorrt, "detect_toolchain", lambda device: fake.toolchain)
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path))
    with capture_logs() as logs:
        colorizer.colorize(images((64, 64)))
    assert "warning: compiled TensorRT engine not saved; it will be compiled again next start" in events(logs)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_no_cache_folder_is_an_error(tiny_model, stand_in):
    with pytest.raises(EngineError, match="engine.cache_dir is not set"):
        Colorizer.from_config(engine_config(tiny_model, None))


# -- what is missing --------------------------------------------------------------------


def test_missing_cuda_and_torch_tensorrt_are_named_in_one_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(EngineError) as err:
        Colorizer.from_config(engine_config(tiny_model, tmp_path))
    message = str(err.value)
    assert message == (
        "the tensorrt backend needs a CUDA GPU (PyTorch sees none) and "
        "torch-tensorrt (not installed: pip install 'semwatch[tensorrt]')"
    )


def test_only_what_is_missing_is_named(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_tensorrt" else real_find_spec(name, *a),
    )
    with pytest.raises(EngineError, match=r"^the tensorrt backend needs torch-tensorrt \(not installed"):
        tensorrt.detect_toolchain(torch.device("cuda"))
    with pytest.raises(EngineError, match=r"needs a CUDA device \(engine.device is 'cpu'\)"):
        tensorrt.detect_toolchain(torch.device("cpu"))


def test_this_machine_has_neither(tmp_path, tiny_model):
    if torch.cuda.is_available() or importlib.util.find_spec("torch_tensorrt"):
        pytest.skip("this machine has CUDA or torch-tensorrt")
    with pytest.raises(EngineError, match="needs a CUDA GPU .* and torch-tensorrt"):
        Colorizer.from_config(engine_config(tiny_model, tmp_path))


# -- semwatch compile -------------------------------------------------------------------


def write_config(tmp_path: Path, tiny_model: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[engine]\nmodel = "{tiny_model}"\ndevice = "cpu"\nbackend = "tensorrt"\n'
        f'chroma_size = {CHROMA}\nbatch_size = 2\nprecision = "fp32"\n'
        '[daemon]\nstate_dir = "state"\n[logging]\nformat = "console"\n'
    )
    return config


@pytest.mark.slow  # a stand-in compile of every canvas shape
def test_compile_command_builds_every_canvas_shape_then_finds_them(tiny_model, tmp_path, stand_in):
    config = write_config(tmp_path, tiny_model)
    result = CliRunner().invoke(main, ["compile", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(("compiled", "cached"))]
    assert len(lines) == 4 and all(line.startswith("compiled") for line in lines)
    assert all(" batch 2 fp32 " in line for line in lines)
    engines = tmp_path / "state" / "engines"
    assert len(list(engines.glob("*.pt2"))) == 4
    assert stand_in.count("compile") == 4

    result = CliRunner().invoke(
        main, ["compile", "--config", str(config), "--shape", "32x64", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(("compiled", "cached"))]
    assert line.startswith("cached   32x64 batch 2 fp32")
    assert stand_in.count("compile") == 4


def test_compile_command_rejects_a_bad_shape(tiny_model, tmp_path):
    result = CliRunner().invoke(
        main, ["compile", "--config", str(write_config(tmp_path, tiny_model)), "--shape", "100x64"]
    )
    assert result.exit_code == 2 and "multiples of 32" in result.output


def test_compile_command_without_tensorrt_says_what_is_missing(tiny_model, tmp_path):
    if torch.cuda.is_available() or importlib.util.find_spec("torch_tensorrt"):
        pytest.skip("this machine has CUDA or torch-tensorrt")
    result = CliRunner().invoke(main, ["compile", "--config", str(write_config(tmp_path, tiny_model))])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: the tensorrt backend needs a CUDA GPU (PyTorch sees none) and "
        "torch-tensorrt (not installed: pip install 'semwatch[tensorrt]')"
    ]


def test_backend_is_a_tensorrt_backend_with_the_seam(tiny_model, tmp_path, stand_in):
    colorizer = Colorizer.from_config(engine_config(tiny_model, tmp_path))
    assert isinstance(colorizer.backend, TensorRTBackend)
    assert colorizer.backend.toolchain is stand_in.toolchain
