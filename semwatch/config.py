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
from collections.abc import Callable, Mapping
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
class Bounds:
    """The range a number key must lie in; open ends exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        # Written as "not within" so that a NaN from TOML (nan) is refused too.
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or bool(value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        """'> 0', '>= 1', '1-100' (integers), '[0, 1)' — the text after 'must be'."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        if integer and not (self.low_open or self.high_open):
            return f"{low}-{high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


POSITIVE = Bounds(low=0, low_open=True)
NON_NEGATIVE = Bounds(low=0)
UNIT = Bounds(0, 1)  # a share: [0, 1]


def setting(
    default: Any,
    *,
    help: str = "",
    bounds: Bounds | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A config key's default with its rules beside it: `bounds` for numbers, `check` for
    anything else (raises ValueError with the text after "key = value: "), `help` for the
    command-line options generated from the field (trainer/cli.py)."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "check": check})


def _multiple_of_stride(chroma_size: int) -> None:
    if chroma_size % 32:
        raise ValueError("must be a multiple of 32 (the generator's stride)")


def _not_empty_host(host: str) -> None:
    if not host:
        raise ValueError("must not be empty (127.0.0.1: this machine only)")


def _listen_address(listen: str | None) -> None:
    if listen is not None:
        parse_listen(listen)


_SIDECAR_SUFFIX = re.compile(r"^\.[A-Za-z0-9_-]+$")


def _sidecar_suffixes(suffixes: tuple[str, ...]) -> None:
    # Imported here: the image suffixes live with the decoders, which most commands that
    # only read the configuration (status, enqueue) never load otherwise.
    from semwatch.imaging import SUPPORTED_SUFFIXES

    for suffix in suffixes:
        if not _SIDECAR_SUFFIX.match(suffix):
            raise ValueError(f'{suffix!r} is not a file suffix like ".txt" (a dot, then letters or digits)')
        if suffix.lower() in SUPPORTED_SUFFIXES:
            raise ValueError(f"{suffix!r} is an image suffix; images are colorized, not copied as sidecars")


@dataclass(frozen=True)
class WatchConfig:
    input_dir: Path = Path("inbox")
    patterns: tuple[str, ...] = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.bmp")
    recursive: bool = True
    polling: bool = False
    poll_interval: float = setting(10.0, bounds=POSITIVE)
    settle_seconds: float = setting(5.0, bounds=NON_NEGATIVE)
    scan_interval: float = setting(300.0, bounds=POSITIVE)


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = Path("outbox")
    format: Literal["tiff", "png", "jpeg"] = "tiff"
    jpeg_quality: int = setting(95, bounds=Bounds(1, 100))
    # Suffixes of sidecar metadata files copied beside the output (semwatch.sidecars).
    sidecars: tuple[str, ...] = setting((".txt", ".hdr"), check=_sidecar_suffixes)


@dataclass(frozen=True)
class QueueConfig:
    database_url: str = "sqlite:///var/semwatch.db"
    lease_seconds: float = setting(600.0, bounds=POSITIVE)
    max_attempts: int = setting(3, bounds=POSITIVE)
    retry_backoff: float = setting(30.0, bounds=NON_NEGATIVE)


@dataclass(frozen=True)
class EngineConfig:
    # None: the generator bundled with the package (semwatch/models/default.safetensors).
    model: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "eager", "tensorrt"] = "auto"
    batch_size: int = setting(4, bounds=POSITIVE)
    max_batch_wait: float = setting(2.0, bounds=NON_NEGATIVE)
    chroma_size: int = setting(512, bounds=POSITIVE, check=_multiple_of_stride)
    max_pixels: int = setting(200_000_000, bounds=POSITIVE)
    # The most memory, in MB, that decoding and colorizing one image may take, estimated from
    # its header (semwatch/imaging/budget.py); the service and the web UI refuse an image
    # that needs more. 0: half of this machine's physical memory.
    max_image_mb: int = setting(0, bounds=NON_NEGATIVE)
    threads: int = setting(0, bounds=NON_NEGATIVE)
    guide_radius: int = setting(8, bounds=NON_NEGATIVE)
    guide_eps: float = setting(0.01, bounds=NON_NEGATIVE)
    hue_scale: float = setting(0.0, bounds=NON_NEGATIVE)
    region_hue: float = setting(1.0, bounds=UNIT)
    region_size: int = setting(192, bounds=POSITIVE)
    region_scale: float = setting(400.0, bounds=POSITIVE)
    chroma_gain: float = setting(0.95, bounds=POSITIVE)
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
    shutdown_timeout: float = setting(60.0, bounds=POSITIVE)
    decode_threads: int = setting(2, bounds=POSITIVE)
    write_threads: int = setting(2, bounds=POSITIVE)


@dataclass(frozen=True)
class AppConfig:
    """The web UI (`semwatch app`, semwatch/app/)."""

    # Loopback by default: binding to a network address is the admin's explicit choice.
    host: str = setting("127.0.0.1", check=_not_empty_host)
    port: int = setting(8501, bounds=Bounds(1, 65535))
    max_upload_mb: int = setting(200, bounds=POSITIVE)  # uploads above this are refused (server and page)
    # Long side, in pixels, of the copies shown in the browser (and clicked for hints); the
    # full-resolution image is colorized and downloaded. Keeps each page update small.
    preview_size: int = setting(1024, bounds=POSITIVE)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics of the daemon (semwatch/metrics.py)."""

    # "host:port" (IPv6: "[::1]:9464") to serve /metrics on; None: no metrics server.
    listen: str | None = setting(None, check=_listen_address)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when metrics are off."""
        return None if self.listen is None else parse_listen(self.listen)


@dataclass(frozen=True)
class TrainerConfig:
    """[trainer]: the training hyper-parameters; each field's help is its `trainer` option's."""

    image_size: int = setting(256, bounds=POSITIVE, help="Side of the square training crops, pixels.")
    val_fraction: float = setting(
        0.1,
        bounds=Bounds(0, 1, high_open=True),
        help="Share of DATA held out for validation, by a hash of each relative path.",
    )
    seed: int = setting(0, help="Seed of initialisation, data order and augmentation.")
    batch_size: int = setting(16, bounds=POSITIVE, help="Images per optimizer step and process.")
    workers: int = setting(
        2, bounds=NON_NEGATIVE, help="DataLoader worker processes per process; 0 = in-process."
    )
    decoder_width: int = setting(
        64, bounds=POSITIVE, help="Generator decoder width, for a generator built from scratch."
    )
    pretrain_epochs: int = setting(20, bounds=NON_NEGATIVE, help="Stage-1 epochs; 0 skips stage 1.")
    pretrain_lr: float = setting(2e-4, bounds=NON_NEGATIVE, help="Stage-1 generator learning rate.")
    patience: int = setting(
        5,
        bounds=NON_NEGATIVE,
        help="Stage 1 stops after this many epochs without a better validation L1; 0 = never.",
    )
    gan_epochs: int = setting(20, bounds=NON_NEGATIVE, help="Stage-2 epochs.")
    gan_loss: Literal["bce", "lsgan"] = setting(
        "bce", help="bce = BCE with logits (original cGAN), lsgan = least squares."
    )
    lambda_l1: float = setting(
        20.0,
        bounds=NON_NEGATIVE,
        help="Weight of L1 against the GAN loss in stage 2 (pix2pix's 100 gives sepia).",
    )
    lr_g: float = setting(2e-4, bounds=NON_NEGATIVE, help="Stage-2 generator learning rate (overrides --lr).")
    lr_d: float = setting(
        2e-4, bounds=NON_NEGATIVE, help="Stage-2 discriminator learning rate (overrides --lr)."
    )
    pretrained_encoder: Path | None = setting(
        None,
        help="Local torchvision resnet18 weights (.pth/.safetensors) for a generator "
        "built from scratch (not used with --init or --resume).",
    )
    # Added for the training loops (trainer/loops.py documents their use):
    crop_min: float = setting(
        0.5,
        bounds=Bounds(0, 1, low_open=True),
        help="Smallest random crop side as a share of the image's short side; 1.0 = whole short "
        "side, so the network sees objects whole.",
    )
    cache_images: bool = setting(True, help="Keep decoded, down-scaled training images in RAM.")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto",
        help="Where to train; auto = CUDA when available. Mixed precision: float16 on CUDA, "
        "bfloat16 on a CPU with native bf16.",
    )
    amp: bool = setting(True, help="Mixed precision: fp16 on CUDA, bf16 on a CPU with native bf16.")
    max_steps_per_epoch: int = setting(
        0,
        bounds=NON_NEGATIVE,
        help="Cap on optimizer steps per epoch, for quick runs and benchmarks; 0 = whole epoch.",
    )
    sample_images: int = setting(
        4, bounds=NON_NEGATIVE, help="Validation images shown in samples/<stage>_<epoch>.png."
    )
    # Colour hints (trainer/hints.py): train a 4-channel generator on simulated hints.
    hints: bool | None = setting(
        None,
        help="Train a generator that also takes colour hints (simulated from the truth). "
        "Default: what the --init generator takes (the bundled model: hints), else no.",
    )
    hint_none_share: float = setting(0.3, bounds=UNIT, help="Share of training items with no hint.")
    hint_mean_points: float = setting(
        8.0, bounds=Bounds(low=1), help="Mean number of hints on the others (geometric)."
    )
    palette: bool | None = setting(
        None,
        help="Train a generator that also takes a global palette (up to 4 colours without "
        "positions). Default: what the --init generator takes, else no.",
    )
    palette_share: float = setting(
        0.5, bounds=UNIT, help="Share of training items shown their truth's dominant colours."
    )
    palette_only: bool = setting(
        False,
        help="Train only the palette network (with --init): the rest of the generator keeps "
        "the init's weights and batch-norm statistics, so without a palette the model answers "
        "exactly like the init.",
    )
    freeze_encoder: bool = setting(
        False,
        help="Keep the encoder (stem and ResNet layers 1-4) at the init's weights and batch-norm "
        "statistics; the decoder (and a palette network) learn. Styles' region features come "
        "from the encoder, so they stay as they were.",
    )
    rebalance: float = setting(
        0.0,
        bounds=Bounds(0, 1, high_open=True),
        help="Class rebalancing of L1 (Zhang et al. 2016): 0 = off; r weights each pixel by "
        "1 / (r * prior(its ab bin) + (1 - r) / bins).",
    )


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


def _check_ranges(instance: Any, section: str, where: str) -> None:
    """Each field's own rules (bounds, check), from its metadata: the one place they run."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        bounds: Bounds | None = f.metadata.get("bounds")
        check: Callable[[Any], None] | None = f.metadata.get("check")
        problem = None
        if bounds is not None and value is not None and not bounds.admits(value):
            problem = "must be " + bounds.describe(isinstance(value, int))
        elif check is not None:
            try:
                check(value)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            raise ConfigError(f"{where}: {section}.{f.name} = {value!r}: {problem}")


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
