"""Device resolution and process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single
process otherwise. The one home for "which device, which rank" used by train, eval and infer alike.

NCCL on GPU, gloo on CPU. Only rank 0 writes files; every rank reads the same config.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from affectclip.core.errors import ConfigError, UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain single process: the one that reports to the user."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(spec: str | torch.device, option: str = "--device") -> torch.device:
    """`auto` (CUDA when visible, else CPU) or an explicit device; a `UserError` naming `option` when the device
    does not exist here (a `ConfigError` when `option` is a config key such as `run.device`)."""
    error = UserError if option.startswith("-") else ConfigError
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise error(f"{option}={spec} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{option}={spec} but no CUDA device is visible here; use {option}=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise error(f"{option}={spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def device_and_rank(spec: str | torch.device, option: str = "--device") -> tuple[torch.device, DistInfo]:
    """The job's device and its place in the process group: under torchrun each rank takes the GPU of its
    LOCAL_RANK (an explicit `cuda:0` would put every rank on one GPU); a plain process is rank 0 of 1."""
    device = resolve_device(spec, option)
    info = init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    return device, info


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group (torchrun), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's RNGs: model initialisation and augmentation draw from all three."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for plain `python`/CLI runs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, world, local_rank)


def all_ranks_have_samples(has_samples: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether every rank's batch holds at least one readable sample (one small all-reduce per batch when
    distributed). Ranks may hold different numbers of samples (the loss gathers uneven shards), but not none."""
    if not info.enabled:
        return has_samples
    flag = torch.tensor([int(has_samples)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_lists(items: list, info: DistInfo) -> list:
    """Every rank's `items` concatenated in rank order, on every rank (picklable entries; identity on one process)."""
    if not info.enabled:
        return items
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def cleanup(info: DistInfo) -> None:
    """Leave the process group together: a rank that tears gloo down while rank 0 is still writing can abort
    ("terminate called without an active exception")."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
