"""``trainer export``: a training checkpoint (or a generator file) -> a deployable generator file.

The output is what semwatch loads (``semwatch colorize --model FILE``, ``engine.model``):
generator weights only, in safetensors (float16 by default: half the size, and the
daemon computes in float32 anyway), with a model card in the metadata that says where the
weights came from — data summary, recipe, validation metrics, date, the command line.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn

from semwatch import __version__
from semwatch.cli_options import CONTEXT, config_option, load_cli_config
from semwatch.log import configure_cli_logging, get_logger
from semwatch.model import GeneratorConfig, ModelError, file_sha256, save_generator
from trainer.checkpoint import CheckpointError, load_any_generator, load_checkpoint
from trainer.rundir import read_run_facts

log = get_logger(__name__)

# Checkpoint keys that describe how the weights were made (carried into the recipe when
# present; the training loops may add provenance such as the --init model).
_RECIPE_KEYS = (
    "stage",
    "epoch",
    "step",
    "best_metric",
    "best_metric_name",
    "early_stopped",
    "finished",
    "trainer_config",
    "sched_g",
    "sched_d",
    "init",
    "stages",
)


class ExportError(ValueError):
    """The export cannot be done; str() names the file and the reason."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    dtype: str
    card: dict[str, Any]


def build_card(
    *,
    name: str,
    source: Path,
    source_sha256: str,
    info: Mapping[str, Any],
    checkpoint: Mapping[str, Any] | None,
    dtype: torch.dtype,
    command: str,
    training: Mapping[str, str] | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card: everything a facility needs to know which model it runs.

    From a checkpoint the recipe is read from the checkpoint itself and ``training`` (the
    run directory's facts: the training command, data, versions) says how to reproduce it;
    a re-exported generator file keeps its own card and records the re-export.
    ``evaluation`` is a ``trainer evaluate --json`` report of this model, if one is given.
    """
    base: dict[str, Any] = dict(info.get("card") or {}) if checkpoint is None else {}
    card = dict(base)
    card.update(
        name=name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        semwatch_version=__version__,
        dtype=str(dtype).removeprefix("torch."),
        command=command,
        exported_from={
            "path": str(source),
            "sha256": source_sha256,
            "kind": "checkpoint" if checkpoint is not None else "generator",
        },
    )
    if checkpoint is not None:
        card["data_summary"] = dict(checkpoint.get("data_summary") or {})
        card["metrics"] = dict(checkpoint.get("metrics") or {})
        card["recipe"] = {key: checkpoint[key] for key in _RECIPE_KEYS if key in checkpoint}
        if training:
            card["training"] = dict(training)
    else:
        card.setdefault("data_summary", dict(info.get("data_summary") or {}))
        card.setdefault("metrics", dict(info.get("metrics") or {}))
    if evaluation is not None:
        card["evaluation"] = dict(evaluation)
    return card


def check_fits_dtype(model: nn.Module, dtype: torch.dtype, source: Path) -> None:
    """Refuse a conversion that would turn finite weights into infinities (float16 tops at 65504)."""
    if dtype == torch.float32:
        return
    limit = torch.finfo(dtype).max
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        if not torch.isfinite(value).all():
            raise ExportError(f"{source}: weight {key} holds NaN or infinity; the checkpoint is broken")
        if value.abs().max() > limit:
            raise ExportError(
                f"{source}: weight {key} exceeds the {dtype} range ({float(value.abs().max()):.4g}); "
                "export with --fp32"
            )


def export_generator(
    source: Path,
    output: Path,
    *,
    fp32: bool = False,
    force: bool = False,
    name: str | None = None,
    command: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write the generator of ``source`` (checkpoint or generator file) to ``output``."""
    source, output = Path(source), Path(output)
    if output.exists() and not force:
        raise ExportError(f"{output}: already exists; pass --force to replace it")
    if output.exists() and output.is_dir():
        raise ExportError(f"{output}: is a folder; give a file name")
    try:
        model, config, info = load_any_generator(source, device="cpu")
        checkpoint = load_checkpoint(source) if info.get("source") == "checkpoint" else None
    except (CheckpointError, ModelError) as exc:
        raise ExportError(str(exc)) from exc
    dtype = torch.float32 if fp32 else torch.float16
    check_fits_dtype(model, dtype, source)
    card = build_card(
        name=name or _default_name(output, info, checkpoint),
        source=source.resolve(),
        source_sha256=file_sha256(source),
        info=info,
        checkpoint=checkpoint,
        dtype=dtype,
        command=command if command is not None else _command_line(),
        # A checkpoint sits in RUN_DIR/<stage>/; the run's config.toml records its command.
        training=read_run_facts(source.resolve().parent.parent) if checkpoint is not None else None,
        evaluation=evaluation,
    )
    sha256 = _save(output, model, config, card, dtype)
    log.info(
        "exported generator", path=str(output), dtype=card["dtype"], sha256=sha256[:12], source=str(source)
    )
    return ExportResult(path=output, sha256=sha256, dtype=card["dtype"], card=card)


def _default_name(output: Path, info: Mapping[str, Any], checkpoint: Mapping[str, Any] | None) -> str:
    if checkpoint is None and (info.get("card") or {}).get("name"):
        return str(info["card"]["name"])
    return output.name.removesuffix(".safetensors") or output.stem


def _command_line() -> str:
    """The command as typed, with the program named by the CLI (not a python path)."""
    context = click.get_current_context(silent=True)
    program = context.find_root().info_name if context is not None else None
    return shlex.join([program or Path(sys.argv[0]).name, *sys.argv[1:]])


def _read_evaluation(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not a readable evaluation report ({exc})") from exc
    if not isinstance(report, dict) or "metrics" not in report or "gray_baseline" not in report:
        raise ExportError(f"{path}: not a `trainer evaluate --json` report (no metrics / gray_baseline)")
    return report


def _save(
    output: Path, model: nn.Module, config: GeneratorConfig, card: dict[str, Any], dtype: torch.dtype
) -> str:
    try:
        return save_generator(output, model, config, card, dtype=dtype)
    except OSError as exc:
        raise ExportError(f"{output}: cannot write ({exc.strerror or exc})") from exc


@click.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The generator file to write (.safetensors).",
)
@click.option("--fp32", is_flag=True, help="Keep float32 weights (default: float16, half the size).")
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@click.option(
    "--name",
    default=None,
    help="Model name in the card (default: the output file's name without .safetensors).",
)
@click.option(
    "--evaluation",
    "evaluation_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A `trainer evaluate --json` report of this model to keep in the card.",
)
@config_option(help="Configuration file (only its [logging] section is used here).")
def export_command(
    checkpoint: Path,
    output: Path,
    fp32: bool,
    force: bool,
    name: str | None,
    evaluation_path: Path | None,
    config_path: Path | None,
) -> None:
    """Export the generator of CHECKPOINT (a training checkpoint .pt, or a generator file to
    re-export, e.g. float32 -> float16) as a generator file for semwatch, with its model card.
    """
    config = load_cli_config(config_path)
    configure_cli_logging(config.logging.level, config.logging.format)
    try:
        evaluation = _read_evaluation(evaluation_path) if evaluation_path else None
        result = export_generator(
            checkpoint,
            output,
            fp32=fp32,
            force=force,
            name=name,
            command=_command_line(),
            evaluation=evaluation,
        )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result.path}  {result.dtype}  sha256 {result.sha256}")
