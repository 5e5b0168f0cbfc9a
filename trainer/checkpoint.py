"""Training checkpoints: everything ``--resume`` needs, in a file that unpickles no code.

A checkpoint is a plain dict written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: only tensors, dicts, lists, tuples, str, int, float,
bool and None may be inside (optimizer state dicts qualify). Layout of a run directory::

    RUN_DIR/pretrain/last.pt   RUN_DIR/pretrain/best.pt
    RUN_DIR/gan/last.pt        RUN_DIR/gan/best.pt

Format version 1. :func:`training_checkpoint` builds the dict and :func:`save_checkpoint`
adds ``kind`` and ``version``; these are all the keys (a test holds this table to what
training really writes):

    ``kind``              str: "semwatch-train-checkpoint"
    ``version``           int: format version, 1
    ``stage``             str: "pretrain" | "gan"
    ``generator``         dict[str, Tensor]: the generator's state dict (unwrapped from DDP)
    ``generator_config``  dict: GeneratorConfig.to_dict() (architecture)
    ``discriminator``     dict[str, Tensor] | None: PatchGAN state dict (gan stage only)
    ``opt_g``             dict: the generator's Adam state dict
    ``opt_d``             dict | None: the discriminator's Adam state dict (gan stage only)
    ``sched_g``           dict: {"kind": schedule name, "total_epochs": int, "base_lr": float};
                          a record only: resuming recomputes the rate from (epoch, epochs)
    ``sched_d``           dict | None: the same for the discriminator (gan stage only)
    ``scaler_g``          dict: AMP GradScaler state (empty when the scaler is disabled)
    ``scaler_d``          dict | None: the discriminator's GradScaler state (gan stage only)
    ``epoch``             int: epochs completed
    ``step``              int: optimizer steps done
    ``best_metric``       float: best value so far of ``best_metric_name`` (+-inf before any)
    ``best_metric_name``  str: the validation metric that picks ``best`` ("val_l1" |
                          "val_hist_intersection")
    ``bad_epochs``        int: epochs since the best improved (early stopping)
    ``early_stopped``     bool: this stage stopped on ``patience``
    ``finished``          bool: the stage had nothing left to do under its configuration
    ``rng``               dict: {"python", "numpy", "torch", "cuda"} generator states
    ``trainer_config``    dict: TrainerConfig as plain values (paths as str)
    ``data_summary``      dict: DataSummary.as_dict() of the training data
    ``metrics``           dict[str, float]: the last validation metrics

Files are written to a temporary name in the same folder, fsynced and renamed, so a
crash or a full disk never leaves a truncated ``last.pt`` in place of a good one.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semwatch.config import TrainerConfig
from semwatch.errors import one_line
from semwatch.fsutil import atomic_path
from semwatch.model import GeneratorConfig, ModelError, UNetGenerator, load_generator, read_generator_metadata
from trainer.distributed import unwrap
from trainer.stages import POLICIES, StagePolicy, TrainState

if TYPE_CHECKING:
    from trainer.data import DataSummary

KIND = "semwatch-train-checkpoint"
VERSION = 1
STAGES = tuple(POLICIES)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; str() names the file and the reason."""


def checkpoint_path(run_dir: Path, stage: str, which: str = "last") -> Path:
    """RUN_DIR/<stage>/<which>.pt, ``which`` being "last" or "best"."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
    if which not in ("last", "best"):
        raise ValueError(f"unknown checkpoint {which!r} (expected 'last' or 'best')")
    return Path(run_dir) / stage / f"{which}.pt"


def training_checkpoint(
    policy: StagePolicy,
    state: TrainState,
    config: TrainerConfig,
    summary: DataSummary,
    early_stopped: bool,
) -> dict[str, Any]:
    """The checkpoint of a stage after a completed epoch (the keys of the table above)."""
    schedule = {"kind": policy.schedule, "total_epochs": policy.epochs(config)}
    discriminator = unwrap(state.discriminator) if state.discriminator is not None else None
    return {
        "stage": policy.name,
        "generator": unwrap(state.generator).state_dict(),
        "generator_config": state.gen_config.to_dict(),
        "discriminator": discriminator.state_dict() if discriminator is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict() if state.opt_d is not None else None,
        "sched_g": dict(schedule, base_lr=policy.base_lr_g(config)),
        "sched_d": dict(schedule, base_lr=config.lr_d) if state.opt_d is not None else None,
        "scaler_g": state.scaler_g.state_dict(),
        "scaler_d": state.scaler_d.state_dict() if state.scaler_d is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metric,
        "best_metric_name": policy.best_metric,
        "bad_epochs": state.bad_epochs,
        "early_stopped": early_stopped,
        "finished": policy.is_finished(state.epoch, state.bad_epochs, config),
        "rng": capture_rng_state(),
        "trainer_config": _config_dict(config),
        "data_summary": summary.as_dict(),
        "metrics": dict(state.metrics),
    }


def _config_dict(config: TrainerConfig) -> dict[str, Any]:
    """TrainerConfig as plain values (Paths as strings): checkpoints hold no custom types."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (plus kind/version) atomically: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    payload = dict(state)
    payload["kind"] = KIND
    payload["version"] = VERSION
    with atomic_path(path, ".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (weights_only) and check that it is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged file surfaces as any of a dozen types from the unpickler
        if isinstance(exc, MemoryError):
            raise
        raise CheckpointError(f"{path}: not a readable training checkpoint ({one_line(exc)})") from exc
    if not isinstance(state, dict) or state.get("kind") != KIND:
        kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a semwatch training checkpoint (kind {kind!r})")
    version = state.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version!r} is not supported (supports 1..{VERSION})"
        )
    if state.get("stage") not in STAGES:
        raise CheckpointError(f"{path}: unknown stage {state.get('stage')!r}")
    return state


def load_any_generator(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[UNetGenerator, GeneratorConfig, dict[str, Any]]:
    """A generator from a training checkpoint (.pt) or a generator file (.safetensors).

    Returns (model in eval mode on ``device``, its config, info) where info has ``card``,
    ``data_summary``, ``metrics``, ``stage`` (None for a generator file), ``epoch`` and
    ``source`` ("checkpoint" | "generator").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    if _is_safetensors(path):
        try:
            loaded = load_generator(path, device=device)
        except ModelError as exc:
            raise CheckpointError(str(exc)) from exc
        card = dict(loaded.card)
        info = {
            "source": "generator",
            "card": card,
            "data_summary": card.get("data_summary") or card.get("data") or {},
            "metrics": card.get("metrics") or {},
            "stage": card.get("stage"),
            "epoch": card.get("epoch"),
        }
        return loaded.model, loaded.config, info
    state = load_checkpoint(path)
    try:
        config = GeneratorConfig.from_dict(state.get("generator_config") or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad generator_config: {one_line(exc)}") from exc
    model = UNetGenerator(config)
    try:
        model.load_state_dict(state["generator"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: generator weights do not match its config: {one_line(exc)}") from exc
    model.to(device).eval()
    info = {
        "source": "checkpoint",
        "card": checkpoint_card(state),
        "data_summary": dict(state.get("data_summary") or {}),
        "metrics": dict(state.get("metrics") or {}),
        "stage": state.get("stage"),
        "epoch": state.get("epoch"),
    }
    return model, config, info


def read_any_generator_config(path: Path) -> GeneratorConfig:
    """The architecture of a generator file or training checkpoint, without building the
    network (a generator file's weights are not read at all)."""
    path = Path(path)
    if _is_safetensors(path):
        try:
            return read_generator_metadata(path)[0]
        except ModelError as exc:
            raise CheckpointError(str(exc)) from exc
    state = load_checkpoint(path)
    try:
        return GeneratorConfig.from_dict(state.get("generator_config") or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad generator_config: {one_line(exc)}") from exc


def checkpoint_card(state: Mapping[str, Any]) -> dict[str, Any]:
    """The model-card facts a checkpoint knows (for export and evaluate reports)."""
    return {
        "stage": state.get("stage"),
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "best_metric": state.get("best_metric"),
        "trainer_config": dict(state.get("trainer_config") or {}),
        "data_summary": dict(state.get("data_summary") or {}),
        "metrics": dict(state.get("metrics") or {}),
    }


def _is_safetensors(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        return True
    if path.suffix.lower() in (".pt", ".pth"):
        return False
    # No telling suffix: torch.save files are zip archives, safetensors files are not.
    with path.open("rb") as f:
        return f.read(4) != b"PK\x03\x04"


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states in weights_only-loadable form."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing parts are left as they are)."""
    if "python" in state:
        version, py_state, gauss = state["python"]
        random.setstate((version, tuple(py_state), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
