"""The ``trainer`` command: pretrain, gan, run (both stages), evaluate, export.

Hyper-parameters come from ``[trainer]`` in config.toml (``--config FILE``, else the usual
lookup of semwatch), overridden by the options given on the command line. A run
directory remembers its configuration in RUN_DIR/config.toml: resuming (``--resume``, or
re-running ``trainer run``) starts from that file, and only options given again on the
command line change it.

Under ``torchrun --nproc-per-node N -m trainer ...`` every process runs this same command
as one rank of a DistributedDataParallel job (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from semwatch.config import ConfigError, TrainerConfig, load_config, load_config_file, parse_config
from semwatch.log import configure_logging, get_logger
from trainer.checkpoint import CheckpointError
from trainer.data import DataError
from trainer.distributed import DistEnv, DistributedError, init_distributed, shutdown_distributed
from trainer.evaluate import evaluate_command
from trainer.export import export_command
from trainer.loops import (
    StageResult,
    StageSpec,
    TrainingError,
    resolve_input_layout,
    run_pipeline,
    train_stage,
)
from trainer.rundir import CONFIG_NAME, run_facts, write_run_config

log = get_logger(__name__)

# Errors that mean "this input cannot be used": one line, no traceback.
_USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, DistributedError)

_PATH_DIR = click.Path(file_okay=False, path_type=Path, resolve_path=True)
_PATH_FILE = click.Path(dir_okay=False, path_type=Path, resolve_path=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train semwatch colorization generators (two-stage pix2pix) on hand-colorized images.

    \b
    trainer pretrain DATA --out RUN     stage 1: generator alone, L1 on ab
    trainer gan DATA --init CKPT --out RUN   stage 2: PatchGAN cGAN fine-tune
    trainer run DATA --out RUN          both stages; re-run the same command to continue
    trainer evaluate MODEL DATA         metrics against ground-truth colour images
    trainer export CKPT -o FILE         generator file for `semwatch colorize --model`
    """


main.add_command(evaluate_command)
main.add_command(export_command)


# ------------------------------------------------------------------ options


def _common_options(func: Callable) -> Callable:
    options = [
        click.argument(
            "data", type=click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True)
        ),
        click.option(
            "--out",
            "-o",
            "run_dir",
            required=True,
            type=_PATH_DIR,
            help="Run directory: config.toml, metrics.csv, samples/, checkpoints.",
        ),
        click.option(
            "--config",
            "config_file",
            type=_PATH_FILE,
            default=None,
            help="config.toml to read [trainer] from (default: semwatch's lookup). "
            "Ignored when resuming: the run directory's own config.toml is used.",
        ),
        click.option(
            "--val",
            "val_dir",
            type=click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True),
            default=None,
            help="Validation images from this folder instead of a hash split of DATA.",
        ),
        click.option(
            "--val-fraction",
            type=float,
            default=None,
            help="Share of DATA held out for validation, by a hash of each relative path [0.1].",
        ),
        click.option(
            "--batch-size", type=int, default=None, help="Images per optimizer step and process [16]."
        ),
        click.option(
            "--image-size", type=int, default=None, help="Side of the square training crops, pixels [256]."
        ),
        click.option(
            "--crop-min",
            type=float,
            default=None,
            help="Smallest random crop side as a share of the image's short side; 1.0 = whole short "
            "side, so the network sees objects whole [0.5].",
        ),
        click.option(
            "--hints/--no-hints",
            default=None,
            help="Train a generator that also takes colour hints (simulated from the truth). "
            "Default: what the --init generator takes (the bundled model: hints), else no.",
        ),
        click.option(
            "--lr",
            type=float,
            default=None,
            help="Base learning rate of every network in the stage(s) run (pretrain_lr, lr_g, lr_d) [2e-4].",
        ),
        click.option(
            "--decoder-width",
            type=int,
            default=None,
            help="Generator decoder width, for a generator built from scratch [64].",
        ),
        click.option(
            "--workers",
            type=int,
            default=None,
            help="DataLoader worker processes per process; 0 = in-process [2].",
        ),
        click.option(
            "--seed", type=int, default=None, help="Seed of initialisation, data order and augmentation [0]."
        ),
        click.option(
            "--max-steps-per-epoch",
            type=int,
            default=None,
            help="Cap on optimizer steps per epoch, for quick runs and benchmarks; 0 = whole epoch.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=None,
            help="Where to train; auto = CUDA when available. Mixed precision: float16 on CUDA, "
            "bfloat16 on a CPU with native bf16.",
        ),
        click.option(
            "--tensorboard/--no-tensorboard",
            default=False,
            help="Also write scalars and sample grids to RUN/tensorboard (tensorboard --logdir RUN).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _gan_options(func: Callable) -> Callable:
    options = [
        click.option(
            "--lambda-l1",
            type=float,
            default=None,
            help="Weight of L1 against the GAN loss in stage 2 [20; pix2pix's 100 gives sepia].",
        ),
        click.option(
            "--gan-loss",
            type=click.Choice(["bce", "lsgan"]),
            default=None,
            help="bce = BCE with logits (original cGAN), lsgan = least squares [bce].",
        ),
        click.option(
            "--lr-g", type=float, default=None, help="Stage-2 generator learning rate (overrides --lr)."
        ),
        click.option(
            "--lr-d", type=float, default=None, help="Stage-2 discriminator learning rate (overrides --lr)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pretrain_options(func: Callable) -> Callable:
    options = [
        click.option(
            "--patience",
            type=int,
            default=None,
            help="Stage 1 stops after this many epochs without a better validation L1; 0 = never [5].",
        ),
        click.option(
            "--pretrained-encoder",
            type=click.Path(exists=True, dir_okay=False, path_type=Path, resolve_path=True),
            default=None,
            help="Local torchvision resnet18 weights (.pth/.safetensors) for a generator "
            "built from scratch (not used with --init or --resume).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# ------------------------------------------------------------------ configuration


def _overrides(options: dict[str, Any], epochs_key: Sequence[str]) -> dict[str, Any]:
    """Options given on the command line -> [trainer] keys (None = not given)."""
    mapping = {
        "val_fraction": "val_fraction",
        "batch_size": "batch_size",
        "image_size": "image_size",
        "decoder_width": "decoder_width",
        "workers": "workers",
        "seed": "seed",
        "max_steps_per_epoch": "max_steps_per_epoch",
        "device": "device",
        "lambda_l1": "lambda_l1",
        "gan_loss": "gan_loss",
        "patience": "patience",
        "pretrained_encoder": "pretrained_encoder",
        "pretrain_epochs": "pretrain_epochs",
        "gan_epochs": "gan_epochs",
        "crop_min": "crop_min",
        "hints": "hints",
    }
    out: dict[str, Any] = {}
    for option, key in mapping.items():
        if options.get(option) is not None:
            out[key] = options[option]
    if options.get("epochs") is not None:
        for key in epochs_key:
            out[key] = options["epochs"]
    if options.get("lr") is not None:
        out.update(pretrain_lr=options["lr"], lr_g=options["lr"], lr_d=options["lr"])
    for option in ("lr_g", "lr_d"):
        if options.get(option) is not None:
            out[option] = options[option]
    return out


def resolve_config(
    config_file: Path | None, run_dir: Path, resuming: bool, overrides: dict[str, Any]
) -> TrainerConfig:
    """Base ([trainer] of the run dir when resuming, else of --config) + command-line overrides."""
    run_config = run_dir / CONFIG_NAME
    if resuming and run_config.is_file():
        if config_file is not None and config_file != run_config:
            log.warning(
                "config file ignored on resume",
                reason="a resumed run keeps its own configuration",
                used=str(run_config),
            )
        base = load_config_file(run_config).trainer
    else:
        base = load_config(config_file).trainer
    raw = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    raw.update(overrides)
    raw = {k: (str(v) if isinstance(v, Path) else v) for k, v in raw.items() if v is not None}
    # Through the config parser so that an option gets the same checks as a config key.
    config = parse_config({"trainer": raw}, Path("command-line options")).trainer
    changed = {k: v for k, v in overrides.items() if getattr(base, k) != getattr(config, k)}
    if resuming and changed:
        log.info("configuration changed on resume", **{k: str(v) for k, v in changed.items()})
    return config


def _setup(
    run_dir: Path, config: TrainerConfig, command: str, data: Path, val_dir: Path | None, init: Path | None
) -> DistEnv:
    env = init_distributed(config.device)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, config, run_facts(command, data, val_dir, init, env.world_size))
    return env


def _configure_logging(config_file: Path | None) -> None:
    """The [logging] section of the config; non-zero ranks only report errors."""
    try:
        logging_config = load_config(config_file).logging
        level, fmt = logging_config.level, logging_config.format
    except ConfigError:
        level, fmt = "info", "auto"  # the same error is raised (and reported) by resolve_config

    if os.environ.get("RANK", "0") not in ("", "0"):
        level = "error"  # rank 0 reports; the others would repeat every line
    configure_logging(level, fmt)


def _run_guarded(action: Callable[[], list[StageResult]], run_dir: Path, env_holder: list[DistEnv]) -> None:
    """Run a training action: one-line errors, a resume hint on Ctrl-C, the process group closed."""
    try:
        results = action()
    except _USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        log.warning(
            "training interrupted",
            run_dir=str(run_dir),
            kept="the last completed epoch",
            hint="continue with --resume (or re-run `trainer run`)",
        )
        sys.exit(130)
    finally:
        for env in env_holder:
            shutdown_distributed(env)
    for result in results:
        log.info(
            "stage done",
            stage=result.stage,
            epochs=result.epochs,
            steps=result.step,
            finished=result.finished,
            early_stopped=result.early_stopped,
            best_metric=round(result.best_metric, 5),
            best=str(result.best),
            last=str(result.last),
        )


def _command_line() -> str:
    return " ".join(["trainer", *sys.argv[1:]])


def _start(
    config_file: Path | None,
    run_dir: Path,
    resuming: bool,
    overrides: dict[str, Any],
    data: Path,
    val_dir: Path | None,
    init: Path | None,
    env_holder: list[DistEnv],
) -> tuple[TrainerConfig, DistEnv]:
    _configure_logging(config_file)
    config = resolve_input_layout(resolve_config(config_file, run_dir, resuming, overrides), init)
    env = _setup(run_dir, config, _command_line(), data, val_dir, init)
    env_holder.append(env)
    return config, env


# ------------------------------------------------------------------ commands


@main.command("pretrain")
@_common_options
@_pretrain_options
@click.option("--epochs", type=int, default=None, help="Stage-1 epochs (pretrain_epochs) [20].")
@click.option(
    "--init",
    type=_PATH_FILE,
    default=None,
    help="Start from this generator (training checkpoint .pt or generator .safetensors) instead of scratch.",
)
@click.option("--resume", is_flag=True, help="Continue RUN/pretrain/last.pt where it stopped.")
def pretrain_command(
    data: Path,
    run_dir: Path,
    config_file: Path | None,
    val_dir: Path | None,
    init: Path | None,
    resume: bool,
    tensorboard: bool,
    **options: Any,
) -> None:
    """Stage 1: train the generator alone with L1 on ab (early stopping on validation L1)."""
    env_holder: list[DistEnv] = []

    def action() -> list[StageResult]:
        config, env = _start(
            config_file,
            run_dir,
            resume,
            _overrides(options, ["pretrain_epochs"]),
            data,
            val_dir,
            init,
            env_holder,
        )
        spec = StageSpec(
            "pretrain",
            data,
            run_dir,
            config,
            val_dir=val_dir,
            init=init,
            resume=resume,
            tensorboard=tensorboard,
        )
        return [train_stage(spec, env)]

    _run_guarded(action, run_dir, env_holder)


@main.command("gan")
@_common_options
@_gan_options
@click.option("--epochs", type=int, default=None, help="Stage-2 epochs (gan_epochs) [20].")
@click.option(
    "--init",
    type=_PATH_FILE,
    default=None,
    help="Generator to fine-tune: a stage-1 checkpoint (RUN/pretrain/best.pt) or a generator file. "
    "Required unless --resume.",
)
@click.option("--resume", is_flag=True, help="Continue RUN/gan/last.pt where it stopped.")
def gan_command(
    data: Path,
    run_dir: Path,
    config_file: Path | None,
    val_dir: Path | None,
    init: Path | None,
    resume: bool,
    tensorboard: bool,
    **options: Any,
) -> None:
    """Stage 2: pix2pix cGAN fine-tune with a 70x70 PatchGAN; best = ab-histogram realism."""
    if init is None and not resume:
        raise click.UsageError("trainer gan needs --init CHECKPOINT (the stage-1 result) or --resume")
    env_holder: list[DistEnv] = []

    def action() -> list[StageResult]:
        config, env = _start(
            config_file, run_dir, resume, _overrides(options, ["gan_epochs"]), data, val_dir, init, env_holder
        )
        spec = StageSpec(
            "gan", data, run_dir, config, val_dir=val_dir, init=init, resume=resume, tensorboard=tensorboard
        )
        return [train_stage(spec, env)]

    _run_guarded(action, run_dir, env_holder)


@main.command("run")
@_common_options
@_pretrain_options
@_gan_options
@click.option(
    "--epochs", type=int, default=None, help="Epochs of each stage (sets pretrain_epochs and gan_epochs)."
)
@click.option("--pretrain-epochs", type=int, default=None, help="Stage-1 epochs; 0 skips stage 1 [20].")
@click.option("--gan-epochs", type=int, default=None, help="Stage-2 epochs [20].")
@click.option(
    "--init",
    type=_PATH_FILE,
    default=None,
    help="Existing generator (the bundled default, the one in production, a checkpoint) that stage 1 "
    "fine-tunes on DATA instead of starting from scratch.",
)
def run_command(
    data: Path,
    run_dir: Path,
    config_file: Path | None,
    val_dir: Path | None,
    init: Path | None,
    tensorboard: bool,
    **options: Any,
) -> None:
    """Both stages in sequence; re-running the same command continues where it stopped.

    A finished stage 1 goes on to stage 2 from stage 1's best checkpoint; an unfinished
    stage resumes from its last completed epoch.

    \b
    Retrain the bundled default model on a facility's own images (from the repository;
    the generator's input, colour hints included, is taken from the --init model):
      trainer run our-images/ --out runs/retrain/ --init semwatch/models/default.safetensors
    """
    env_holder: list[DistEnv] = []
    resuming = (run_dir / CONFIG_NAME).is_file()

    def action() -> list[StageResult]:
        config, env = _start(
            config_file,
            run_dir,
            resuming,
            _overrides(options, ["pretrain_epochs", "gan_epochs"]),
            data,
            val_dir,
            init,
            env_holder,
        )
        return run_pipeline(data, run_dir, config, env, val_dir=val_dir, init=init, tensorboard=tensorboard)

    _run_guarded(action, run_dir, env_holder)
