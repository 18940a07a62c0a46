"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise.

NCCL on GPU, gloo on CPU. Only rank 0 writes files; every rank reads the same config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
