"""Moving images between host and device without stalling either.

On the CPU these are views (no copy at all). On CUDA, host memory goes through pinned
(page-locked) buffers with ``non_blocking`` copies: the DMA engine copies while the GPU
computes and the CPU prepares the next image, where a copy from pageable memory blocks
the CPU and is staged through a driver buffer. The pinned buffers come from PyTorch's
caching host allocator, which reuses them and does not hand one out again before the
copy that used it has finished.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor of ``array`` on ``device``; the engine never writes to it (a read-only
    array is fine: torch's warning about it does not apply)."""
    with warnings.catch_warnings():
        if not array.flags.writeable:
            warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """Start copying ``tensor`` to the host (pinned, asynchronous on CUDA); the result is
    complete after :func:`synchronize` of its device. A CPU tensor is returned as it is."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def synchronize(device: torch.device) -> None:
    """Wait until the device's queued work, copies to the host included, has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
