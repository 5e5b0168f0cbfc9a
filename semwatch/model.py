"""The generator (ResNet18 U-Net) and its file format.

A generator file is safetensors weights plus JSON metadata: the format name and version,
the architecture's hyper-parameters (so a file rebuilds its own network) and a model card
(training data, recipe, metrics, creation time). Loading never unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18

from semwatch.errors import one_line
from semwatch.fsutil import atomic_path
from semwatch.hashing import sha256_file as file_sha256  # the name trainer/ imports
from semwatch.palette import PALETTE_COLOURS, PALETTE_PLANES

FORMAT_NAME = "semwatch-generator"
FORMAT_VERSION = 1
# Every input side must be a multiple of this (five stride-2 stages in the encoder).
STRIDE = 32
# Input channels: L alone (automatic), or L + hint a + hint b + hint mask (semwatch.hints).
INPUT_CHANNELS = (1, 4)
# Palette colours a generator takes (semwatch.palette): none, or PALETTE_COLOURS.
PALETTE_SIZES = (0, PALETTE_COLOURS)
# Width of the small network that turns a palette into bottleneck offsets.
_PALETTE_HIDDEN = 256


class ModelError(ValueError):
    """A generator file that cannot be used; str() names the file and the reason."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture hyper-parameters, stored in every generator file."""

    encoder: str = "resnet18"
    # Channels of the decoder's first (coarsest) stage / 4; stages halve from there.
    # 64 gives the lean ~14M-parameter network (11.2M of it the encoder).
    decoder_width: int = 64
    in_channels: int = 1  # image planes: L, or L + the three hint planes
    out_channels: int = 2
    # Global palette input (Zhang et al. 2017's global hints): 0 or PALETTE_COLOURS colours,
    # given as PALETTE_PLANES constant planes after the image planes.
    palette_colours: int = 0

    @property
    def input_channels(self) -> int:
        """Channels of the whole network input: image planes, then the palette planes."""
        return self.in_channels + (PALETTE_PLANES if self.palette_colours else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        config = cls(**data)
        if config.encoder != "resnet18":
            raise ValueError(f"unsupported encoder {config.encoder!r}")
        if config.in_channels not in INPUT_CHANNELS:
            raise ValueError(f"in_channels must be one of {INPUT_CHANNELS}, got {config.in_channels}")
        if config.palette_colours not in PALETTE_SIZES:
            raise ValueError(f"palette_colours must be one of {PALETTE_SIZES}, got {config.palette_colours}")
        if config.decoder_width < 8 or config.decoder_width % 4:
            raise ValueError(f"decoder_width must be a multiple of 4 and >= 8, got {config.decoder_width}")
        return config


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UpStage(nn.Module):
    """Bilinear x2 up-sampling (no checkerboard), concatenation with the skip, two convs."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv = _conv_block(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat((x, skip), dim=1))


class UNetGenerator(nn.Module):
    """ResNet18 encoder, U-Net decoder, tanh output of ab/110.

    Input: (N, input_channels, H, W), H and W multiples of 32: L/50 - 1, then (when
    ``in_channels`` is 4) hint a/110, hint b/110 and the hint mask, then (when
    ``palette_colours``) the palette planes. Output: (N, 2, H, W).

    The palette is global, so it skips the convolutions: its planes' spatial mean goes
    through a small MLP whose output, times the palette's presence flag, is added to the
    bottleneck and to the first decoder stage (where Zhang et al. 2017 inject their global
    hints). The MLP's last layer starts at zero, so a widened network first answers exactly
    as before; with no palette given it always does.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(config.in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu)  # /2, 64
        self.pool = backbone.maxpool
        self.layer1 = backbone.layer1  # /4, 64
        self.layer2 = backbone.layer2  # /8, 128
        self.layer3 = backbone.layer3  # /16, 256
        self.layer4 = backbone.layer4  # /32, 512
        w = config.decoder_width
        self.up4 = UpStage(512, 256, 4 * w)  # /16
        self.up3 = UpStage(4 * w, 128, 2 * w)  # /8
        self.up2 = UpStage(2 * w, 64, w)  # /4
        self.up1 = UpStage(w, 64, w // 2)  # /2
        # The full-resolution stage sees the input itself, so edges stay where L has them.
        self.up0 = UpStage(w // 2, config.in_channels, w // 4)  # /1
        self.head = nn.Conv2d(w // 4, config.out_channels, 3, padding=1)
        self.palette = _palette_net(512 + 4 * w) if config.palette_colours else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = x[:, self.config.in_channels :]
        x = x[:, : self.config.in_channels]
        f1 = self.stem(x)
        f2 = self.layer1(self.pool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        offsets = None
        if self.palette is not None:
            values = planes.mean(dim=(2, 3)).to(f5.dtype)
            # Gated by the presence flag (the last value): without a palette the network is
            # exactly the one without palette input, whatever the palette network learned.
            offsets = (self.palette(values) * values[:, -1:])[:, :, None, None]
            f5 = f5 + offsets[:, :512]
        y = self.up4(f5, f4)
        if offsets is not None:
            y = y + offsets[:, 512:]
        y = self.up3(y, f3)
        y = self.up2(y, f2)
        y = self.up1(y, f1)
        y = self.up0(y, x)
        return torch.tanh(self.head(y))

    @property
    def takes_hints(self) -> bool:
        return self.config.in_channels > 1

    @property
    def takes_palette(self) -> bool:
        return self.config.palette_colours > 0


def _palette_net(out_features: int) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(PALETTE_PLANES, _PALETTE_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(_PALETTE_HIDDEN, _PALETTE_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(_PALETTE_HIDDEN, out_features),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def add_palette_input(model: UNetGenerator) -> UNetGenerator:
    """A copy of ``model`` that also takes a palette; its palette network's last layer is
    zero, so it answers exactly like ``model`` until trained."""
    if model.config.palette_colours:
        return model
    config = GeneratorConfig(**{**model.config.to_dict(), "palette_colours": PALETTE_COLOURS})
    wide = UNetGenerator(config)
    state = wide.state_dict()
    state.update(model.state_dict())
    wide.load_state_dict(state, strict=True)
    return wide.train(model.training)


def widen_input(model: UNetGenerator, in_channels: int) -> UNetGenerator:
    """A copy of ``model`` that takes ``in_channels`` inputs; the new channels start at zero.

    Zero weights make the widened network answer exactly like the original whatever the
    new channels hold, so fine-tuning starts from the old model's colour and learns to use
    the hints (Zhang et al. 2017 widen the same way). The input enters the network twice:
    the encoder's stem and the full-resolution decoder stage, whose input is
    ``cat(features, x)`` (the input's channels last).
    """
    old = model.config.in_channels
    if in_channels == old:
        return model
    if in_channels < old:
        raise ValueError(f"cannot narrow a generator from {old} to {in_channels} input channels")
    config = GeneratorConfig(**{**model.config.to_dict(), "in_channels": in_channels})
    wide = UNetGenerator(config)
    state = model.state_dict()
    for key in ("stem.0.weight", "up0.conv.0.weight"):
        weight = state[key]
        extra = torch.zeros(weight.shape[0], in_channels - old, *weight.shape[2:], dtype=weight.dtype)
        state[key] = torch.cat((weight, extra), dim=1)
    wide.load_state_dict(state, strict=True)
    return wide.train(model.training)


def build_generator(
    config: GeneratorConfig = GeneratorConfig(), *, pretrained_encoder: Path | None = None
) -> UNetGenerator:
    """A new generator; with ``pretrained_encoder``, its encoder starts from ImageNet weights."""
    model = UNetGenerator(config)
    if pretrained_encoder is not None:
        load_imagenet_encoder(model, pretrained_encoder)
    return model


def load_imagenet_encoder(model: UNetGenerator, path: Path) -> None:
    """Initialise the encoder from a local torchvision ``resnet18`` state-dict file.

    Accepts torchvision's ``resnet18-*.pth`` (loaded with ``weights_only=True``) or a
    safetensors file with the same keys. The RGB stem is summed over its input channels:
    a gray image fed to the summed filter answers like the RGB network to (g, g, g).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read ImageNet encoder weights: {exc}") from exc
    if not isinstance(state, Mapping) or "conv1.weight" not in state:
        raise ModelError(f"{path}: not a torchvision resnet18 state dict (no conv1.weight)")
    conv1 = state["conv1.weight"]
    if conv1.shape[1] != model.config.in_channels:
        conv1 = conv1.sum(dim=1, keepdim=True).repeat(1, model.config.in_channels, 1, 1)
        conv1 = conv1 / model.config.in_channels
    mapping = {"conv1.": "stem.0.", "bn1.": "stem.1."}
    encoder_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        target = key
        for old, new in mapping.items():
            if key.startswith(old):
                target = new + key[len(old) :]
        encoder_state[target] = conv1 if key == "conv1.weight" else value
    missing, unexpected = model.load_state_dict(encoder_state, strict=False)
    encoder_missing = [k for k in missing if not k.startswith(("up", "head"))]
    if encoder_missing or unexpected:
        raise ModelError(
            f"{path}: encoder weights do not fit resnet18 "
            f"(missing {encoder_missing[:3]}, unexpected {unexpected[:3]})"
        )


@dataclass
class LoadedGenerator:
    model: UNetGenerator
    config: GeneratorConfig
    card: dict[str, Any]
    path: Path
    sha256: str
    name: str = field(default="")


def save_generator(
    path: Path,
    model: nn.Module,
    config: GeneratorConfig,
    card: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write a generator file atomically; returns its SHA-256. Integer buffers stay integer."""
    path = Path(path)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps(config.to_dict()),
        "card": json.dumps(dict(card or {}), default=str),
    }
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return file_sha256(path)


def read_generator_metadata(path: Path) -> tuple[GeneratorConfig, dict[str, Any]]:
    """Architecture and model card of a generator file, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a safetensors generator file ({one_line(exc)})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(
            f"{path}: not a semwatch generator file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ModelError(f"{path}: bad format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION or version < 1:
        raise ModelError(
            f"{path}: generator format version {version} is not supported by this semwatch "
            f"(supports 1..{FORMAT_VERSION}); upgrade semwatch"
        )
    try:
        config = GeneratorConfig.from_dict(json.loads(meta.get("architecture", "{}")))
        card = json.loads(meta.get("card", "{}"))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: bad generator metadata: {one_line(exc)}") from exc
    return config, card


def load_generator(path: Path, *, device: torch.device | str = "cpu") -> LoadedGenerator:
    """Load a generator file (float32 on ``device``, eval mode)."""
    path = Path(path)
    config, card = read_generator_metadata(path)
    model = UNetGenerator(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read weights ({one_line(exc)})") from exc
    reference = model.state_dict()
    state = {k: (v.to(reference[k].dtype) if k in reference else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not match the stored architecture: {one_line(exc)}") from exc
    model.to(device).eval()
    name = str(card.get("name") or path.stem)
    return LoadedGenerator(model, config, card, path, file_sha256(path), name)


def default_model_path() -> Path:
    """The generator bundled with the package (trained on the semcolour set)."""
    return Path(__file__).resolve().parent / "models" / "default.safetensors"
