"""Training checkpoints: everything ``--resume`` needs, in a file that unpickles no code.

A checkpoint is a plain dict written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: only tensors, dicts, lists, tuples, str, int, float,
bool and None may be inside (optimizer and scheduler state dicts qualify). Layout of a
run directory::

    RUN_DIR/pretrain/last.pt   RUN_DIR/pretrain/best.pt
    RUN_DIR/gan/last.pt        RUN_DIR/gan/best.pt

Keys: ``kind`` ("semwatch-train-checkpoint"), ``version`` (1), ``stage`` ("pretrain" |
"gan"), ``generator`` (state dict), ``generator_config`` (GeneratorConfig.to_dict()),
``discriminator`` (state dict | None), ``opt_g``, ``opt_d`` (optimizer state dicts |
None), ``sched_g``, ``sched_d`` (scheduler state dicts | None), ``scaler`` (AMP grad
scaler state | None), ``epoch`` (epochs completed), ``step`` (optimizer steps done),
``best_metric``, ``bad_epochs`` (epochs since the best, for early stopping),
``finished`` (the stage has nothing left to do), ``rng`` (python/numpy/torch/cuda
states), ``trainer_config``, ``data_summary``, ``metrics`` (last validation metrics).

Files are written to a temporary name in the same folder, fsynced and renamed, so a
crash or a full disk never leaves a truncated ``last.pt`` in place of a good one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semwatch.fsutil import atomic_path
from semwatch.model import GeneratorConfig, ModelError, UNetGenerator, load_generator

KIND = "semwatch-train-checkpoint"
VERSION = 1
STAGES = ("pretrain", "gan")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; str() names the file and the reason."""


def checkpoint_path(run_dir: Path, stage: str, which: str = "last") -> Path:
    """RUN_DIR/<stage>/<which>.pt, ``which`` being "last" or "best"."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
    if which not in ("last", "best"):
        raise ValueError(f"unknown checkpoint {which!r} (expected 'last' or 'best')")
    return Path(run_dir) / stage / f"{which}.pt"


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
        raise CheckpointError(f"{path}: not a readable training checkpoint ({_one_line(exc)})") from exc
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
        raise CheckpointError(f"{path}: bad generator_config: {_one_line(exc)}") from exc
    model = UNetGenerator(config)
    try:
        model.load_state_dict(state["generator"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: generator weights do not match its config: {_one_line(exc)}") from exc
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
