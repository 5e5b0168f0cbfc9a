"""Assertions shared by the test modules."""

from __future__ import annotations

import numpy as np
import torch

from semwatch.color import gray_levels_to_l, rgb_to_lab


def lightness_as_gray(rgb: np.ndarray) -> np.ndarray:
    """The gray level (0..255, fractional) whose sRGB gray has the same CIE L as each pixel."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    lightness = rgb_to_lab(tensor[None])[0, 0].double().numpy()
    table = gray_levels_to_l().numpy()
    return np.interp(lightness, table, np.arange(256, dtype=np.float64))


def max_lightness_error(rgb: np.ndarray, gray: np.ndarray) -> float:
    """Largest |gray level of the output's L - input gray level| over the image."""
    return float(np.abs(lightness_as_gray(rgb) - gray.astype(np.float64)).max())


def textured_gray(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A gray test image with smooth structure, edges and noise, full 0..255 range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 128 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)
    img[(x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(height, width) / 4) ** 2] += 70
    img += rng.normal(0, 12, size=img.shape)
    img[: max(1, height // 20)] = 0
    img[-max(1, height // 20):, : width // 3] = 255
    return np.clip(img, 0, 255).astype(np.uint8)
