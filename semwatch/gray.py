"""What the colour code needs of a decoded image: its gray levels and where its data bar
starts. A protocol of its own so that the engine and the styles (which the engine uses)
can both name it without importing each other."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class GrayLike(Protocol):
    gray: np.ndarray  # uint8 (H, W)
    databar_row: int | None  # first row of the data bar, or None
