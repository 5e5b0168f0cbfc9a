"""Truth images as the evaluation measures them: the gray a microscope would have recorded
(from the truth's lightness), tensors, and hints simulated from the truth's colours.

Shared by :mod:`trainer.evaluate` and :mod:`trainer.style_transfer` (which evaluate uses),
so neither imports the other for them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from semwatch.color import gray_levels_to_l, lab_to_rgb
from semwatch.hints import Hint
from trainer.hints import sample_points


def gray_from_lightness(lightness: torch.Tensor) -> torch.Tensor:
    """CIE L (any shape) -> uint8 gray level g whose sRGB gray (g, g, g) has the nearest L."""
    table = gray_levels_to_l().to(device=lightness.device, dtype=torch.float32)
    lightness = lightness.float().contiguous()
    upper = torch.searchsorted(table, lightness).clamp_(1, table.numel() - 1)
    lower = upper - 1
    take_upper = (table[upper] - lightness) < (lightness - table[lower])
    return torch.where(take_upper, upper, lower).to(torch.uint8)


def rgb_u8_to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float().div_(255.0)


def simulated_hints(path: Path, truth_lab: torch.Tensor, count: int, seed: int) -> list[Hint]:
    """``count`` hints for one truth image, the same for a given (seed, file name, count):
    uniform positions, each the mean a,b of the truth's 3x3 square around it (as
    ``trainer.hints.sample_points``), with that square's mean sRGB as the recorded colour."""
    digest = hashlib.sha256(f"{seed}:{path.name}:{count}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    points = sample_points(truth_lab[1:], count, rng)
    hints = []
    for point in points:
        lab = torch.tensor([float(truth_lab[0, point.row, point.col]), point.a, point.b]).view(1, 3, 1, 1)
        rgb = (lab_to_rgb(lab)[0, :, 0, 0].clamp(0, 1) * 255 + 0.5).long().tolist()
        colour = "#" + "".join(f"{c:02x}" for c in rgb)
        hints.append(Hint(float(point.col), float(point.row), point.a, point.b, colour))
    return hints
