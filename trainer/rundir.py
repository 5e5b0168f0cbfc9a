"""What a run directory holds besides checkpoints: config.toml, metrics.csv, samples/, tensorboard/.

Only rank 0 writes here. The resolved configuration is written as a ``[trainer]`` table
that ``semwatch.config`` reads back (``--config RUN_DIR/config.toml`` reproduces the
run), with the run's facts (data folder, command, versions) as comments above it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from semwatch.color import input_to_l, lab_to_rgb, target_to_ab
from semwatch.config import TrainerConfig
from semwatch.fsutil import atomic_path
from semwatch.log import get_logger

log = get_logger(__name__)

CONFIG_NAME = "config.toml"
METRICS_NAME = "metrics.csv"
METRICS_COLUMNS = (
    "stage",
    "epoch",
    "step",
    "lr_g",
    "lr_d",
    "train_l1",
    "train_g_gan",
    "train_d",
    "val_l1",
    "val_hist_intersection",
    "seconds",
    "images_per_s",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- config.toml


def toml_value(value: Any) -> str:
    """One TOML value: bool, int, float (inf/nan allowed), str/Path, None -> "" (= not set), list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if value is None:
        return '""'
    if isinstance(value, (str, Path)):
        # A JSON string is a valid TOML basic string (same escapes), non-ASCII kept as is.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_trainer_toml(config: TrainerConfig, facts: Mapping[str, Any]) -> str:
    lines = [
        "# Resolved configuration of this training run, written by `trainer`.",
        "# Resuming reads it back; options given on the command line override it.",
    ]
    for key, value in facts.items():
        lines.append(f"# {key}: {value}")
    lines += ["", "[trainer]"]
    for f in dataclasses.fields(config):
        lines.append(f"{f.name} = {toml_value(getattr(config, f.name))}")
    return "\n".join(lines) + "\n"


def write_run_config(run_dir: Path, config: TrainerConfig, facts: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / CONFIG_NAME
    atomic_write_bytes(path, render_trainer_toml(config, facts).encode("utf-8"))
    return path


def read_run_facts(run_dir: Path) -> dict[str, str]:
    """The ``# key: value`` header :func:`render_trainer_toml` wrote (empty if there is none)."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    facts: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep and key.isidentifier():
            facts[key] = value
    return facts


def run_facts(
    command: str, data: Path, val_dir: Path | None, init: Path | None, world_size: int
) -> dict[str, Any]:
    import semwatch

    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "data": str(data),
        "val": str(val_dir) if val_dir else "(hash split of data)",
        "init": str(init) if init else "(none)",
        "processes": world_size,
        "semwatch": semwatch.__version__,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------- metrics.csv


@dataclass
class MetricsLog:
    """metrics.csv: one row per (stage, epoch), the same columns for both stages."""

    path: Path

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(METRICS_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metrics columns {sorted(unknown)}")
        new_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow({k: _csv_cell(row.get(k)) for k in METRICS_COLUMNS})
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def truncate_after(self, stage: str, epoch: int, later_stages: Iterable[str] = ()) -> None:
        """Drop rows a resumed run will write again: this stage past ``epoch``, later stages."""
        rows = self.rows()
        later = set(later_stages)
        keep = [
            r for r in rows if not ((r["stage"] == stage and int(r["epoch"]) > epoch) or r["stage"] in later)
        ]
        if len(keep) == len(rows):
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(keep)
        atomic_write_bytes(self.path, buffer.getvalue().encode("utf-8"))
        log.info("unfinished epochs dropped from metrics", file=METRICS_NAME, dropped=len(rows) - len(keep))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------- sample grids


def sample_grid(
    l_input: torch.Tensor, ab_pred: torch.Tensor, ab_true: torch.Tensor, padding: int = 2
) -> np.ndarray:
    """Rows of gray | predicted | truth, uint8 (H, W, 3); inputs in network units, (N, ., S, S)."""
    from torchvision.utils import make_grid

    lightness = input_to_l(l_input[:, :1].float().cpu())  # hint planes, if any, are not shown
    zeros = torch.zeros_like(ab_true.float().cpu())
    tiles = []
    for ab in (zeros, ab_pred.float().cpu(), ab_true.float().cpu()):
        tiles.append(lab_to_rgb(torch.cat([lightness, target_to_ab(ab)], dim=1)))
    stacked = torch.stack(tiles, dim=1).flatten(0, 1)  # image0: gray, pred, truth; image1: ...
    grid = make_grid(stacked, nrow=3, padding=padding, pad_value=1.0)
    return (grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def save_sample_grid(run_dir: Path, stage: str, epoch: int, grid: np.ndarray) -> Path:
    path = Path(run_dir) / "samples" / f"{stage}_{epoch:03d}.png"
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------- tensorboard


class Board:
    """TensorBoard scalars and images when asked for (``--tensorboard``); a no-op otherwise."""

    def __init__(self, run_dir: Path, enabled: bool):
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError(
                "--tensorboard needs the tensorboard package: pip install 'semwatch[tensorboard]'"
            ) from exc
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def scalars(self, stage: str, values: Mapping[str, float | None], step: int) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self._writer.add_scalar(f"{stage}/{key}", value, step)

    def image(self, stage: str, grid: np.ndarray, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(f"{stage}/samples", grid, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
