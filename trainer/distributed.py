"""One process or many: torchrun's environment -> a DistEnv, and the few collectives we use.

``torchrun --nproc-per-node N -m trainer ...`` sets WORLD_SIZE, RANK and LOCAL_RANK; then
the process group is NCCL on CUDA and gloo on CPU (gloo is how the tests run it). Without
those variables everything here is a no-op on one process, so the loops have one code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semwatch.log import get_logger

log = get_logger(__name__)

DevicePref = Literal["auto", "cpu", "cuda"]


class DistributedError(RuntimeError):
    """The distributed environment cannot be used (bad variables, no GPU for a rank)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: DevicePref, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda: no CUDA device is available")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(f"LOCAL_RANK {local_rank} but only {count} CUDA device(s)")
        return torch.device("cuda", local_rank)
    if pref not in ("auto", "cpu"):
        raise DistributedError(f"unknown device {pref!r} (expected auto, cpu or cuda)")
    return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device_pref: DevicePref = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Read torchrun's variables; join the process group when WORLD_SIZE > 1."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_pref, local_rank)
    if world_size <= 1:
        return DistEnv(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    log.debug("process group ready", rank=rank, world_size=world_size, backend=backend, device=str(device))
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device, backend=backend)


def shutdown_distributed(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place, returned for chaining (identity on one process)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(env: DistEnv, value: bool) -> bool:
    """Rank 0's decision (e.g. early stopping) for every rank, so that all stop together."""
    if not env.distributed:
        return value
    flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=_collective_device(env))
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _collective_device(env: DistEnv) -> torch.device:
    return env.device if env.backend == "nccl" else torch.device("cpu")


def wrap_model(env: DistEnv, model: nn.Module) -> nn.Module:
    """Move to the device; under torchrun, SyncBatchNorm (CUDA only) and DDP.

    SyncBatchNorm needs a GPU backend; on CPU (gloo) each rank keeps its own batch
    statistics, which is fine for a functional check and for small CPU runs.
    """
    model = model.to(env.device)
    if not env.distributed:
        return model
    if env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[env.device.index], output_device=env.device.index)
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (for state dicts, validation, checkpoints)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
