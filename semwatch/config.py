"""Configuration: config.toml -> typed dataclasses.

Every key has a default so a missing file section is fine; an unknown key or a value of
the wrong type is a ConfigError naming the key, the value and the file. Relative paths are
resolved against the folder of the config file, so the same file works whatever the
daemon's working directory is.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_VAR = "SEMWATCH_CONFIG"
SYSTEM_CONFIG = Path("/etc/semwatch/config.toml")
# sysexits.h EX_CONFIG: a wrong configuration. systemd's RestartPreventExitStatus=78 keeps
# the unit from restarting into the same error every 10 s.
EXIT_CONFIG = 78


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names key, value and file."""


@dataclass(frozen=True)
class WatchConfig:
    input_dir: Path = Path("inbox")
    patterns: tuple[str, ...] = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.bmp")
    recursive: bool = True
    polling: bool = False
    poll_interval: float = 10.0
    settle_seconds: float = 5.0
    scan_interval: float = 300.0


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = Path("outbox")
    format: Literal["tiff", "png", "jpeg"] = "tiff"
    jpeg_quality: int = 95
    # Suffixes of sidecar metadata files copied beside the output (semwatch.sidecars).
    sidecars: tuple[str, ...] = (".txt", ".hdr")


@dataclass(frozen=True)
class QueueConfig:
    database_url: str = "sqlite:///var/semwatch.db"
    lease_seconds: float = 600.0
    max_attempts: int = 3
    retry_backoff: float = 30.0


@dataclass(frozen=True)
class EngineConfig:
    # None: the generator bundled with the package (semwatch/models/default.safetensors).
    model: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "eager", "tensorrt"] = "auto"
    batch_size: int = 4
    max_batch_wait: float = 2.0
    chroma_size: int = 512
    max_pixels: int = 200_000_000
    # The most memory, in MB, that decoding and colorizing one image may take, estimated from
    # its header (semwatch/imaging/budget.py); the service and the web UI refuse an image
    # that needs more. 0: half of this machine's physical memory.
    max_image_mb: int = 0
    threads: int = 0
    guide_radius: int = 8
    guide_eps: float = 0.01
    hue_scale: float = 0.0
    region_hue: float = 1.0
    region_size: int = 192
    region_scale: float = 400.0
    chroma_gain: float = 0.95
    # How the network runs (semwatch/backends.py): its dtype (auto: bf16 on a CPU with
    # native bf16, fp16 on CUDA, else fp32) and NHWC memory layout (auto: on).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    # Compiled TensorRT engines (backend = "tensorrt"); None: <daemon.state_dir>/engines.
    cache_dir: Path | None = None
    # The service's default style file (semwatch.styles); a watch folder's own
    # semwatch-style.json, the nearest up the tree, wins. None: automatic colour.
    style: Path | None = None


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("var")
    # What this process does (semwatch.queue.ROLES): watch and colorize, or one of the two
    # (several hosts on one PostgreSQL queue).
    role: Literal["all", "watcher", "worker"] = "all"
    shutdown_timeout: float = 60.0
    decode_threads: int = 2
    write_threads: int = 2


@dataclass(frozen=True)
class AppConfig:
    """The web UI (`semwatch app`, semwatch/app/)."""

    # Loopback by default: binding to a network address is the admin's explicit choice.
    host: str = "127.0.0.1"
    port: int = 8501
    max_upload_mb: int = 200  # uploads above this are refused (server and page)
    # Long side, in pixels, of the copies shown in the browser (and clicked for hints); the
    # full-resolution image is colorized and downloaded. Keeps each page update small.
    preview_size: int = 1024


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics of the daemon (semwatch/metrics.py)."""

    # "host:port" (IPv6: "[::1]:9464") to serve /metrics on; None: no metrics server.
    listen: str | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when metrics are off."""
        return None if self.listen is None else parse_listen(self.listen)


@dataclass(frozen=True)
class TrainerConfig:
    image_size: int = 256
    val_fraction: float = 0.1
    seed: int = 0
    batch_size: int = 16
    workers: int = 2
    decoder_width: int = 64
    pretrain_epochs: int = 20
    pretrain_lr: float = 2e-4
    patience: int = 5
    gan_epochs: int = 20
    gan_loss: Literal["bce", "lsgan"] = "bce"
    lambda_l1: float = 20.0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    pretrained_encoder: Path | None = None
    # Added for the training loops (trainer/loops.py documents their use):
    crop_min: float = 0.5  # smallest random crop side / short side of the (cached) image
    cache_images: bool = True  # keep decoded, down-scaled training images in RAM
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision: fp16 on CUDA, bf16 on a CPU with native bf16
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 caps steps (quick runs, benchmarks)
    sample_images: int = 4  # validation images shown in samples/<stage>_<epoch>.png
    # Colour hints (trainer/hints.py): train a 4-channel generator on simulated hints.
    # None: the --init generator decides (hint channels or not); from scratch, no hints.
    hints: bool | None = None
    hint_none_share: float = 0.3  # share of training items with no hint
    hint_mean_points: float = 8.0  # mean number of hints on the others (geometric)
    # Global palette input (semwatch/palette.py): None: the --init generator decides.
    palette: bool | None = None
    palette_share: float = 0.5  # share of training items shown their truth's palette
    # Class rebalancing of the L1 loss (Zhang et al. 2016): 0 = off; r weights each pixel
    # by 1 / (r * prior(its ab bin) + (1 - r) / bins), so rare colours count more.
    rebalance: float = 0.0


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    app: AppConfig = field(default_factory=AppConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # The file this came from (None: built-in defaults); relative paths were resolved
    # against its folder.
    source: Path | None = None


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Lookup order: --config, $SEMWATCH_CONFIG, ./config.toml, /etc/semwatch/config.toml."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (given with --config)")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (named by ${ENV_VAR})")
        return path
    for candidate in (Path("config.toml"), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the configuration; built-in defaults if there is no file at all."""
    path = find_config_file(explicit)
    if path is None:
        return resolve_paths(Config(), Path.cwd())
    return load_config_file(path)


def load_config_file(path: Path) -> Config:
    path = Path(path).absolute()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    config = parse_config(raw, path)
    return resolve_paths(config, path.parent)


def parse_config(raw: Mapping[str, Any], path: Path | None = None) -> Config:
    """Build a Config from a TOML mapping, checking every key and value."""
    where = str(path) if path else "<config>"
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "source" or name not in hints:
            raise ConfigError(f"{where}: unknown section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {value!r}")
        sections[name] = _parse_section(hints[name], name, value, where)
    return Config(**sections, source=path)


def _parse_section(cls: type, section: str, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{where}: unknown key {section}.{key} (known: {known})")
        try:
            values[key] = _coerce(hints[key], value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {section}.{key} = {value!r}: {exc}") from None
    instance = cls(**values)
    _check_ranges(instance, section, where)
    return instance


def _coerce(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value == "" and type(None) in args:
            return None  # TOML has no null: an empty string means "not set"
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ValueError("must be one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise TypeError("expected a list")
        return tuple(_coerce(args[0], v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise TypeError("expected a path (a non-empty string)")
        return Path(value).expanduser()
    raise TypeError(f"unsupported type {hint}")  # pragma: no cover - programming error


_POSITIVE = {
    ("watch", "poll_interval"),
    ("watch", "scan_interval"),
    ("queue", "lease_seconds"),
    ("queue", "max_attempts"),
    ("engine", "batch_size"),
    ("engine", "chroma_size"),
    ("engine", "max_pixels"),
    ("daemon", "shutdown_timeout"),
    ("daemon", "decode_threads"),
    ("daemon", "write_threads"),
    ("trainer", "image_size"),
    ("trainer", "batch_size"),
    ("trainer", "decoder_width"),
    ("engine", "region_size"),
    ("engine", "region_scale"),
    ("engine", "chroma_gain"),
    ("app", "max_upload_mb"),
    ("app", "preview_size"),
}
_NON_NEGATIVE = {
    ("engine", "max_image_mb"),
    ("watch", "settle_seconds"),
    ("queue", "retry_backoff"),
    ("engine", "max_batch_wait"),
    ("engine", "threads"),
    ("engine", "guide_radius"),
    ("engine", "guide_eps"),
    ("engine", "hue_scale"),
    ("engine", "region_hue"),
    ("trainer", "workers"),
    ("trainer", "pretrain_epochs"),
    ("trainer", "gan_epochs"),
    ("trainer", "lambda_l1"),
    ("trainer", "patience"),
    ("trainer", "max_steps_per_epoch"),
    ("trainer", "sample_images"),
    ("trainer", "pretrain_lr"),
    ("trainer", "lr_g"),
    ("trainer", "lr_d"),
}


def _check_ranges(instance: Any, section: str, where: str) -> None:
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        key = (section, f.name)
        if key in _POSITIVE and not value > 0:
            raise ConfigError(f"{where}: {section}.{f.name} = {value!r}: must be > 0")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{where}: {section}.{f.name} = {value!r}: must be >= 0")
    if section == "engine" and instance.chroma_size % 32:
        raise ConfigError(
            f"{where}: engine.chroma_size = {instance.chroma_size}: must be a multiple of 32 "
            "(the generator's stride)"
        )
    if section == "engine" and instance.region_hue > 1:
        raise ConfigError(f"{where}: engine.region_hue = {instance.region_hue}: must be in [0, 1]")
    if section == "app" and not 1 <= instance.port <= 65535:
        raise ConfigError(f"{where}: app.port = {instance.port}: must be 1-65535")
    if section == "app" and not instance.host:
        raise ConfigError(f"{where}: app.host must not be empty (127.0.0.1: this machine only)")
    if section == "metrics" and instance.listen is not None:
        try:
            parse_listen(instance.listen)
        except ValueError as exc:
            raise ConfigError(f"{where}: metrics.listen = {instance.listen!r}: {exc}") from None
    if section == "output" and not 1 <= instance.jpeg_quality <= 100:
        raise ConfigError(f"{where}: output.jpeg_quality = {instance.jpeg_quality}: must be 1-100")
    if section == "output":
        _check_sidecars(instance.sidecars, where)
    if section == "trainer" and not 0.0 <= instance.val_fraction < 1.0:
        raise ConfigError(f"{where}: trainer.val_fraction = {instance.val_fraction}: must be in [0, 1)")
    if section == "trainer" and not 0.0 < instance.crop_min <= 1.0:
        raise ConfigError(f"{where}: trainer.crop_min = {instance.crop_min}: must be in (0, 1]")
    if section == "trainer" and not 0.0 <= instance.hint_none_share <= 1.0:
        raise ConfigError(f"{where}: trainer.hint_none_share = {instance.hint_none_share}: must be in [0, 1]")
    if section == "trainer" and not 0.0 <= instance.palette_share <= 1.0:
        raise ConfigError(f"{where}: trainer.palette_share = {instance.palette_share}: must be in [0, 1]")
    if section == "trainer" and not 0.0 <= instance.rebalance < 1.0:
        raise ConfigError(f"{where}: trainer.rebalance = {instance.rebalance}: must be in [0, 1)")
    if section == "trainer" and instance.hint_mean_points < 1.0:
        raise ConfigError(f"{where}: trainer.hint_mean_points = {instance.hint_mean_points}: must be >= 1")


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" or "[v6 address]:port" into (host, port); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port", e.g. "127.0.0.1:9464" (this machine only)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 address goes in brackets: "[::1]:9464"')
    if not host:
        raise ValueError('the host is empty; "127.0.0.1:9464" serves this machine only')
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return host, int(port)


_SIDECAR_SUFFIX = re.compile(r"^\.[A-Za-z0-9_-]+$")


def _check_sidecars(suffixes: tuple[str, ...], where: str) -> None:
    # Imported here: the image suffixes live with the decoders, which most commands that
    # only read the configuration (status, enqueue) never load otherwise.
    from semwatch.imaging import SUPPORTED_SUFFIXES

    for suffix in suffixes:
        if not _SIDECAR_SUFFIX.match(suffix):
            raise ConfigError(
                f"{where}: output.sidecars: {suffix!r} is not a file suffix "
                'like ".txt" (a dot, then letters or digits)'
            )
        if suffix.lower() in SUPPORTED_SUFFIXES:
            raise ConfigError(
                f"{where}: output.sidecars: {suffix!r} is an image suffix; "
                "images are colorized, not copied as sidecars"
            )


def resolve_paths(config: Config, base: Path) -> Config:
    """Make every relative path (and a relative sqlite URL) relative to `base`."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        return p if p.is_absolute() else (base / p)

    return dataclasses.replace(
        config,
        watch=dataclasses.replace(config.watch, input_dir=fix(config.watch.input_dir)),
        output=dataclasses.replace(config.output, dir=fix(config.output.dir)),
        queue=dataclasses.replace(
            config.queue, database_url=_resolve_sqlite_url(config.queue.database_url, base)
        ),
        engine=dataclasses.replace(
            config.engine,
            model=fix(config.engine.model),
            style=fix(config.engine.style),
            # The service's state folder is where it may write (systemd ReadWritePaths).
            cache_dir=fix(config.engine.cache_dir) or fix(config.daemon.state_dir) / "engines",
        ),
        daemon=dataclasses.replace(config.daemon, state_dir=fix(config.daemon.state_dir)),
        trainer=dataclasses.replace(
            config.trainer, pretrained_encoder=fix(config.trainer.pretrained_encoder)
        ),
    )


def _resolve_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith("/") or rest == ":memory:":
        return url
    return prefix + str(base / rest)
