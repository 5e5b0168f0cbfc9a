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
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import click

from semwatch.cli_options import CONTEXT, config_option
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


@click.group(context_settings=CONTEXT)
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


_TRAINER_FIELDS = {f.name: f for f in dataclasses.fields(TrainerConfig)}
_TRAINER_HINTS = typing.get_type_hints(TrainerConfig)


def _option_type(name: str) -> click.ParamType | None:
    """The click type of a [trainer] key's option, from the field's annotation. Plain types:
    the bounds are checked by the config parser, so an option and a key fail alike."""
    hint = _TRAINER_HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        return click.Choice(list(typing.get_args(hint)))
    if args and Path in args:
        return click.Path(exists=True, dir_okay=False, path_type=Path, resolve_path=True)
    if hint is int:
        return click.INT
    if hint is float:
        return click.FLOAT
    return None  # bool | None: an on/off flag pair


def trainer_option(name: str, *decls: str, help: str | None = None) -> Callable[[Callable], Callable]:
    """The command-line option of the [trainer] key `name`: its flag, type and help come
    from the field; the default shown is the field's (None: the option was not given, and
    the configuration's value stands)."""
    field = _TRAINER_FIELDS[name]
    flag = "--" + name.replace("_", "-")
    text = help or field.metadata["help"]
    if field.default is not None:
        text = f"{text} Default: [trainer] {name} ({field.default})."
    kind = _option_type(name)
    if kind is None:
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=text)
    return click.option(*(decls or (flag,)), name, type=kind, default=None, help=text)


def _apply(func: Callable, options: list[Callable[[Callable], Callable]]) -> Callable:
    for option in reversed(options):
        func = option(func)
    return func


def _common_options(func: Callable) -> Callable:
    return _apply(
        func,
        [
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
            config_option(
                help="config.toml to read [trainer] from (default: semwatch's lookup). "
                "Ignored when resuming: the run directory's own config.toml is used."
            ),
            click.option(
                "--val",
                "val_dir",
                type=click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True),
                default=None,
                help="Validation images from this folder instead of a hash split of DATA.",
            ),
            trainer_option("val_fraction"),
            trainer_option("batch_size"),
            trainer_option("image_size"),
            trainer_option("crop_min"),
            trainer_option("hints"),
            trainer_option("palette"),
            trainer_option("palette_share"),
            trainer_option("palette_only"),
            trainer_option("freeze_encoder"),
            trainer_option("rebalance"),
            click.option(
                "--lr",
                type=float,
                default=None,
                help="Base learning rate of every network in the stage(s) run (pretrain_lr, lr_g, lr_d). "
                f"Default: [trainer] pretrain_lr ({_TRAINER_FIELDS['pretrain_lr'].default}).",
            ),
            trainer_option("decoder_width"),
            trainer_option("workers"),
            trainer_option("seed"),
            trainer_option("max_steps_per_epoch"),
            trainer_option("device"),
            click.option(
                "--tensorboard/--no-tensorboard",
                default=False,
                help="Also write scalars and sample grids to RUN/tensorboard (tensorboard --logdir RUN).",
            ),
        ],
    )


def _gan_options(func: Callable) -> Callable:
    return _apply(
        func,
        [
            trainer_option("lambda_l1"),
            trainer_option("gan_loss"),
            trainer_option("lr_g"),
            trainer_option("lr_d"),
        ],
    )


def _pretrain_options(func: Callable) -> Callable:
    return _apply(func, [trainer_option("patience"), trainer_option("pretrained_encoder")])


def _epochs_option(name: str, help: str) -> Callable[[Callable], Callable]:
    """--epochs of a one-stage command: the stage's epochs key, under the option's own name."""
    default = _TRAINER_FIELDS[name].default
    return click.option(
        "--epochs", type=int, default=None, help=f"{help} Default: [trainer] {name} ({default})."
    )


# ------------------------------------------------------------------ configuration


def _overrides(options: dict[str, Any], epochs_keys: Sequence[str]) -> dict[str, Any]:
    """Options given on the command line -> [trainer] keys (None = not given). --epochs
    sets the stage(s)' epochs; --lr the learning rates --lr-g / --lr-d do not set."""
    out = {name: options[name] for name in _TRAINER_FIELDS if options.get(name) is not None}
    if options.get("epochs") is not None:
        for key in epochs_keys:
            out[key] = options["epochs"]
    if options.get("lr") is not None:
        for key in ("pretrain_lr", "lr_g", "lr_d"):
            out.setdefault(key, options["lr"])
    return out


def resolve_config(
    config_file: Path | None, run_dir: Path, resuming: bool, overrides: dict[str, Any]
) -> TrainerConfig:
    """Base ([trainer] of the run dir when resuming, else of --config) + command-line overrides."""
    run_config = run_dir / CONFIG_NAME
    if resuming and run_config.is_file():
        if config_file is not None and config_file.resolve() != run_config.resolve():
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
@_epochs_option("pretrain_epochs", "Stage-1 epochs (pretrain_epochs).")
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
    config_path: Path | None,
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
            config_path,
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
@_epochs_option("gan_epochs", "Stage-2 epochs (gan_epochs).")
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
    config_path: Path | None,
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
            config_path, run_dir, resume, _overrides(options, ["gan_epochs"]), data, val_dir, init, env_holder
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
@trainer_option("pretrain_epochs")
@trainer_option("gan_epochs")
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
    config_path: Path | None,
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
            config_path,
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
