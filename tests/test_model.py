import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18

from semwatch.model import (
    FORMAT_NAME,
    GeneratorConfig,
    ModelError,
    build_generator,
    load_generator,
    load_imagenet_encoder,
    read_generator_metadata,
    save_generator,
)


def small() -> GeneratorConfig:
    return GeneratorConfig(decoder_width=8)


def test_forward_shape_and_range():
    model = build_generator(small()).eval()
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 2, 64, 96)
    assert y.abs().max() <= 1.0


def test_default_width_is_the_lean_network():
    params = sum(p.numel() for p in build_generator().parameters())
    assert 13e6 < params < 16e6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_save_load_round_trip(tmp_path, dtype):
    torch.manual_seed(0)
    model = build_generator(small()).eval()
    path = tmp_path / "g.safetensors"
    sha = save_generator(path, model, small(), {"name": "unit", "metrics": {"x": 1}}, dtype=dtype)
    loaded = load_generator(path)
    assert loaded.sha256 == sha and loaded.name == "unit"
    assert loaded.config == small() and loaded.card["metrics"] == {"x": 1}
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        diff = (loaded.model(x) - model(x)).abs().max().item()
    assert diff == 0.0 if dtype == torch.float32 else diff < 2e-2
    assert not list(tmp_path.glob(".semwatch-tmp-*"))


def test_file_is_plain_safetensors(tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(path, build_generator(small()), small())
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == FORMAT_NAME
    assert json.loads(header["__metadata__"]["architecture"])["decoder_width"] == 8


def test_rejects_foreign_and_future_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_generator(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ModelError, match="not a semwatch generator"):
        load_generator(other)
    future = tmp_path / "future.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(future),
        metadata={"format": FORMAT_NAME, "format_version": "99", "architecture": "{}"},
    )
    with pytest.raises(ModelError, match="version 99"):
        read_generator_metadata(future)
    with pytest.raises(ModelError, match="not found"):
        load_generator(tmp_path / "missing.safetensors")


def test_rejects_weights_that_do_not_fit_the_architecture(tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(path, build_generator(small()), GeneratorConfig(decoder_width=16))
    with pytest.raises(ModelError, match="do not match"):
        load_generator(path)


def test_pickled_checkpoint_is_not_a_generator_file(tmp_path):
    path = tmp_path / "g.pt"
    torch.save(build_generator(small()).state_dict(), path)
    with pytest.raises(ModelError):
        load_generator(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_imagenet_encoder_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(3)
    reference = resnet18(weights=None)
    state = reference.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_generator(small(), pretrained_encoder=path)
    summed = state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.stem[0].weight, summed)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.stem[1].running_var, state["bn1.running_var"])


def test_imagenet_encoder_rejects_other_files(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="resnet18"):
        load_imagenet_encoder(build_generator(small()), path)
